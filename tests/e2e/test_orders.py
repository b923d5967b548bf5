"""Orders end to end: REST -> the coordinator's dispatch -> Mosquitto -> agent processes -> simulated taxis
(NMEA GPS on a pseudo-terminal, driver terminal on a socket) and simulated drones (MAVLink over UDP), and
every ack and position back until the order is delivered, or fails, or goes to another vehicle."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from protocols import AckState, Command
from sim_hw.driver_terminal import DriverBehaviour
from sim_hw.geo import offset
from sim_hw.taxi import SimulatedTaxi
from tests.e2e.test_commands import AckListener
from tests.harness import ROOT, AgentProcess, CoordinatorProcess, Mosquitto, _env, free_port, wait_until

RANK = (48.137, 11.575)
ACCEPTS = DriverBehaviour(base_accept=1.0, accept_drop_per_km=0.0, no_answer=0.0, delay_s=0.5, delay_per_km_s=0.0)
DECLINES = DriverBehaviour(base_accept=0.0, accept_drop_per_km=0.0, no_answer=0.0, delay_s=0.5, delay_per_km_s=0.0)
SILENT = DriverBehaviour(no_answer=1.0)
DISPATCH = {"FLEETEDGE_COORDINATOR__DISPATCH__TICK_S": "0.3",
            "FLEETEDGE_COORDINATOR__DISPATCH__ACCEPT_TIMEOUT_S": "5",
            "FLEETEDGE_COORDINATOR__DISPATCH__VEHICLE_LOST_AFTER_S": "2"}


@pytest.fixture
def dispatching(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[CoordinatorProcess]:
    workdir = tmp_path / "coordinator"
    workdir.mkdir()
    proc = CoordinatorProcess(workdir, mosquitto.url, env=DISPATCH)
    proc.start()
    yield proc
    proc.stop()


async def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


def order_in(coordinator: CoordinatorProcess, order_id: str, *states: str, timeout: float) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        found: dict[str, Any] = coordinator.get(f"/v1/orders/{order_id}")
        return found if found["state"] in states else None

    try:
        result: dict[str, Any] = wait_until(reached, timeout, f"order {order_id} in {states}", interval=0.2)
    except (AssertionError, TimeoutError):
        print(coordinator.get(f"/v1/orders/{order_id}"))
        raise
    return result


@contextlib.asynccontextmanager
async def taxi_on_road(tmp_path: Path, coordinator: CoordinatorProcess, vehicle_id: str, start: tuple[float, float],
                       behaviour: DriverBehaviour, seed: int = 1) -> AsyncIterator[tuple[SimulatedTaxi, AgentProcess]]:
    async with SimulatedTaxi(start=start, behaviour=behaviour, seed=seed, speed_m_s=40.0, boarding_s=1.0) as taxi:
        workdir = tmp_path / f"agent-{vehicle_id}"
        workdir.mkdir()
        agent = AgentProcess(workdir, vehicle_id, coordinator.broker_url, {
            "vehicle": {"kind": "taxi"}, "source": {"kind": "none"},
            "gps": {"device": f"serial://{taxi.gps_path}?baud=9600"},
            "terminal": {"device": f"tcp://{taxi.terminal_address}"}})
        await call(agent.start)
        try:
            await call(wait_until, lambda: any(
                v["vehicle_id"] == vehicle_id and v["online"] and v["lat"] is not None
                for v in coordinator.get("/v1/vehicles")["vehicles"]), 30, f"{vehicle_id} online with a position")
            yield taxi, agent
        finally:
            await call(agent.stop)


def states_of(order: dict[str, Any]) -> list[str]:
    return [e["state"] for e in order["history"]]


async def test_a_taxi_takes_the_order_drives_it_and_it_is_delivered(tmp_path: Path,
                                                                    dispatching: CoordinatorProcess) -> None:
    async with taxi_on_road(tmp_path, dispatching, "taxi-1", RANK, ACCEPTS) as (taxi, _agent):
        operator = await call(dispatching.create_key, "operator")
        pickup, dropoff = offset(*RANK, 300, 200), offset(*RANK, 900, -300)
        started = time.monotonic()
        placed = await call(dispatching.post, "/v1/orders", {
            "pickup": {"lat": pickup[0], "lon": pickup[1]}, "dropoff": {"lat": dropoff[0], "lon": dropoff[1]},
            "passengers": 2, "vehicle_kinds": ["taxi"]}, operator)
        assert placed.status_code == 201, placed.text
        oid = placed.json()["order_id"]
        assigned = await call(order_in, dispatching, oid, "assigned", "accepted", "picked_up", "delivered",
                              timeout=10)
        assigned_after = time.monotonic() - started
        assert assigned["vehicle_id"] == "taxi-1"
        delivered = await call(order_in, dispatching, oid, "delivered", timeout=60)
        assert states_of(delivered) == ["pending", "assigned", "accepted", "picked_up", "delivered"]
        assert [o.title for o in taxi.terminal.shown] and taxi.terminal.accepted[0].pickup.lat == pytest.approx(
            pickup[0])
        job = await call(dispatching.get, f"/v1/vehicles/taxi-1/commands/{delivered['command_id']}")
        assert job["action"] == "job" and job["params"]["order_id"] == oid
        finished = await call(wait_until, lambda: (lambda c: c if c["state"] == "completed" else None)(
            dispatching.get(f"/v1/vehicles/taxi-1/commands/{delivered['command_id']}")), 20, "the job completed")
        assert "at the drop-off" in finished["state_reason"]
        events = await call(dispatching.get, "/v1/order-events")
        assert [e["state"] for e in events["events"] if e["order_id"] == oid] == states_of(delivered)
        # Placing wakes dispatch at once: the assignment does not wait for a round of the tick.
        assert assigned_after < 5


async def test_a_decline_sends_the_order_to_the_next_taxi_and_never_back(tmp_path: Path,
                                                                         dispatching: CoordinatorProcess) -> None:
    async with (taxi_on_road(tmp_path, dispatching, "taxi-near", RANK, DECLINES) as (near, _a),
                taxi_on_road(tmp_path, dispatching, "taxi-far", offset(*RANK, -800, 0), ACCEPTS, seed=2) as (far, _b)):
        operator = await call(dispatching.create_key, "operator")
        pickup, dropoff = offset(*RANK, 100, 0), offset(*RANK, 600, 0)
        placed = await call(dispatching.post, "/v1/orders", {
            "pickup": {"lat": pickup[0], "lon": pickup[1]}, "dropoff": {"lat": dropoff[0], "lon": dropoff[1]},
            "vehicle_kinds": ["taxi"]}, operator)
        oid = placed.json()["order_id"]
        accepted = await call(order_in, dispatching, oid, "accepted", "picked_up", "delivered", timeout=30)
        assert accepted["vehicle_id"] == "taxi-far" and accepted["attempts"] == 2
        history = accepted["history"]
        assert [(e["state"], e["vehicle_id"]) for e in history[:4]] == [
            ("pending", None), ("assigned", "taxi-near"), ("pending", "taxi-near"), ("assigned", "taxi-far")]
        assert "taxi-near declined" in history[2]["reason"] and "the driver declined" in history[2]["reason"]
        assert len(near.terminal.shown) == 1 and near.terminal.accepted == []
        assert far.terminal.accepted[0].id == accepted["command_id"][:64]
        await call(order_in, dispatching, oid, "delivered", timeout=60)


async def test_no_answer_in_time_moves_the_order_and_a_cancel_reaches_the_driver(
        tmp_path: Path, dispatching: CoordinatorProcess) -> None:
    async with (taxi_on_road(tmp_path, dispatching, "taxi-asleep", RANK, SILENT) as (asleep, _a),
                taxi_on_road(tmp_path, dispatching, "taxi-awake", offset(*RANK, 1500, 0),
                             DriverBehaviour(base_accept=1.0, accept_drop_per_km=0, no_answer=0, delay_s=1.0,
                                             delay_per_km_s=0), seed=3) as (awake, _b)):
        operator = await call(dispatching.create_key, "operator")
        pickup, dropoff = offset(*RANK, 50, 50), offset(*RANK, -3000, 0)
        placed = await call(dispatching.post, "/v1/orders", {
            "pickup": {"lat": pickup[0], "lon": pickup[1]}, "dropoff": {"lat": dropoff[0], "lon": dropoff[1]},
            "vehicle_kinds": ["taxi"]}, operator)
        oid = placed.json()["order_id"]
        moved = await call(order_in, dispatching, oid, "accepted", "picked_up", timeout=40)
        assert moved["vehicle_id"] == "taxi-awake"
        timed_out = next(e for e in moved["history"] if e["state"] == "pending" and e["vehicle_id"] == "taxi-asleep")
        assert "did not answer before the offer expired" in timed_out["reason"]
        # The asleep driver's screen was cleared when the offer expired.
        await call(wait_until, lambda: asleep.terminal.withdrawn, 10, "the expired offer withdrawn")

        cancelled = await call(dispatching.post, f"/v1/orders/{oid}/cancel", {"reason": "customer no-show"}, operator)
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        job = await call(wait_until, lambda: (lambda c: c if c["state"] == "failed" else None)(
            dispatching.get(f"/v1/vehicles/taxi-awake/commands/{moved['command_id']}")), 20, "the job stopped")
        assert "cancelled by dispatch" in job["state_reason"] and "customer no-show" in job["state_reason"]
        stop = next(c for c in await call(dispatching.get, "/v1/vehicles/taxi-awake/commands")
                    if c["action"] == "cancel_job")
        assert stop["params"]["order_id"] == oid
        assert awake.terminal.accepted and oid not in [
            o["order_id"] for o in (await call(dispatching.get, "/v1/orders", state="delivered"))["orders"]]


@contextlib.contextmanager
def copter_in_the_air(tmp_path: Path, coordinator: CoordinatorProcess, vehicle_id: str,
                      home: tuple[float, float], *, battery_pct: float = 100.0,
                      settings: dict[str, dict[str, Any]] | None = None) -> Iterator[AgentProcess]:
    port = free_port()
    workdir = tmp_path / f"agent-{vehicle_id}"
    workdir.mkdir()
    agent = AgentProcess(workdir, vehicle_id, coordinator.broker_url, {
        "vehicle": {"kind": "copter"}, "source": {"kind": "none"},
        "autopilot": {"device": f"udpin://127.0.0.1:{port}"}, "commands": {"job_hold_s": 2.0}, **(settings or {})})
    agent.start()
    with open(tmp_path / f"{vehicle_id}.log", "wb") as log:
        vehicle = subprocess.Popen([sys.executable, "-m", "sim_hw", "vehicle", "--kind", "copter", "--listen",
                                    f"udpout:127.0.0.1:{port}", "--home", f"{home[0]},{home[1]},520",
                                    "--speedup", "4", "--battery", str(battery_pct)], env=_env(), cwd=ROOT,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: any(v["vehicle_id"] == vehicle_id and v["online"] and v["lat"] is not None and
                               "battery" in v["latest"] for v in coordinator.get("/v1/vehicles")["vehicles"]),
                   30, f"{vehicle_id} online with a position and a battery")
        yield agent
    finally:
        vehicle.terminate()
        vehicle.wait(10)
        agent.stop()


def test_a_drone_flies_the_delivery_mission_and_comes_home(tmp_path: Path, dispatching: CoordinatorProcess) -> None:
    with copter_in_the_air(tmp_path, dispatching, "drone-1", RANK):
        operator = dispatching.create_key("operator")
        pickup, dropoff = offset(*RANK, 200, 100), offset(*RANK, 500, -200)
        placed = dispatching.post("/v1/orders", {
            "pickup": {"lat": pickup[0], "lon": pickup[1]}, "dropoff": {"lat": dropoff[0], "lon": dropoff[1]},
            "payload_kg": 1.0, "vehicle_kinds": ["copter"]}, operator)
        assert placed.status_code == 201, placed.text
        oid = placed.json()["order_id"]
        delivered = order_in(dispatching, oid, "delivered", "failed", timeout=120)
        assert states_of(delivered) == ["pending", "assigned", "accepted", "picked_up", "delivered"], delivered
        job_id = delivered["command_id"]
        done = wait_until(lambda: (lambda c: c if c["state"] in ("completed", "failed") else None)(
            dispatching.get(f"/v1/vehicles/drone-1/commands/{job_id}")), 120, "the drone home")
        assert done["state"] == "completed" and "back home" in done["state_reason"]
        records = dispatching.get("/v1/vehicles/drone-1/telemetry", kind="mission.item_reached", limit=100)["records"]
        reached = [r["data"]["seq"] for r in records]
        assert reached[:2] == [1, 2], "pickup and drop-off waypoints reached in order"


def test_a_drone_lost_with_the_load_fails_the_order(tmp_path: Path, dispatching: CoordinatorProcess) -> None:
    with copter_in_the_air(tmp_path, dispatching, "drone-2", RANK) as agent:
        operator = dispatching.create_key("operator")
        pickup, dropoff = offset(*RANK, 150, 0), offset(*RANK, 2500, 0)
        oid = dispatching.post("/v1/orders", {
            "pickup": {"lat": pickup[0], "lon": pickup[1]}, "dropoff": {"lat": dropoff[0], "lon": dropoff[1]},
            "payload_kg": 0.5}, operator).json()["order_id"]
        order_in(dispatching, oid, "picked_up", timeout=90)
        agent.kill()  # the vehicle computer dies mid-air; the broker publishes its Last Will
        failed = order_in(dispatching, oid, "failed", timeout=30)
        assert "offline" in failed["state_reason"] and "with the load aboard" in failed["state_reason"]
        assert states_of(failed)[-2:] == ["picked_up", "failed"]


async def test_a_repeated_or_expired_job_never_runs(tmp_path: Path, mosquitto: Mosquitto,
                                                    dispatching: CoordinatorProcess) -> None:
    async with taxi_on_road(tmp_path, dispatching, "taxi-7", RANK, ACCEPTS) as (taxi, _agent):
        listener = AckListener(mosquitto, "taxi-7")
        try:
            now = time.time()
            params = {"order_id": "ord-direct", "pickup_lat": RANK[0], "pickup_lon": RANK[1],
                      "dropoff_lat": RANK[0] + 0.001, "dropoff_lon": RANK[1]}
            job = Command(command_id="job-1", vehicle_id="taxi-7", kind="job", issued_at=now, expires_at=now + 30,
                          params=params)
            stale = Command(command_id="job-old", vehicle_id="taxi-7", kind="job", issued_at=now - 60,
                            expires_at=now - 30, params={**params, "order_id": "ord-stale"})
            await call(listener.send, job)
            await call(wait_until, lambda: AckState.ACCEPTED in listener.states("job-1"), 20, "the job accepted")
            await call(listener.send, job)
            await call(listener.send, stale)
            await call(wait_until, lambda: listener.states("job-old"), 15, "the stale job's answer")
            assert listener.states("job-old") == [AckState.REJECTED]
            # A cancel that overtook its job: the job arriving after it never starts.
            cancel = Command(command_id="cancel-1", vehicle_id="taxi-7", kind="cancel_job", issued_at=now,
                             expires_at=now + 30, params={"order_id": "ord-overtaken"})
            overtaken = Command(command_id="job-2", vehicle_id="taxi-7", kind="job", issued_at=now,
                                expires_at=now + 30, params={**params, "order_id": "ord-overtaken"})
            await call(listener.send, cancel)
            await call(listener.send, overtaken)
            await call(wait_until, lambda: AckState.REJECTED in listener.states("job-2"), 15, "job-2 refused")
            assert "cancelled before it started" in next(a.reason for a in listener.acks if a.command_id == "job-2"
                                                         and a.state is AckState.REJECTED)
            await asyncio.sleep(1.5)
            assert len(taxi.terminal.shown) == 1, "neither the repeated, the stale nor the overtaken job was offered"
        finally:
            listener.close()
