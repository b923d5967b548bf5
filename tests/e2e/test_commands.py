"""Commands over REST, end to end: coordinator process -> Mosquitto -> agent process -> simulated vehicle or
driver terminal, and the vehicle's acks back into the command's status."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from protocols import AckState, Channel, Command, CommandAck, decode, encode, topic_for
from sim_hw.driver_terminal import ScriptedDriver, SimulatedDriverTerminal
from sim_hw.geo import distance_m, offset
from tests.harness import ROOT, AgentProcess, CoordinatorProcess, Mosquitto, _env, free_port, wait_until

HOME = (48.1, 11.5)


def command_state(coordinator: CoordinatorProcess, vehicle_id: str, command_id: str) -> dict[str, Any]:
    found: dict[str, Any] = coordinator.get(f"/v1/vehicles/{vehicle_id}/commands/{command_id}")
    return found


def wait_for_state(coordinator: CoordinatorProcess, vehicle_id: str, command_id: str, state: str,
                   timeout: float) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        found = command_state(coordinator, vehicle_id, command_id)
        if found["state"] in ("rejected", "failed", "expired", "not_sent") and state != found["state"]:
            raise AssertionError(f"command ended {found['state']}: {found['state_reason']}")
        return found if found["state"] == state else None

    result: dict[str, Any] = wait_until(reached, timeout, f"command {command_id} to be {state}", interval=0.2)
    return result


@pytest.fixture
def copter(tmp_path: Path, coordinator: CoordinatorProcess) -> Iterator[AgentProcess]:
    port = free_port()
    (tmp_path / "agent-copter").mkdir()
    agent = AgentProcess(tmp_path / "agent-copter", "copter-3", coordinator.broker_url, {
        "vehicle": {"kind": "copter"},
        "source": {"kind": "none"},
        "autopilot": {"device": f"udpin://127.0.0.1:{port}"},
    })
    agent.start()
    with open(tmp_path / "vehicle.log", "wb") as log:
        vehicle = subprocess.Popen([sys.executable, "-m", "sim_hw", "vehicle", "--kind", "copter", "--listen",
                                    f"udpout:127.0.0.1:{port}", "--home", f"{HOME[0]},{HOME[1]},520",
                                    "--speedup", "4"], env=_env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: any(v["vehicle_id"] == "copter-3" and v["online"] and v["lat"] is not None
                               for v in coordinator.get("/v1/vehicles")["vehicles"]), 30,
                   "the copter online with a position")
        yield agent
    finally:
        vehicle.terminate()
        vehicle.wait(10)
        agent.stop()


def test_goto_then_return_to_launch_run_on_the_copter_and_their_acks_come_back(
        coordinator: CoordinatorProcess, copter: AgentProcess) -> None:
    operator = coordinator.create_key("operator")
    target = offset(*HOME, 120, 80)
    posted = coordinator.post("/v1/vehicles/copter-3/commands",
                              {"action": "goto", "lat": target[0], "lon": target[1], "alt_m": 15}, operator)
    assert posted.status_code == 202, posted.text
    body = posted.json()
    assert body["state"] in ("sent", "received", "accepted") and body["issued_by"] == "operator"
    assert posted.headers["location"] == f"/v1/vehicles/copter-3/commands/{body['command_id']}"
    done = wait_for_state(coordinator, "copter-3", body["command_id"], "completed", 90)
    states = [e["state"] for e in done["history"]]
    # The vehicle's "received" may be stamped before the coordinator has noted the broker's PUBACK.
    assert states[0] == "pending" and states[-1] == "completed"
    assert {"sent", "received", "accepted"} <= set(states)
    # Telemetry follows the ack by up to a batch: the reported position catches up with the arrival.
    wait_until(lambda: distance_m(*(lambda p: (p["lat"], p["lon"]))(
        coordinator.get("/v1/vehicles/copter-3")["latest"]["position"]), *target) < 10, 15,
               "the reported position at the go-to point")

    home = coordinator.post("/v1/vehicles/copter-3/commands", {"action": "return_to_launch"}, operator)
    assert home.status_code == 202, home.text
    landed = wait_for_state(coordinator, "copter-3", home.json()["command_id"], "completed", 120)
    assert "disarmed" in landed["state_reason"]
    listed = coordinator.get("/v1/vehicles/copter-3/commands")
    assert [c["command_id"] for c in listed] == [home.json()["command_id"], body["command_id"]]


def test_command_requests_are_checked_before_anything_is_sent(coordinator: CoordinatorProcess,
                                                               copter: AgentProcess) -> None:
    operator = coordinator.create_key("operator")
    cases = [
        ({"action": "goto", "lat": 91, "lon": 0}, 422, "lat"),
        ({"action": "goto", "lat": 1}, 422, "lon"),
        ({"action": "fly_away"}, 422, "action"),
        ({"action": "land", "ttl_s": 0}, 422, "ttl_s"),
        ({"action": "message", "text": "hi"}, 422, "no driver terminal"),
    ]
    for body, code, words in cases:
        response = coordinator.post("/v1/vehicles/copter-3/commands", body, operator)
        assert response.status_code == code and words in response.text, (body, response.text)
    assert coordinator.post("/v1/vehicles/nobody/commands", {"action": "land"}, operator).status_code == 404
    refused = coordinator.post("/v1/vehicles/copter-3/commands", {"action": "land"}, coordinator.key)
    assert refused.status_code == 403 and "operator" in refused.json()["detail"]
    assert coordinator.get("/v1/vehicles/copter-3/commands") == []


class AckListener:
    """Subscribes to one vehicle's acks on the broker, as the coordinator does."""

    def __init__(self, broker: Mosquitto, vehicle_id: str) -> None:
        self.acks: list[CommandAck] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{time.monotonic_ns()}")
        self.client.on_message = lambda c, u, m: self.acks.append(decode(m.payload, CommandAck))
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(topic_for(vehicle_id, Channel.ACKS), qos=1)
        self.client.loop_start()

    def send(self, command: Command) -> None:
        self.client.publish(topic_for(command.vehicle_id, Channel.COMMANDS), encode(command), qos=1).wait_for_publish(5)

    def states(self, command_id: str) -> list[AckState]:
        return [a.state for a in self.acks if a.command_id == command_id]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def test_a_message_reaches_the_driver_once_and_an_expired_one_never(
        tmp_path: Path, mosquitto: Mosquitto, coordinator: CoordinatorProcess) -> None:
    port = free_port()
    async with SimulatedDriverTerminal(f"tcp:127.0.0.1:{port}", ScriptedDriver("accept", seed=1)) as terminal:
        (tmp_path / "agent-taxi").mkdir()
        agent = AgentProcess(tmp_path / "agent-taxi", "taxi-9", coordinator.broker_url, {
            "vehicle": {"kind": "taxi"}, "source": {"kind": "simulated", "rate_hz": 5.0},
            "terminal": {"device": f"tcp://127.0.0.1:{port}"}})
        agent.start()
        listener = AckListener(mosquitto, "taxi-9")
        try:
            await asyncio.to_thread(wait_until, lambda: any(v["vehicle_id"] == "taxi-9" and v["kind"] == "taxi" for v in
                                                            coordinator.get("/v1/vehicles")["vehicles"]),
                                    30, "the taxi at the coordinator")
            operator = await asyncio.to_thread(coordinator.create_key, "operator")
            posted = await asyncio.to_thread(coordinator.post, "/v1/vehicles/taxi-9/commands",
                                             {"action": "message", "text": "Pick-up moved to gate 4"}, operator)
            assert posted.status_code == 202, posted.text
            cid = posted.json()["command_id"]
            done = await asyncio.to_thread(wait_for_state, coordinator, "taxi-9", cid, "completed", 30)
            assert done["state_reason"] == "shown on the driver terminal"
            assert [getattr(m, "text", None) for m in terminal.shown] == ["Pick-up moved to gate 4"]
            wrong = await asyncio.to_thread(coordinator.post, "/v1/vehicles/taxi-9/commands", {"action": "land"},
                                            operator)
            assert wrong.status_code == 422 and "no autopilot" in wrong.text

            # The same command delivered again (a broker redelivery, a replay): answered, never shown twice.
            now = time.time()
            again = Command(command_id=cid, vehicle_id="taxi-9", kind="message", issued_at=now,
                            expires_at=now + 60, params={"text": "Pick-up moved to gate 4"})
            late = Command(command_id="late-1", vehicle_id="taxi-9", kind="message", issued_at=now - 120,
                           expires_at=now - 60, params={"text": "stale"})
            await asyncio.to_thread(listener.send, again)
            await asyncio.to_thread(listener.send, late)
            await asyncio.to_thread(wait_until, lambda: listener.states("late-1") and listener.states(cid), 15,
                                    "acks of the replayed and the expired command")
            assert listener.states("late-1") == [AckState.REJECTED]
            assert "expired" in next(a.reason for a in listener.acks if a.command_id == "late-1")
            assert listener.states(cid)[-1] is AckState.COMPLETED
            await asyncio.sleep(1.0)
            assert len(terminal.shown) == 1, "neither the replay nor the expired command reached the driver"
        finally:
            listener.close()
            await asyncio.to_thread(agent.stop)
