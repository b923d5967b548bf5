"""``fleet-agent doctor`` on this machine: a healthy setup (a real pseudo-terminal as the autopilot's serial
port, a real Mosquitto) passes; a missing device, an unreachable broker and an outbox cap larger than the
disk each fail with how to fix it, and the command exits 1."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from edge_agent.config import AgentSettings
from edge_agent.doctor import run_checks
from tests.harness import ROOT, Mosquitto


@pytest.fixture
def serial_port() -> Iterator[str]:
    master, slave = pty.openpty()
    try:
        yield os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def settings(tmp_path: Path, broker_url: str, device: str, cap_bytes: int = 64 * 2**20) -> AgentSettings:
    return msgspec.convert({
        "vehicle": {"id": "drone-doc", "kind": "copter"},
        "autopilot": {"device": f"serial://{device}?baud=57600"},
        "outbox": {"path": str(tmp_path / "outbox.db"), "cap_bytes": cap_bytes},
        "mqtt": {"url": broker_url}}, AgentSettings)


def test_a_healthy_vehicle_computer_passes(tmp_path: Path, mosquitto: Mosquitto, serial_port: str) -> None:
    findings = run_checks(settings(tmp_path, mosquitto.url, serial_port))
    by_subject = {f.what.split(":")[0]: f for f in findings}
    assert by_subject["autopilot.device"].verdict == "ok" and serial_port in by_subject["autopilot.device"].what
    assert by_subject["broker"].verdict == "ok" and "accepts drone-doc" in by_subject["broker"].what
    assert by_subject["disk"].verdict == "ok"
    assert by_subject["model battery 1.0.0"].verdict == "ok"
    # The clock depends on the machine (a container has no NTP to ask): whatever it says comes with a fix.
    clock = by_subject["clock"]
    assert clock.verdict == "ok" or clock.fix
    assert [f.what for f in findings if f.verdict == "FAIL" and f is not clock] == []


def test_what_is_wrong_is_said_with_its_fix_and_the_command_fails(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[vehicle]
id = "drone-doc"
kind = "copter"

[autopilot]
device = "serial:///dev/ttyFLEETEDGE-MISSING?baud=57600"

[outbox]
path = "{tmp_path / 'outbox.db'}"
cap_bytes = {2**60}

[mqtt]
url = "mqtt://127.0.0.1:9"
""")
    done = subprocess.run([sys.executable, "-m", "edge_agent", "doctor", "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "FAIL  autopilot.device: /dev/ttyFLEETEDGE-MISSING does not exist" in out
    assert "FAIL  broker: cannot reach 127.0.0.1:9" in out
    assert "FAIL  disk:" in out and "lower outbox.cap_bytes" in out
    assert out.count("fix: ") >= 3 and "models: no [models] public_key" in out
