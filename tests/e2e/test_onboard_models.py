"""On-board models end to end: a simulated drone (MAVLink over UDP) flies a delivery on too little battery
while the broker is down; its agent's battery model raises the critical alert with no link, keeps it in the
outbox, and the coordinator has it once the broker is back. Every prediction is synced like telemetry."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sim_hw.geo import offset
from tests.e2e.test_orders import RANK, copter_in_the_air
from tests.harness import CoordinatorProcess, Mosquitto, wait_until


def outbox_kinds(agent_dir: Path) -> list[str]:
    with sqlite3.connect(f"file:{agent_dir / 'outbox.db'}?mode=ro", uri=True) as db:
        return [kind for (kind,) in db.execute("SELECT kind FROM outbox")]


def test_a_battery_alert_raised_offline_reaches_the_coordinator_when_the_link_returns(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    workdir = tmp_path / "coordinator"
    workdir.mkdir()
    coord = CoordinatorProcess(workdir, mosquitto.url, env={
        "FLEETEDGE_COORDINATOR__DISPATCH__TICK_S": "0.3",
        # Dispatch lets the drone go with 22 % (its rule: range x charge); the drone's own model knows better.
        "FLEETEDGE_COORDINATOR__DISPATCH__BATTERY_RESERVE_PCT": "0"})
    coord.start()
    try:
        with copter_in_the_air(tmp_path, coord, "drone-1", RANK, battery_pct=22,
                               settings={"models": {"stats_every_s": 2.0}}) as agent:
            operator = coord.create_key("operator")
            pickup, dropoff = offset(*RANK, 400, 0), offset(*RANK, 1200, 0)
            placed = coord.post("/v1/orders", {
                "pickup": {"lat": pickup[0], "lon": pickup[1]}, "dropoff": {"lat": dropoff[0], "lon": dropoff[1]},
                "payload_kg": 1.0, "vehicle_kinds": ["copter"]}, operator)
            assert placed.status_code == 201, placed.text
            oid = placed.json()["order_id"]

            def received() -> dict[str, Any] | None:
                order = coord.get(f"/v1/orders/{oid}")
                if order["command_id"] is None:
                    return None
                command = coord.get(f"/v1/vehicles/drone-1/commands/{order['command_id']}")
                return command if command["state"] in ("received", "accepted") else None

            command = wait_until(received, 20, "the job on the drone")
            assert command["state"] == "received", "the job was accepted before the link could be cut"
            mosquitto.stop()
            cut_at = time.time()
            wait_until(lambda: "battery.range_short" in outbox_kinds(agent.workdir), 30,
                       "the alert in the drone's outbox")
            mosquitto.start()
            back_at = time.time()

            def synced() -> list[dict[str, Any]]:
                found: list[dict[str, Any]] = coord.get("/v1/alerts", vehicle_id="drone-1",
                                                        kind="battery.range_short")
                return found

            [alert] = wait_until(synced, 40, "the alert at the coordinator")
            assert cut_at <= alert["ts"] < back_at  # raised while the link was down
            assert alert["data"]["order_id"] == oid and alert["data"]["range_m"] < alert["data"]["route_m"] * 1.2
            assert alert["data"]["model_version"] == "1.0.0"
            predictions = coord.get("/v1/vehicles/drone-1/telemetry", kind="prediction", limit=1000)["records"]
            assert {p["data"]["model"] for p in predictions} == {"battery"}
            assert any(cut_at <= p["ts"] < back_at for p in predictions)
            first = predictions[0]["data"]
            assert len(first["inputs"]) == 5 and first["version"] == "1.0.0" and first["output"] > 0
            stats = wait_until(lambda: coord.get("/v1/vehicles/drone-1/telemetry", kind="model.stats")["records"],
                               20, "the agent's model stats")
            battery = stats[-1]["data"]["battery"]
            assert battery["calls"] > 0 and battery["p99_ms"] > 0 and battery["providers"] == ["CPUExecutionProvider"]
    finally:
        coord.stop()
