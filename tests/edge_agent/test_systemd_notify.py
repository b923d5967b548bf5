"""Under systemd (``Type=notify``, ``WatchdogSec=``) the agent process says READY once it records, feeds the
watchdog while its loops go round, and says STOPPING on SIGTERM: read here from a real notify socket."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.harness import ROOT, _env


def test_ready_watchdog_and_stopping_reach_systemds_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.5)
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[vehicle]
id = "drone-sd"
kind = "copter"
[outbox]
path = "{tmp_path / 'outbox.db'}"
[mqtt]
url = "mqtt://127.0.0.1:9"
[source]
kind = "simulated"
[models]
enabled = []
""")
    env = {**_env(), "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}
    agent = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(config)], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    received: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and received.count("WATCHDOG=1") < 3:
            try:
                received.append(sock.recv(4096).decode())
            except TimeoutError:
                continue
        agent.send_signal(signal.SIGTERM)
        agent.wait(20)
        while True:
            try:
                received.append(sock.recv(4096).decode())
            except TimeoutError:
                break
    finally:
        if agent.poll() is None:
            agent.kill()
        sock.close()
    assert received[0].startswith("READY=1\nSTATUS=recording drone-sd"), received
    assert received.count("WATCHDOG=1") >= 3  # every half period (0.5 s) while the group commit goes round
    assert received[-1] == "STOPPING=1" and agent.returncode == 0
