"""The reposition loop round by round, over a real store and a real Mosquitto: a declared event makes the
deficit, and the vehicles' acks, positions and orders go in through the store as the coordinator's ingest
and dispatch put them there. The credit rules, the hand-over to the next candidate and the budget."""

from __future__ import annotations

import time
from collections.abc import Iterator

import h3
import pytest
from fastapi.testclient import TestClient

from coordinator.api.app import create_app
from coordinator.auth import Role, create_key
from coordinator.command_sender import CommandSender
from coordinator.config import BrokerSettings, CoordinatorSettings, SupplySettings
from coordinator.ingest_counters import IngestCounters
from coordinator.orders import OrderState
from coordinator.store import FleetStore, Received
from coordinator.supply.heatmap_service import HeatmapService
from coordinator.supply.moves import Move, MoveState
from coordinator.supply.repositioner import LEASE_NAME, Repositioner
from protocols import AckState, CommandAck
from sim_hw.city_demand import CITY, offset
from tests.coordinator.test_dispatcher import Fleet
from tests.harness import Mosquitto

EVENT = offset(CITY, 3000, 0)
SUPPLY = SupplySettings(reposition_enabled=False, reposition_max_share=1.0, reposition_sla_min_s=60,
                        reposition_sla_factor=1.0, incentive_late_grace_s=100, incentive_late_credit=0.5,
                        incentive_order_credit=0.8, reposition_offer_timeout_s=30)


class Repositioning(Fleet):
    def __init__(self, store: FleetStore, sender: CommandSender, supply: SupplySettings) -> None:
        super().__init__(store, sender)
        settings = CoordinatorSettings(supply=supply)
        self.repositioner = Repositioner(store, settings, sender, HeatmapService(store, settings))
        store.add_demand_event({"event_id": "ev-1", "name": "match", "lat": EVENT[0], "lon": EVENT[1],
                                "radius_m": 10.0, "start": self.now - 60, "end": self.now + 1740,
                                "extra_orders": 12.0, "created_by": "test", "created_at": self.now})

    def plan(self) -> list[Move]:
        self.now += 1
        return self.repositioner.round(self.now, plan=True)

    def step(self, after_s: float = 1.0) -> None:
        self.now += after_s
        self.repositioner.round(self.now, plan=False)

    def move(self, move_id: str) -> Move:
        return next(m for m in self.store.moves() if m.move_id == move_id)

    def answer(self, move: Move, state: AckState, reason: str = "") -> None:
        offer = move.offers[-1]
        self.store.ingest([Received(CommandAck(command_id=offer.command_id, vehicle_id=offer.vehicle_id, state=state,
                                               ts=self.now, reason=reason), self.now)])

    def takes_order(self, vid: str) -> str:
        order = self.place(0, 0)
        self.store.replace_order(order, order.moved(OrderState.ACCEPTED, "accepted", at=self.now, vehicle_id=vid,
                                                    command_id="job-1"))
        return order.order_id


def repositioning(store: FleetStore, mosquitto: Mosquitto, supply: SupplySettings) -> Iterator[Repositioning]:
    sender = CommandSender(BrokerSettings(client_id=f"test-{time.monotonic_ns()}"), broker_host="127.0.0.1",
                           broker_port=mosquitto.port)
    sender.start()
    assert sender.wait_connected(10)
    try:
        yield Repositioning(store, sender, supply)
    finally:
        sender.stop()


@pytest.fixture
def fleet(store: FleetStore, mosquitto: Mosquitto) -> Iterator[Repositioning]:
    yield from repositioning(store, mosquitto, SUPPLY)


def test_a_late_arrival_earns_the_late_share_and_an_order_on_the_way_the_order_share(fleet: Repositioning) -> None:
    fleet.report("taxi-a", "taxi", 1500, 0)
    fleet.report("taxi-b", "taxi", 1400, 400)
    moves = {m.vehicle_id: m for m in fleet.plan()}
    assert set(moves) == {"taxi-a", "taxi-b"}
    target = h3.latlng_to_cell(*EVENT, 8)
    assert {m.to_cell for m in moves.values()} == {target}
    for m in moves.values():
        assert m.offers[0].incentive > 0 and m.state is MoveState.OFFERED
        command = fleet.store.command(m.vehicle_id, m.offers[0].command_id)
        assert command is not None and command.action == "reposition"
        assert command.params["incentive"] == m.offers[0].incentive and command.params["lat"] == m.lat
        fleet.answer(m, AckState.ACCEPTED)
    fleet.step()
    a, b = fleet.move(moves["taxi-a"].move_id), fleet.move(moves["taxi-b"].move_id)
    assert a.state is b.state is MoveState.MOVING
    assert a.arrive_by is not None and a.accepted_at is not None
    assert a.arrive_by - a.accepted_at == pytest.approx(max(60, a.offers[0].travel_s))

    # taxi-a drives there, but 50 s after the SLA; taxi-b takes an order on the way.
    fleet.now = a.arrive_by + 50
    fleet.report("taxi-a", "taxi", 2300, 0)
    fleet.report("taxi-a", "taxi", 2999, 0)
    oid = fleet.takes_order("taxi-b")
    fleet.step(0)
    a, b = fleet.move(a.move_id), fleet.move(b.move_id)
    assert a.state is MoveState.LATE and a.earned == pytest.approx(round(0.5 * a.incentive, 2))
    assert a.arrived_at == pytest.approx(fleet.now) and "after the SLA" in a.reason
    assert 1400 < a.empty_m < 1600  # 1500 m driven, in two legs
    assert b.state is MoveState.INTERRUPTED and b.earned == pytest.approx(round(0.8 * b.incentive, 2))
    assert oid in b.reason


def test_no_arrival_by_the_end_of_the_grace_earns_nothing(fleet: Repositioning) -> None:
    fleet.report("taxi-a", "taxi", 1500, 0)
    [m] = fleet.plan()
    fleet.answer(m, AckState.ACCEPTED)
    fleet.step()
    moving = fleet.move(m.move_id)
    assert moving.arrive_by is not None
    fleet.now = moving.arrive_by + 99
    fleet.report("taxi-a", "taxi", 2000, 0)  # on the way, not there
    fleet.step(0)
    assert fleet.move(m.move_id).state is MoveState.MOVING  # still within the grace
    fleet.step(2)
    missed = fleet.move(m.move_id)
    assert missed.state is MoveState.MISSED and missed.earned == 0 and missed.arrived_at is None
    # A driver arriving after the verdict changes nothing.
    fleet.report("taxi-a", "taxi", 3000, 0)
    fleet.step()
    assert fleet.move(m.move_id) == missed


def test_an_order_before_the_answer_passes_the_offer_on_and_a_decline_with_no_one_left_leaves_it_unfilled(
        store: FleetStore, mosquitto: Mosquitto) -> None:
    supply = with_supply(reposition_max_share=0.5)
    for fleet in repositioning(store, mosquitto, supply):
        fleet.report("taxi-a", "taxi", 1500, 0)
        fleet.report("taxi-b", "taxi", 1000, -500)
        [m] = fleet.plan()
        first = m.offers[0].vehicle_id
        other = ({"taxi-a", "taxi-b"} - {first}).pop()
        assert m.candidates == (other,)
        fleet.takes_order(first)
        fleet.step()
        passed = fleet.move(m.move_id)
        assert [(o.vehicle_id, o.outcome) for o in passed.offers] == [(first, "taken"), (other, "open")]
        assert passed.state is MoveState.OFFERED and passed.candidates == ()
        fleet.answer(passed, AckState.REJECTED, "the driver declined: on_break")
        fleet.step()
        done = fleet.move(m.move_id)
        assert done.state is MoveState.UNFILLED and done.offers[-1].outcome == "declined"
        assert "on_break" in done.offers[-1].reason and done.earned == 0


def test_an_unanswered_offer_times_out_and_vehicles_in_the_deficit_cell_are_never_candidates(
        fleet: Repositioning) -> None:
    fleet.report("taxi-a", "taxi", 1500, 0)
    fleet.report("taxi-c", "taxi", 3000, 0)  # waiting in the event's cell already
    [m] = fleet.plan()
    assert m.offers[0].vehicle_id == "taxi-a" and m.candidates == ()
    fleet.step(SUPPLY.reposition_offer_timeout_s / 2)
    assert fleet.move(m.move_id).state is MoveState.OFFERED
    fleet.step(SUPPLY.reposition_offer_timeout_s)
    done = fleet.move(m.move_id)
    assert done.state is MoveState.UNFILLED and done.offers[0].outcome == "timed_out"


def with_supply(**changes: object) -> SupplySettings:
    return SupplySettings(**{**{f: getattr(SUPPLY, f) for f in SUPPLY.__struct_fields__}, **changes})


def test_incentives_stay_within_the_hourly_budget(store: FleetStore, mosquitto: Mosquitto) -> None:
    # 12 an hour, all of it to one plan: two moves of about 5.5 each fit, a third does not.
    supply = with_supply(incentive_budget_per_hour=12.0, reposition_interval_s=3600.0)
    for fleet in repositioning(store, mosquitto, supply):
        for n in range(8):
            fleet.report(f"taxi-{n}", "taxi", 1500, -700 + 200 * n)
        first = fleet.plan()
        offered = sum(m.incentive for m in first)
        assert len(first) == 2 and offered <= 12.0
        assert fleet.repositioner.committed(fleet.now) == pytest.approx(offered)
        assert fleet.plan() == []  # what is left of the hour's budget pays for no move
        # An hour on (the match goes into extra time), the first plan's offers no longer count.
        fleet.now += 3600
        fleet.store.add_demand_event({"event_id": "ev-2", "name": "extra time", "lat": EVENT[0], "lon": EVENT[1],
                                      "radius_m": 10.0, "start": fleet.now - 60, "end": fleet.now + 1740,
                                      "extra_orders": 12.0, "created_by": "test", "created_at": fleet.now})
        fleet.repositioner.heatmaps.invalidate_forecast()
        later = fleet.plan()
        assert len(later) == 2 and not {m.vehicle_id for m in later} & {m.vehicle_id for m in first}


def test_only_the_coordinator_holding_the_lease_plans_on_request(fleet: Repositioning) -> None:
    for n in range(4):
        fleet.report(f"taxi-{n}", "taxi", 1500, -300 + 200 * n)
    app = create_app(fleet.store, IngestCounters(), rate_limit_per_s=0, repositioner=fleet.repositioner,
                     heatmaps=fleet.repositioner.heatmaps)
    client = TestClient(app, headers={"Authorization": f"Bearer {create_key(fleet.store, Role.OPERATOR, 'ops')}"})
    # Another coordinator sharing the store leads: this one sends nothing, and says why.
    assert fleet.store.hold_lease(LEASE_NAME, "other-coordinator", 60.0)
    refused = client.post("/v1/reposition/run")
    assert refused.status_code == 409 and "holds the 'reposition' lease" in refused.json()["detail"]
    assert fleet.store.moves() == [] and fleet.repositioner.counters.leader is False
    # Once its lease lapses (it stopped), this one takes over.
    fleet.store.hold_lease(LEASE_NAME, "other-coordinator", 0.001)
    time.sleep(0.01)
    sent = client.post("/v1/reposition/run")
    assert sent.status_code == 200 and sent.json() and len(fleet.store.moves()) == len(sent.json())
