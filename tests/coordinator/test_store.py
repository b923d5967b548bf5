"""The fleet store on a real SQLite file: once per (vehicle, seq), latest state, gaps, edge reports."""

from __future__ import annotations

from pathlib import Path

from coordinator.store import FleetStore
from protocols import RecordClass, TelemetryBatch, TelemetryRecord, VehicleStatus, encode_data


def batch(vid: str, seqs: list[int], kind: str = "position", **data: object) -> TelemetryBatch:
    return TelemetryBatch(vehicle_id=vid, records=[
        TelemetryRecord(seq=s, ts=1000.0 + s, kind=kind, data={"seq_seen": s, **data}) for s in seqs])


def ingest(store: FleetStore, b: TelemetryBatch) -> tuple[int, int]:
    with store.transaction() as db:
        r = store.ingest_batch(db, b, received_at=2000.0)
    return r.accepted, r.duplicates


def test_a_resent_batch_counts_once(tmp_path: Path) -> None:
    store = FleetStore(tmp_path / "c.db")
    assert ingest(store, batch("d1", [1, 2, 3])) == (3, 0)
    assert ingest(store, batch("d1", [2, 3, 4])) == (1, 2)
    stats = store.stats()["d1"]
    assert (stats["accepted"], stats["duplicates"], stats["max_seq"], stats["gaps"]) == (4, 2, 4, 0)
    assert [r["seq"] for r in store.telemetry("d1", since=None, until=None, limit=100)] == [1, 2, 3, 4]


def test_gaps_are_missing_numbers_and_close_when_they_arrive(tmp_path: Path) -> None:
    store = FleetStore(tmp_path / "c.db")
    ingest(store, batch("d1", [1, 2, 6, 7]))
    assert store.stats()["d1"]["gaps"] == 3
    ingest(store, batch("d1", [3, 4, 5]))
    assert store.stats()["d1"]["gaps"] == 0


def test_latest_state_never_goes_back_to_an_older_record(tmp_path: Path) -> None:
    store = FleetStore(tmp_path / "c.db")
    ingest(store, batch("d1", [10], lat=2.0))
    ingest(store, batch("d1", [5], lat=1.0))  # backlog arriving after live data
    vehicle = store.vehicle("d1")
    assert vehicle is not None and vehicle["latest"]["position"]["lat"] == 2.0
    assert vehicle["latest"]["position"]["seq"] == 10


def test_eviction_reports_count_once_even_when_resent(tmp_path: Path) -> None:
    store = FleetStore(tmp_path / "c.db")
    report = TelemetryBatch(vehicle_id="d1", records=[
        TelemetryRecord(seq=101, ts=1.0, kind="outbox.evicted", cls=RecordClass.EVENT,
                        data={"cls": 2, "first_seq": 1, "last_seq": 100, "records": 100})])
    ingest(store, report)
    ingest(store, report)
    stats = store.stats()["d1"]
    assert stats["evicted_at_edge"] == 100 and stats["gaps"] == 0 and stats["duplicates"] == 1


def test_a_quarantined_edge_database_turns_its_missing_numbers_into_losses(tmp_path: Path) -> None:
    store = FleetStore(tmp_path / "c.db")
    ingest(store, batch("d1", [1, 2, 3]))
    quarantine = TelemetryBatch(vehicle_id="d1", records=[
        TelemetryRecord(seq=100_001, ts=1.0, kind="outbox.quarantined", cls=RecordClass.ALERT,
                        data={"reason": "file is not a database", "resume_seq": 100_001})])
    ingest(store, quarantine)
    stats = store.stats()["d1"]
    assert stats["lost_at_edge"] == 100_000 - 3 and stats["gaps"] == 0


def test_status_follows_arrival_order_so_an_older_will_still_says_offline(tmp_path: Path) -> None:
    store = FleetStore(tmp_path / "c.db")
    with store.transaction() as db:
        store.ingest_status(db, VehicleStatus(vehicle_id="d1", online=True, ts=20.0), 30.0)
        # The Last Will was registered at connect time, before the online status was sent.
        store.ingest_status(db, VehicleStatus(vehicle_id="d1", online=False, ts=19.0), 31.0)
    vehicle = store.vehicle("d1")
    assert vehicle is not None and vehicle["online"] is False


def test_state_survives_reopening(tmp_path: Path) -> None:
    store = FleetStore(tmp_path / "c.db")
    ingest(store, batch("d1", [1, 2]))
    store.close()
    again = FleetStore(tmp_path / "c.db")
    assert again.stats()["d1"]["accepted"] == 2
    assert encode_data({}) == b"\x80"
