"""A simulated ArduRover (its own process, MAVLink over UDP) feeding a real agent started from a hardware
profile; its telemetry and events reach the coordinator through Mosquitto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.harness import ROOT, AgentProcess, CoordinatorProcess, _env, free_port, wait_until


def test_rover_profile_agent_relays_autopilot_telemetry(tmp_path: Path, coordinator: CoordinatorProcess) -> None:
    port = free_port()
    (tmp_path / "agent-rover").mkdir()
    agent = AgentProcess(tmp_path / "agent-rover", "rover-7", coordinator.broker_url, {
        "source": {"kind": "none"},
        "autopilot": {"device": f"udpin://127.0.0.1:{port}"},
    }, profile="rover-ardurover-udp")
    agent.start()
    with open(tmp_path / "vehicle.log", "wb") as log:
        vehicle = subprocess.Popen([sys.executable, "-m", "sim_hw", "vehicle", "--kind", "rover", "--listen",
                                    f"udpout:127.0.0.1:{port}", "--home", "48.1,11.5,520"],
                                   env=_env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        detail = wait_until(lambda: (v := coordinator.get("/v1/vehicles").get("vehicles")) and
                            "position" in v[0]["latest"] and "status" in v[0]["latest"] and v[0], 30,
                            "the rover's position and status at the coordinator")
        assert detail["vehicle_id"] == "rover-7"
        assert abs(detail["latest"]["position"]["lat"] - 48.1) < 0.001
        assert detail["latest"]["status"]["mode"] == "HOLD", "ArduRover's mode names, not Copter's"
        records = coordinator.get("/v1/vehicles/rover-7/telemetry", kind="link.up")["records"]
        assert records and records[0]["data"]["autopilot"] == "ardupilot"
    finally:
        vehicle.terminate()
        vehicle.wait(10)
        agent.stop()
