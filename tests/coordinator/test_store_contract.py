"""One contract, two stores: every test here runs against the embedded SQLite store and against a real
redis-server (started on a free port by the ``redis_server`` fixture)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import h3
import msgspec
import pytest

from coordinator.errors import IdempotencyConflict, StoreError
from coordinator.orders import Order, OrderEvent, OrderState, Place
from coordinator.store import (
    CommandEvent,
    CommandRecord,
    CommandState,
    FleetStore,
    Received,
    Reject,
)
from coordinator.supply.moves import Move, MoveOffer, MoveState
from protocols import (
    MAX_RECORDS_PER_BATCH,
    AckState,
    CommandAck,
    RecordClass,
    TelemetryBatch,
    TelemetryRecord,
    VehicleStatus,
    great_circle_m,
)
from sim_hw.geo import offset

T0 = 1_800_000_000.0


def batch(vid: str, seqs: list[int], kind: str = "position", cls: RecordClass = RecordClass.TELEMETRY,
          **data: object) -> TelemetryBatch:
    return TelemetryBatch(vehicle_id=vid, records=[
        TelemetryRecord(seq=s, ts=T0 + s, kind=kind, cls=cls, data={"seq_seen": s, **data}) for s in seqs])


def ingest(store: FleetStore, *messages: TelemetryBatch | VehicleStatus | CommandAck | Reject,
           at: float = T0) -> tuple[int, int]:
    r = store.ingest([Received(m, at) for m in messages])
    return r.accepted, r.duplicates


def status(vid: str, online: bool, kind: str = "", ts: float = T0) -> VehicleStatus:
    return VehicleStatus(vehicle_id=vid, online=online, ts=ts, kind=kind, agent_version="1.2.3")


# -- telemetry, exactly once -------------------------------------------------------------------------


def test_a_resent_batch_counts_once(store: FleetStore) -> None:
    assert ingest(store, batch("d1", [1, 2, 3])) == (3, 0)
    assert ingest(store, batch("d1", [2, 3, 4])) == (1, 2)
    stats = store.stats()["d1"]
    assert (stats["accepted"], stats["duplicates"], stats["max_seq"], stats["gaps"]) == (4, 2, 4, 0)
    assert [r["seq"] for r in store.telemetry("d1", since=None, until=None, limit=100)] == [1, 2, 3, 4]


def test_one_call_holds_several_vehicles_and_message_types(store: FleetStore) -> None:
    assert ingest(store, batch("d1", [1, 2]), status("d1", True, "copter"), batch("d2", [1]),
                  Reject("d2", "malformed TelemetryBatch: bad"), Reject(None, "invalid topic")) == (3, 0)
    stats = store.stats()
    assert stats["d1"]["accepted"] == 2 and stats["d2"]["rejected"] == 1
    assert stats["(unattributed)"]["rejected"] == 1
    assert store.vehicle("d1")["online"] is True  # type: ignore[index]


def test_gaps_are_missing_numbers_and_close_when_they_arrive(store: FleetStore) -> None:
    ingest(store, batch("d1", [1, 2, 6, 7]))
    assert store.stats()["d1"]["gaps"] == 3
    ingest(store, batch("d1", [3, 4, 5]))
    assert store.stats()["d1"]["gaps"] == 0


def test_the_largest_batch_is_taken_whole_and_counted_once(store: FleetStore) -> None:
    seqs = list(range(1, MAX_RECORDS_PER_BATCH + 1))
    big = batch("d1", seqs, kind="battery", cls=RecordClass.ALERT)
    assert ingest(store, big) == (MAX_RECORDS_PER_BATCH, 0)
    assert ingest(store, big) == (0, MAX_RECORDS_PER_BATCH)
    # A number repeated inside one batch is taken once.
    assert ingest(store, batch("d1", [MAX_RECORDS_PER_BATCH + 1] * 3)) == (1, 2)
    stats = store.stats()["d1"]
    assert (stats["accepted"], stats["duplicates"], stats["gaps"]) == (MAX_RECORDS_PER_BATCH + 1,
                                                                       MAX_RECORDS_PER_BATCH + 2, 0)
    history = store.telemetry("d1", since=None, until=None, limit=MAX_RECORDS_PER_BATCH + 10)
    assert [r["seq"] for r in history] == [*seqs, MAX_RECORDS_PER_BATCH + 1]
    assert len(store.alerts(vehicle_id="d1", kind="battery", since=None, limit=MAX_RECORDS_PER_BATCH)) \
        == MAX_RECORDS_PER_BATCH


def test_latest_state_never_goes_back_to_an_older_record(store: FleetStore) -> None:
    ingest(store, batch("d1", [10], lat=2.0, lon=3.0))
    ingest(store, batch("d1", [5], lat=1.0, lon=1.0))  # backlog arriving after live data
    vehicle = store.vehicle("d1")
    assert vehicle is not None and vehicle["latest"]["position"]["lat"] == 2.0
    assert vehicle["latest"]["position"]["seq"] == 10
    assert (vehicle["lat"], vehicle["lon"], vehicle["last_seq"]) == (2.0, 3.0, 10)


def test_eviction_reports_count_once_even_when_resent(store: FleetStore) -> None:
    report = TelemetryBatch(vehicle_id="d1", records=[
        TelemetryRecord(seq=101, ts=1.0, kind="outbox.evicted", cls=RecordClass.EVENT,
                        data={"cls": 2, "first_seq": 1, "last_seq": 100, "records": 100})])
    ingest(store, report)
    ingest(store, report)
    stats = store.stats()["d1"]
    assert stats["evicted_at_edge"] == 100 and stats["gaps"] == 0 and stats["duplicates"] == 1


def test_an_eviction_report_in_a_new_vehicles_first_batch_counts(store: FleetStore) -> None:
    first = TelemetryBatch(vehicle_id="d9", records=[
        TelemetryRecord(seq=11, ts=T0, kind="position", data={"lat": 1.0, "lon": 2.0}),
        TelemetryRecord(seq=12, ts=T0, kind="outbox.evicted", cls=RecordClass.EVENT, data={"records": 10})])
    assert ingest(store, first) == (2, 0)
    stats = store.stats()["d9"]
    assert (stats["evicted_at_edge"], stats["accepted"], stats["max_seq"], stats["gaps"]) == (10, 2, 12, 0)
    vehicle = store.vehicle("d9")
    assert vehicle is not None and (vehicle["lat"], vehicle["lon"]) == (1.0, 2.0)


def test_a_quarantined_edge_database_turns_its_missing_numbers_into_losses(store: FleetStore) -> None:
    ingest(store, batch("d1", [1, 2, 3]))
    quarantine = TelemetryBatch(vehicle_id="d1", records=[
        TelemetryRecord(seq=100_001, ts=1.0, kind="outbox.quarantined", cls=RecordClass.ALERT,
                        data={"reason": "file is not a database", "resume_seq": 100_001})])
    ingest(store, quarantine)
    stats = store.stats()["d1"]
    assert stats["lost_at_edge"] == 100_000 - 3 and stats["gaps"] == 0


def test_status_follows_arrival_order_so_an_older_will_still_says_offline(store: FleetStore) -> None:
    # The Last Will was registered at connect time, before the online status was sent.
    ingest(store, status("d1", True, ts=20.0), status("d1", False, ts=19.0))
    vehicle = store.vehicle("d1")
    assert vehicle is not None and vehicle["online"] is False and vehicle["agent_version"] == "1.2.3"
    assert store.online_count() == 0


def test_telemetry_reads_by_time_window_kind_and_limit(store: FleetStore) -> None:
    ingest(store, batch("d1", [1, 2, 3, 4, 5]), batch("d1", [6, 7], kind="battery", pct=50))
    everything = store.telemetry("d1", since=None, until=None, limit=100)
    assert [r["seq"] for r in everything] == [1, 2, 3, 4, 5, 6, 7]
    assert everything[5] == {"seq": 6, "ts": T0 + 6, "kind": "battery", "cls": "telemetry",
                             "data": {"seq_seen": 6, "pct": 50}}
    assert [r["seq"] for r in store.telemetry("d1", since=T0 + 2, until=T0 + 5, limit=100)] == [2, 3, 4]
    assert [r["seq"] for r in store.telemetry("d1", since=None, until=None, limit=2, kind="battery")] == [6, 7]
    assert [r["seq"] for r in store.telemetry("d1", since=None, until=None, limit=3)] == [1, 2, 3]
    assert store.telemetry("nobody", since=None, until=None, limit=10) == []


def test_alerts_only_alert_records_newest_first(store: FleetStore) -> None:
    ingest(store, batch("d1", [1], kind="battery.low", cls=RecordClass.ALERT),
           batch("d1", [2], kind="mode.changed", cls=RecordClass.EVENT),
           batch("d2", [3], kind="failsafe", cls=RecordClass.ALERT))
    assert [(a["vehicle_id"], a["kind"]) for a in store.alerts(vehicle_id=None, kind=None, since=None, limit=10)] == [
        ("d2", "failsafe"), ("d1", "battery.low")]
    assert [a["seq"] for a in store.alerts(vehicle_id="d1", kind=None, since=None, limit=10)] == [1]
    assert store.alerts(vehicle_id=None, kind="failsafe", since=T0 + 4, limit=10) == []
    assert len(store.alerts(vehicle_id=None, kind=None, since=None, limit=1)) == 1


def test_pruning_drops_old_history_but_keeps_latest_state_and_counters(store: FleetStore) -> None:
    ingest(store, batch("d1", [1, 2, 3, 4]), batch("d1", [5], kind="gps.fix_lost", cls=RecordClass.ALERT))
    assert store.prune_telemetry(T0 + 3) == 2
    assert [r["seq"] for r in store.telemetry("d1", since=None, until=None, limit=10)] == [3, 4, 5]
    assert store.prune_telemetry(T0 + 100) == 3
    vehicle = store.vehicle("d1")
    assert vehicle is not None and vehicle["latest"]["position"]["seq"] == 4
    assert store.alerts(vehicle_id=None, kind=None, since=None, limit=10) == []
    assert store.stats()["d1"]["accepted"] == 5


# -- fleet queries -----------------------------------------------------------------------------------

CENTRE = (52.52, 13.405)
FLEET = [("copter-1", "copter", True, 300, 0), ("copter-2", "copter", False, 0, 1800),
         ("taxi-1", "taxi", True, -900, -200), ("taxi-2", "taxi", True, 5000, 5000), ("rover-1", "rover", True, 0, 0)]


def place_fleet(store: FleetStore) -> None:
    for vid, kind, online, north, east in FLEET:
        lat, lon = offset(*CENTRE, north, east)
        ingest(store, batch(vid, [10], lat=lat, lon=lon), status(vid, online, kind))


def ids(found: list[dict[str, object]]) -> list[str]:
    return [str(v["vehicle_id"]) for v in found]


def test_find_by_kind_status_radius_and_cells(store: FleetStore) -> None:
    place_fleet(store)
    assert ids(store.find_vehicles(kind="taxi")) == ["taxi-1", "taxi-2"]
    assert ids(store.find_vehicles(online=False)) == ["copter-2"]
    assert ids(store.find_vehicles(kind="copter", online=True)) == ["copter-1"]
    assert ids(store.find_vehicles(near=(*CENTRE, 1000))) == ["copter-1", "rover-1", "taxi-1"]
    assert "copter-2" not in ids(store.find_vehicles(near=(*CENTRE, 1700)))
    assert "copter-2" in ids(store.find_vehicles(near=(*CENTRE, 1900)))
    centre_cell = h3.latlng_to_cell(*CENTRE, 8)
    ring = set(h3.grid_disk(centre_cell, 1))
    expected = sorted(vid for vid, *_ in FLEET if store.vehicle(vid)["h3"] in ring)  # type: ignore[index]
    assert ids(store.find_vehicles(cells=ring)) == expected and "rover-1" in expected
    assert ids(store.find_vehicles(near=(*CENTRE, 1000), online=True, kind="taxi")) == ["taxi-1"]
    for v in store.find_vehicles(near=(*CENTRE, 1000)):
        assert great_circle_m(*CENTRE, v["lat"], v["lon"]) <= 1000


def test_positions_are_the_online_vehicles_with_a_position_as_their_full_state_has_them(store: FleetStore) -> None:
    place_fleet(store)
    ingest(store, status("silent", True, "rover"))  # online, never reported a position
    positions = store.positions()
    assert [p.vehicle_id for p in positions] == sorted(vid for vid, _, online, *_ in FLEET if online)
    assert "silent" in ids(store.find_vehicles(online=True))
    for p in positions:
        full = store.vehicle(p.vehicle_id)
        assert full is not None and (p.kind, p.lat, p.lon) == (full["kind"], full["lat"], full["lon"])
    ingest(store, status("taxi-1", False, "taxi"))
    assert "taxi-1" not in [p.vehicle_id for p in store.positions()]


def test_summaries_are_every_vehicle_with_only_the_newest_records_asked_for(store: FleetStore) -> None:
    place_fleet(store)
    ingest(store, status("silent", True, "rover"))  # no record at all
    ingest(store, batch("taxi-1", [11], kind="battery", remaining_pct=55.0),
           batch("taxi-1", [12], kind="status", mode="AUTO"))
    summaries = store.summaries(("battery", "status"))
    full = {v["vehicle_id"]: v for v in store.vehicles()}
    assert [s.vehicle_id for s in summaries] == sorted(full)
    for s in summaries:
        v = full[s.vehicle_id]
        assert (s.kind, s.online, s.last_seen, s.lat, s.lon) == (v["kind"], v["online"], v["last_seen"], v["lat"],
                                                                  v["lon"])
        assert s.latest == {k: r for k, r in v["latest"].items() if k in ("battery", "status")}
    taxi = next(s for s in summaries if s.vehicle_id == "taxi-1")
    assert taxi.latest["battery"]["remaining_pct"] == 55.0 and taxi.latest["status"]["mode"] == "AUTO"
    assert "position" in full["taxi-1"]["latest"] and "position" not in taxi.latest
    assert store.summaries(()) and all(s.latest == {} for s in store.summaries(()))


def test_paging_by_id_visits_every_vehicle_once(store: FleetStore) -> None:
    ingest(store, *(status(f"v{i:03d}", i % 3 != 0) for i in range(250)))
    seen: list[str] = []
    after = None
    while page := store.find_vehicles(after=after, limit=40):
        seen += ids(page)
        after = seen[-1]
    assert seen == [f"v{i:03d}" for i in range(250)]
    offline = ids(store.find_vehicles(online=False, limit=1000))
    assert offline == [f"v{i:03d}" for i in range(250) if i % 3 == 0]
    assert ids(store.find_vehicles(online=False, after="v100", limit=5)) == ["v102", "v105", "v108", "v111", "v114"]
    assert len(store.vehicles()) == 250 and store.online_count() == 166


def test_a_vehicle_without_a_fix_has_no_position_and_is_not_near_anything(store: FleetStore) -> None:
    ingest(store, batch("d1", [1], lat=float("nan"), lon=1.0), batch("d2", [1], lat=95.0, lon=1.0))
    for vid in ("d1", "d2"):
        v = store.vehicle(vid)
        assert v is not None and v["lat"] is None and v["h3"] is None
    assert store.find_vehicles(near=(0.0, 1.0, 100_000)) == []


# -- commands, keys, audit ---------------------------------------------------------------------------


def command(cid: str, issued_at: float = T0, ttl: float = 60) -> CommandRecord:
    return CommandRecord(cid, "d1", "goto", {"lat": 1.0, "lon": 2.0, "alt_m": 20.0}, issued_at, issued_at + ttl,
                         "ops", (CommandEvent(CommandState.PENDING, issued_at),))


def test_a_command_follows_the_vehicle_acks_whatever_their_order(store: FleetStore) -> None:
    store.add_command(command("c1"))
    store.add_command_event("d1", "c1", CommandEvent(CommandState.SENT, T0 + 0.1))
    ingest(store, CommandAck(command_id="c1", vehicle_id="d1", state=AckState.COMPLETED, ts=T0 + 9),
           CommandAck(command_id="c1", vehicle_id="d1", state=AckState.ACCEPTED, ts=T0 + 2),
           CommandAck(command_id="c1", vehicle_id="d1", state=AckState.ACCEPTED, ts=T0 + 3))
    found = store.command("d1", "c1")
    assert found is not None and found.params == {"lat": 1.0, "lon": 2.0, "alt_m": 20.0}
    assert [e.state for e in found.history] == ["pending", "sent", "accepted", "completed"]
    assert found.state_at(T0 + 1000).state is CommandState.COMPLETED
    assert store.command("d1", "nope") is None and store.command("d2", "c1") is None


def test_an_unanswered_command_expires(store: FleetStore) -> None:
    store.add_command(command("c1", ttl=30))
    store.add_command_event("d1", "c1", CommandEvent(CommandState.SENT, T0))
    found = store.command("d1", "c1")
    assert found is not None
    assert found.state_at(T0 + 10).state is CommandState.SENT
    assert found.state_at(T0 + 31).state is CommandState.EXPIRED
    ingest(store, CommandAck(command_id="c1", vehicle_id="d1", state=AckState.REJECTED, ts=T0 + 31,
                             reason="expired before it could run"))
    again = store.command("d1", "c1")
    assert again is not None and again.state_at(T0 + 40) == CommandEvent(CommandState.REJECTED, T0 + 31,
                                                                         "expired before it could run")


def test_commands_are_listed_newest_first(store: FleetStore) -> None:
    for i in range(5):
        store.add_command(command(f"c{i}", issued_at=T0 + i))
    assert [c.command_id for c in store.commands("d1", limit=3)] == ["c4", "c3", "c2"]
    assert store.commands("d2", limit=3) == []


def test_api_keys_are_kept_hashed_and_can_be_revoked_once(store: FleetStore) -> None:
    digest = hashlib.sha256(b"secret").digest()
    store.add_api_key("k1", "ops", "operator", digest, T0)
    store.add_api_key("k2", "view", "viewer", digest, T0 + 1)
    assert store.active_api_key("k1") == ("ops", "operator", digest)
    assert store.revoke_api_key("k1", T0 + 5) is True
    assert store.revoke_api_key("k1", T0 + 6) is False and store.revoke_api_key("zz", T0) is False
    assert store.active_api_key("k1") is None
    assert [(k["key_id"], k["revoked_at"]) for k in store.api_keys()] == [("k1", T0 + 5), ("k2", None)]


def test_audit_is_newest_first_and_filtered_by_time(store: FleetStore) -> None:
    import time

    now = time.time()
    for i in range(3):
        store.record_audit(at=now + i, key_id="k1", key_name="ops", role="operator", method="POST",
                           path=f"/v1/x/{i}", status=201, client="127.0.0.1")
    assert [e["path"] for e in store.audit(since=None, limit=10)] == ["/v1/x/2", "/v1/x/1", "/v1/x/0"]
    assert [e["path"] for e in store.audit(since=now + 1, limit=10)] == ["/v1/x/2", "/v1/x/1"]
    assert store.audit(since=None, limit=1)[0]["status"] == 201


# -- orders ------------------------------------------------------------------------------------------


def order(n: int, **kw: object) -> Order:
    fields: dict[str, object] = {
        "order_id": f"ord-{n:04d}", "pickup": Place(52.52, 13.40), "dropoff": Place(52.53, 13.41), "ready_at": T0,
        "created_at": T0 + n, "created_by": "ops",
        "history": (OrderEvent(state=OrderState.PENDING, at=T0 + n, reason="placed"),)}
    fields.update(kw)
    return Order(**fields)  # type: ignore[arg-type]


def test_orders_are_kept_whole_and_listed_newest_first(store: FleetStore) -> None:
    first = order(1, payload_kg=1.5, vehicle_kinds=("copter", "rover"), deadline=T0 + 3600, priority=3)
    assert store.add_order(first) == (first, True)
    for n in range(2, 6):
        store.add_order(order(n))
    assert store.order("ord-0001") == first
    assert store.order("ord-9999") is None
    assert [o.order_id for o in store.orders(limit=3)] == ["ord-0005", "ord-0004", "ord-0003"]
    assert [o.order_id for o in store.orders(before="ord-0003", limit=10)] == ["ord-0002", "ord-0001"]
    assert [e.state for e in (ev for _, _, ev in store.order_events(after=0, limit=100))] == [OrderState.PENDING] * 5


def test_an_idempotency_key_creates_one_order_and_refuses_another_request(store: FleetStore) -> None:
    key = ("key-a", "retry-1", "fingerprint-1")
    created, fresh = store.add_order(order(1), idempotency=key)
    again, fresh_again = store.add_order(order(2), idempotency=key)
    assert (fresh, fresh_again) == (True, False)
    assert again == created and store.order("ord-0002") is None
    # The same key from another API key is another request.
    assert store.add_order(order(3), idempotency=("key-b", "retry-1", "fingerprint-1"))[1] is True
    with pytest.raises(IdempotencyConflict, match="retry-1"):
        store.add_order(order(4), idempotency=("key-a", "retry-1", "fingerprint-2"))
    assert len(store.orders(limit=10)) == 2


def test_old_idempotency_keys_are_forgotten_but_their_orders_stay(store: FleetStore) -> None:
    store.add_order(order(1, created_at=T0), idempotency=("k", "old", "f"))
    store.add_order(order(2, created_at=T0 + 100), idempotency=("k", "new", "f"))
    assert store.prune_idempotency_keys(T0 + 50) == 1
    assert store.prune_idempotency_keys(T0 + 50) == 0
    assert store.add_order(order(3, created_at=T0 + 200), idempotency=("k", "old", "f"))[1] is True
    assert store.add_order(order(4), idempotency=("k", "new", "f"))[0].order_id == "ord-0002"
    assert store.order("ord-0001") is not None


def test_an_order_moves_by_compare_and_set_and_logs_each_transition(store: FleetStore) -> None:
    placed = order(1)
    store.add_order(placed)
    assigned = placed.moved(OrderState.ASSIGNED, "nearest copter", at=T0 + 10, vehicle_id="d1", command_id="c1")
    assert store.replace_order(placed, assigned) is True
    # A writer still holding the old version loses: nothing is overwritten.
    assert store.replace_order(placed, placed.moved(OrderState.CANCELLED, "late writer")) is False
    accepted = assigned.moved(OrderState.ACCEPTED, at=T0 + 12)
    assert store.replace_order(assigned, accepted) is True
    got = store.order("ord-0001")
    assert got is not None and got.state is OrderState.ACCEPTED and got.version == 3
    assert [(e.state, e.vehicle_id) for e in got.history] == [
        (OrderState.PENDING, None), (OrderState.ASSIGNED, "d1"), (OrderState.ACCEPTED, "d1")]
    events = store.order_events(after=0, limit=100)
    assert [(oid, e.state) for _, oid, e in events] == [
        ("ord-0001", OrderState.PENDING), ("ord-0001", OrderState.ASSIGNED), ("ord-0001", OrderState.ACCEPTED)]
    seqs = [seq for seq, _, _ in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert [e.state for _, _, e in store.order_events(after=seqs[0], limit=1)] == [OrderState.ASSIGNED]
    assert [o.order_id for o in store.orders(vehicle_id="d1")] == ["ord-0001"]


def test_open_orders_leave_the_pool_when_final(store: FleetStore) -> None:
    for n in range(1, 5):
        store.add_order(order(n))
    done = store.order("ord-0002")
    assert done is not None
    store.replace_order(done, done.moved(OrderState.CANCELLED, "customer called"))
    assert sorted(o.order_id for o in store.open_orders()) == ["ord-0001", "ord-0003", "ord-0004"]
    assert [o.order_id for o in store.orders(states={OrderState.CANCELLED})] == ["ord-0002"]
    assert [o.order_id for o in store.orders(states={OrderState.PENDING}, limit=2)] == ["ord-0004", "ord-0003"]


def test_declared_events_are_kept_and_listed_until_they_end(store: FleetStore) -> None:
    for n, (start, end) in enumerate(((T0, T0 + 3600), (T0 - 7200, T0 - 3600), (T0 + 600, T0 + 1200))):
        store.add_demand_event({"event_id": f"ev-{n}", "name": f"match {n}", "lat": 52.5, "lon": 13.4,
                                "radius_m": 500.0, "start": start, "end": end, "extra_orders": 800.0,
                                "created_by": "ops", "created_at": T0 - 86400})
    assert [e["event_id"] for e in store.demand_events(ending_after=T0)] == ["ev-0", "ev-2"]
    assert store.demand_events(ending_after=T0)[0] == {
        "event_id": "ev-0", "name": "match 0", "lat": 52.5, "lon": 13.4, "radius_m": 500.0, "start": T0,
        "end": T0 + 3600, "extra_orders": 800.0, "created_by": "ops", "created_at": T0 - 86400}
    assert [e["event_id"] for e in store.demand_events(ending_after=0)] == ["ev-1", "ev-0", "ev-2"]


def move(n: int, created_at: float, **kw: object) -> Move:
    offer = MoveOffer(vehicle_id=f"taxi-{n}", command_id=f"c{n}", offered_at=created_at, incentive=4.5, travel_s=300)
    return Move(move_id=f"mv-{n:04d}", created_at=created_at, kind="taxi", from_cell="a", to_cell="b", lat=52.5,
                lon=13.4, currency="EUR", offers=(offer,), candidates=("taxi-9",), **kw)  # type: ignore[arg-type]


def test_reposition_moves_change_by_compare_and_set_and_leave_the_open_set_when_final(store: FleetStore) -> None:
    first, second, old = move(1, T0), move(2, T0 + 10), move(3, T0 - 7200)
    for m in (first, second, old):
        store.add_move(m)
    assert [m.move_id for m in store.moves()] == ["mv-0002", "mv-0001", "mv-0003"]  # newest first
    assert store.moves(since=T0) == [second, first]
    assert store.moves(limit=1) == [second]
    moving = first.answered("accepted", "", T0 + 5, state=MoveState.MOVING, accepted_at=T0 + 5, arrive_by=T0 + 500)
    assert store.replace_move(first, moving) is True
    assert store.replace_move(first, first.next_version(state=MoveState.UNFILLED)) is False  # outdated
    done = moving.next_version(state=MoveState.ARRIVED, earned=4.5, finished_at=T0 + 200)
    assert store.replace_move(moving, done) is True
    assert [m.move_id for m in store.moves(open_only=True)] == ["mv-0002", "mv-0003"]
    assert store.moves(since=T0 - 1)[1] == done and done.offers[0].outcome == "accepted"


def test_model_versions_files_and_rollouts(store: FleetStore) -> None:
    store.put_blob("ab" * 32, b"onnx bytes")
    store.put_blob("ab" * 32, b"other bytes")  # content-addressed: the first stays
    assert store.blob("ab" * 32) == b"onnx bytes" and store.blob("cd" * 32) is None
    for n, (name, version) in enumerate((("battery", "1.0.0"), ("delivery_risk", "1.0.0"), ("battery", "1.1.0"))):
        assert store.add_model({"name": name, "version": version, "uploaded_at": T0 + n, "size_bytes": 10})
    assert store.add_model({"name": "battery", "version": "1.0.0", "uploaded_at": T0 + 9}) is False
    assert [(m["name"], m["version"]) for m in store.models()] == [
        ("battery", "1.1.0"), ("delivery_risk", "1.0.0"), ("battery", "1.0.0")]
    assert [m["version"] for m in store.models("battery")] == ["1.1.0", "1.0.0"]
    assert store.model("battery", "1.0.0") == {"name": "battery", "version": "1.0.0", "uploaded_at": T0,
                                               "size_bytes": 10}
    assert store.model("battery", "9.9.9") is None and store.rollout("battery") is None
    first = {"name": "battery", "revision": 1, "stable": "1.0.0", "canary": None}
    assert store.replace_rollout("battery", 0, first) is True
    assert store.replace_rollout("battery", 0, {**first, "stable": "x"}) is False  # exists already
    assert store.replace_rollout("battery", 1, {**first, "revision": 2, "stable": "1.1.0"}) is True
    assert store.replace_rollout("battery", 1, {**first, "revision": 2, "stable": "lost"}) is False
    assert store.rollout("battery") == {**first, "revision": 2, "stable": "1.1.0"}
    assert [r["name"] for r in store.rollouts()] == ["battery"]


def test_one_holder_has_a_lease_until_it_lapses(store: FleetStore) -> None:
    assert store.hold_lease("dispatch", "coordinator-a", 0.5) is True
    assert store.hold_lease("dispatch", "coordinator-b", 0.5) is False
    assert store.hold_lease("dispatch", "coordinator-a", 0.5) is True  # renewed
    assert store.hold_lease("retention", "coordinator-b", 0.5) is True  # another lease
    time.sleep(0.7)
    assert store.hold_lease("dispatch", "coordinator-b", 0.5) is True  # a lapsed lease is taken over
    assert store.hold_lease("dispatch", "coordinator-a", 0.5) is False


# -- restarts ----------------------------------------------------------------------------------------


def test_a_restarted_coordinator_finds_everything(store_factory: Callable[..., FleetStore]) -> None:
    first = store_factory()
    place_fleet(first)
    first.add_command(command("c1"))
    placed = order(1)
    first.add_order(placed, idempotency=("k1", "once", "f"))
    first.replace_order(placed, placed.moved(OrderState.ASSIGNED, vehicle_id="d1", command_id="c1"))
    first.add_api_key("k1", "ops", "operator", b"h" * 32, T0)
    first.add_move(move(1, T0))
    first.record_audit(at=T0, key_id="k1", key_name="ops", role="operator", method="POST", path="/v1/keys",
                       status=201, client="x")
    first.close()
    again = store_factory()
    assert ids(again.vehicles()) == sorted(vid for vid, *_ in FLEET)
    assert ids(again.find_vehicles(near=(*CENTRE, 1000))) == ["copter-1", "rover-1", "taxi-1"]
    assert again.stats()["taxi-1"]["accepted"] == 1
    assert again.command("d1", "c1") is not None
    kept = again.order("ord-0001")
    assert kept is not None and kept.state is OrderState.ASSIGNED and kept.vehicle_id == "d1"
    assert [o.order_id for o in again.open_orders()] == ["ord-0001"]
    assert again.add_order(order(2), idempotency=("k1", "once", "f")) == (kept, False)
    assert again.active_api_key("k1") == ("ops", "operator", b"h" * 32)
    assert again.moves(open_only=True) == [move(1, T0)]
    assert again.audit(since=None, limit=5)[0]["path"] == "/v1/keys"
    assert ingest(again, batch("taxi-1", [10])) == (0, 1)


def test_redis_state_survives_a_redis_server_restart(request: pytest.FixtureRequest) -> None:
    from coordinator.redis_store import RedisStore

    server = request.getfixturevalue("redis_server")
    store = RedisStore(server.url)
    place_fleet(store)
    store.add_command(command("c1"))
    store.close()
    server.stop()  # a clean shutdown flushes the append-only file
    server.start()
    again = RedisStore(server.url)
    try:
        assert len(again.vehicles()) == len(FLEET) and again.command("d1", "c1") is not None
        assert ingest(again, batch("rover-1", [10, 11])) == (1, 1)
    finally:
        again.close()


def test_redis_store_waits_for_redis_to_load_its_data_set(request: pytest.FixtureRequest,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    import redis

    from coordinator.redis_store import RedisStore

    server = request.getfixturevalue("redis_server")
    filler = redis.Redis(port=server.port)
    pipe = filler.pipeline(transaction=False)
    for i in range(3000):
        pipe.set(f"filler:{i}", "x")  # one command each in the append-only file, each replayed on its own
    pipe.execute()
    filler.close()
    server.stop()
    # Replaying 3,000 writes at 1 ms each: for three seconds Redis answers every command with LOADING.
    server.extra_args = ("--key-load-delay", "1000")
    server.start()
    with caplog.at_level("WARNING", logger="coordinator.redis_store"):
        store = RedisStore(server.url)
    try:
        assert "is loading its data set; waiting" in caplog.text
        assert store.vehicles() == [] and store.online_count() == 0
    finally:
        store.close()


def test_redis_store_upgrades_an_older_key_layout_and_refuses_a_newer_one(request: pytest.FixtureRequest) -> None:
    import redis

    from coordinator.redis_store import LAYOUT, RedisStore

    server = request.getfixturevalue("redis_server")
    raw = redis.Redis(port=server.port)
    # Layout 1, as FleetEdge 0.x wrote it: rollouts were only their hashes (found by scanning every key).
    doc = {"name": "battery", "revision": 3, "stable": "1.0.0", "canary": None}
    raw.hset("fleetedge:rollout:battery", mapping={"revision": 3, "doc": msgspec.msgpack.encode(doc)})
    store = RedisStore(server.url)
    try:
        assert store.rollouts() == [doc] and raw.get("fleetedge:layout") == str(LAYOUT).encode()
        assert store.replace_rollout("battery", 3, {**doc, "revision": 4}) is True
        assert [r["revision"] for r in store.rollouts()] == [4]
    finally:
        store.close()
    raw.set("fleetedge:layout", LAYOUT + 1)
    with pytest.raises(StoreError, match=rf"newer FleetEdge \(key layout {LAYOUT + 1}; .*upgrade this coordinator"):
        RedisStore(server.url)
    raw.close()


def test_a_redis_error_message_never_shows_the_password() -> None:
    from coordinator.redis_store import RedisStore
    from tests.harness import free_port

    with pytest.raises(StoreError) as raised:
        RedisStore(f"redis://ops:hunter2@127.0.0.1:{free_port()}/0", socket_timeout_s=1)
    assert "hunter2" not in str(raised.value) and "redis://ops:***@127.0.0.1:" in str(raised.value)
