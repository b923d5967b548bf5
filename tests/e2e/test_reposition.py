"""Repositioning end to end: a declared event makes a deficit cell, the coordinator plans a move and offers it
over Mosquitto to taxi agents whose simulated drivers (on real terminal links, with NMEA GPS on
pseudo-terminals) decline, stay silent, accept and drive, or accept and never go; a drone gets a go-to.
Arrival is judged by the coordinator from the positions the vehicles report."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h3
import pytest

from protocols._terminal import Offer
from sim_hw.driver_terminal import DriverBehaviour
from sim_hw.geo import offset
from tests.e2e.test_orders import ACCEPTS, DECLINES, RANK, SILENT, call, copter_in_the_air, taxi_on_road
from tests.harness import CoordinatorProcess, Mosquitto, wait_until

TARGET = offset(*RANK, 2000, 0)
NO_SHOW = DriverBehaviour(base_accept=1.0, accept_drop_per_km=0.0, no_answer=0.0, delay_s=0.5, delay_per_km_s=0.0,
                          no_show=1.0)
BASE = {"FLEETEDGE_COORDINATOR__DISPATCH__TICK_S": "0.3",
        "FLEETEDGE_COORDINATOR__SUPPLY__REPOSITION_ENABLED": "false",
        "FLEETEDGE_COORDINATOR__SUPPLY__REPOSITION_OFFER_TIMEOUT_S": "4",
        "FLEETEDGE_COORDINATOR__SUPPLY__REPOSITION_MAX_SHARE": "0.34"}
# The simulated taxis drive at 40 m/s, and the coordinator must expect them to.
FAST_TAXIS = {**BASE, "FLEETEDGE_COORDINATOR__DISPATCH__KINDS__TAXI__SPEED_M_S": "40"}


@contextlib.contextmanager
def coordinator(tmp_path: Path, mosquitto: Mosquitto, env: dict[str, str]) -> Iterator[CoordinatorProcess]:
    workdir = tmp_path / "coordinator"
    workdir.mkdir()
    proc = CoordinatorProcess(workdir, mosquitto.url, env=env)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def declare_event(coord: CoordinatorProcess, operator: str, where: tuple[float, float] = TARGET) -> None:
    now = time.time()
    created = coord.post("/v1/events", {"name": "match", "lat": where[0], "lon": where[1], "radius_m": 10,
                                        "start": now - 60, "end": now + 1740, "extra_orders": 12}, operator)
    assert created.status_code == 201, created.text


def move_in(coord: CoordinatorProcess, move_id: str, *states: str, timeout: float) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        found = next(m for m in coord.get("/v1/reposition/moves") if m["move_id"] == move_id)
        return found if found["state"] in states else None

    try:
        result: dict[str, Any] = wait_until(reached, timeout, f"move {move_id} in {states}", interval=0.3)
    except (AssertionError, TimeoutError):
        print(coord.get("/v1/reposition/moves"))
        raise
    return result


async def test_decline_and_silence_pass_the_move_on_until_a_driver_accepts_arrives_and_earns(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    with coordinator(tmp_path, mosquitto, FAST_TAXIS) as coord:
        async with (taxi_on_road(tmp_path, coord, "taxi-decliner", offset(*TARGET, -1000, 0), DECLINES) as (no, _a),
                    taxi_on_road(tmp_path, coord, "taxi-silent", offset(*TARGET, -1300, 0), SILENT, seed=2) as (
                        silent, _b),
                    taxi_on_road(tmp_path, coord, "taxi-keen", offset(*TARGET, -1600, 0), ACCEPTS, seed=3) as (
                        keen, _c)):
            operator = await call(coord.create_key, "operator")
            await call(declare_event, coord, operator)
            suggested = await call(coord.get, "/v1/reposition/suggestions")
            assert [m["vehicle_id"] for m in suggested["moves"]] == ["taxi-decliner"]
            # The heatmaps come from the coordinator's worker process: a refresh on demand waits for it.
            refreshed = await call(coord.post, "/v1/heatmap/refresh", {}, operator)
            assert refreshed.status_code == 200 and refreshed.json()["cells"]["8"] >= 1, refreshed.text
            supply = await call(coord.get, "/v1/heatmap", layer="supply")
            assert sum(f["properties"]["supply"] for f in supply["features"]) == 3
            sent = await call(coord.post, "/v1/reposition/run", {}, operator)
            assert sent.status_code == 200, sent.text
            [move] = sent.json()
            target_cell = h3.latlng_to_cell(*TARGET, 8)
            assert move["to_cell"] == target_cell and move["state"] == "offered"
            assert move["offers"][0]["vehicle_id"] == "taxi-decliner"
            assert move["candidates"] == ["taxi-silent", "taxi-keen"]

            done = await call(move_in, coord, move["move_id"], "arrived", "late", "missed", "failed", "unfilled",
                              timeout=150)
            assert done["state"] == "arrived", done
            outcomes = [(o["vehicle_id"], o["outcome"]) for o in done["offers"]]
            assert outcomes == [("taxi-decliner", "declined"), ("taxi-silent", "timed_out"),
                                ("taxi-keen", "accepted")]
            assert "the driver declined" in done["offers"][0]["reason"]
            assert done["offers"][2]["incentive"] > 0 and done["earned"] == done["offers"][2]["incentive"]
            assert done["arrived_at"] <= done["arrive_by"]
            # The keen taxi started 1.6 km from the event and drove until it was inside the cell (or near its
            # centre): the empty distance is most of that and never more.
            assert 600 < done["empty_m"] < 1700
            # Each driver saw the offer on the terminal with its incentive; the silent one's was withdrawn.
            [shown] = [o for o in keen.terminal.shown if isinstance(o, Offer) and o.kind == "reposition"]
            assert shown.incentive == done["earned"] and shown.pickup.lat == pytest.approx(done["lat"])
            assert len(no.terminal.shown) == 1 and no.terminal.accepted == []
            await call(wait_until, lambda: silent.terminal.withdrawn, 10, "the expired offer withdrawn")
            here = keen.position
            assert h3.latlng_to_cell(*here, 8) == target_cell or abs(here[0] - done["lat"]) < 0.003

            stats = await call(coord.get, "/v1/reposition/stats")
            assert stats["offers"] == 3 and stats["acceptance_rate"] == pytest.approx(1 / 3, abs=1e-3)
            assert stats["arrived_within_sla"] == 1 and stats["arrival_within_sla_rate"] == 1.0
            assert stats["incentive_spent"] == done["earned"] and stats["empty_km"] == pytest.approx(
                done["empty_m"] / 1000, abs=0.01)
            assert stats["offers_by_outcome"] == {"declined": 1, "timed_out": 1, "accepted": 1}
            # The taxi now waiting there counts for the cell: one vehicle fewer is missing, and it stays put.
            again = await call(coord.get, "/v1/reposition/suggestions")
            assert again["deficit"][target_cell] == suggested["deficit"][target_cell] - 1
            assert "taxi-keen" not in [m["vehicle_id"] for m in again["moves"]]


async def test_a_driver_who_accepts_and_never_arrives_earns_nothing(tmp_path: Path, mosquitto: Mosquitto) -> None:
    env = {**FAST_TAXIS, "FLEETEDGE_COORDINATOR__SUPPLY__REPOSITION_SLA_MIN_S": "0",
           "FLEETEDGE_COORDINATOR__SUPPLY__REPOSITION_SLA_FACTOR": "1",
           "FLEETEDGE_COORDINATOR__SUPPLY__INCENTIVE_LATE_GRACE_S": "2",
           "FLEETEDGE_COORDINATOR__SUPPLY__REPOSITION_MAX_SHARE": "0.5"}
    with coordinator(tmp_path, mosquitto, env) as coord:
        async with (taxi_on_road(tmp_path, coord, "taxi-idler", offset(*TARGET, -700, 0), NO_SHOW) as (idler, _a),
                    taxi_on_road(tmp_path, coord, "taxi-far", offset(*TARGET, -1500, 0), ACCEPTS, seed=2)):
            operator = await call(coord.create_key, "operator")
            await call(declare_event, coord, operator)
            [move] = (await call(coord.post, "/v1/reposition/run", {}, operator)).json()
            assert move["offers"][0]["vehicle_id"] == "taxi-idler"
            moving = await call(move_in, coord, move["move_id"], "moving", "missed", timeout=20)
            sla_s = moving["arrive_by"] - moving["accepted_at"]
            assert sla_s == pytest.approx(moving["offers"][0]["travel_s"], abs=1)
            done = await call(move_in, coord, move["move_id"], "missed", "arrived", "late", timeout=sla_s + 20)
            assert done["state"] == "missed" and done["earned"] == 0 and done["arrived_at"] is None
            assert done["offers"][0]["incentive"] > 0 and done["empty_m"] < 50
            assert len(done["offers"]) == 1  # an accepted move is not offered again
            assert idler.terminal.accepted and h3.latlng_to_cell(*idler.position, 8) != move["to_cell"]
            stats = await call(coord.get, "/v1/reposition/stats")
            assert stats["by_state"]["missed"] == 1 and stats["incentive_spent"] == 0
            assert stats["arrival_within_sla_rate"] == 0.0


def test_a_drone_in_a_surplus_cell_is_sent_to_the_deficit_with_a_goto(tmp_path: Path, mosquitto: Mosquitto) -> None:
    with (coordinator(tmp_path, mosquitto, {**BASE, "FLEETEDGE_COORDINATOR__SUPPLY__REPOSITION_MAX_SHARE": "1"})
          as coord, copter_in_the_air(tmp_path, coord, "drone-1", offset(*TARGET, -1500, 0))):
        operator = coord.create_key("operator")
        declare_event(coord, operator)
        [move] = coord.post("/v1/reposition/run", {}, operator).json()
        assert move["kind"] == "copter" and move["offers"][0]["incentive"] == 0
        command = coord.get(f"/v1/vehicles/drone-1/commands/{move['offers'][0]['command_id']}")
        assert command["action"] == "goto" and command["params"]["lat"] == pytest.approx(move["lat"])
        done = move_in(coord, move["move_id"], "arrived", "late", "missed", "failed", "unfilled", timeout=120)
        assert done["state"] == "arrived" and done["earned"] == 0, done
        assert 500 < done["empty_m"] < 1600


async def test_a_job_accepted_on_the_way_ends_the_move_with_the_order_credit(tmp_path: Path,
                                                                            mosquitto: Mosquitto) -> None:
    env = {**FAST_TAXIS, "FLEETEDGE_COORDINATOR__SUPPLY__REPOSITION_MAX_SHARE": "1",
           "FLEETEDGE_COORDINATOR__SUPPLY__INCENTIVE_ORDER_CREDIT": "0.5",
           "FLEETEDGE_COORDINATOR__DISPATCH__KINDS__TAXI__PASSENGERS": "4"}
    start = offset(*TARGET, -2500, 0)
    with coordinator(tmp_path, mosquitto, env) as coord:
        async with taxi_on_road(tmp_path, coord, "taxi-1", start, ACCEPTS) as (taxi, _agent):
            operator = await call(coord.create_key, "operator")
            await call(declare_event, coord, operator)
            [move] = (await call(coord.post, "/v1/reposition/run", {}, operator)).json()
            await call(move_in, coord, move["move_id"], "moving", timeout=20)
            here = taxi.position
            pickup, dropoff = offset(*here, 200, 0), offset(*here, 200, 800)
            placed = await call(coord.post, "/v1/orders", {
                "pickup": {"lat": pickup[0], "lon": pickup[1]}, "dropoff": {"lat": dropoff[0], "lon": dropoff[1]},
                "passengers": 1}, operator)
            assert placed.status_code == 201, placed.text
            done = await call(move_in, coord, move["move_id"], "interrupted", "arrived", "late", timeout=30)
            assert done["state"] == "interrupted" and placed.json()["order_id"] in done["reason"]
            assert done["earned"] == pytest.approx(round(0.5 * done["offers"][0]["incentive"], 2))
            # On the vehicle, accepting the job ended the reposition, naming the job.
            reposition = await call(coord.get, f"/v1/vehicles/taxi-1/commands/{done['offers'][0]['command_id']}")
            assert reposition["state"] == "failed" and "superseded by command" in reposition["state_reason"]
