"""The README's main command: the demo starts, records arrive, orders are dispatched and carried out, and it
shuts down cleanly."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.harness import Mosquitto, RedisServer


def test_demo_runs_shows_records_arriving_and_stops_cleanly(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sim_hw", "demo", "--vehicles", "3", "--duration", "40", "--api-port", "0",
         "--workdir", str(tmp_path / "demo"), "--orders-every", "2", "--speedup", "8"],
        capture_output=True, text=True, timeout=150, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert re.search(r"viewer key: fe_\w+", out), out
    progress = re.findall(r"vehicles online (\d+)/3, records received (\d+), duplicates dropped \d+, gaps (\d+); "
                          r"orders placed (\d+), waiting \d+, on the way \d+, delivered (\d+)", out)
    assert progress, out
    online, received, gaps, placed, delivered = progress[-1]
    assert online == "3" and int(received) > 100 and gaps == "0", out
    assert int(placed) >= 10 and int(delivered) >= 1, out
    assert "demo stopped cleanly" in out
    assert "Traceback" not in done.stderr, done.stderr


def test_the_demo_runs_a_chosen_mix_on_an_external_mosquitto_and_redis(tmp_path: Path, mosquitto: Mosquitto,
                                                                      redis_server: RedisServer) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sim_hw", "demo", "--mix", "copter=1,taxi=2", "--duration", "25", "--api-port", "0",
         "--workdir", str(tmp_path / "demo"), "--orders-every", "0", "--speedup", "8", "--city", "48.137,11.575",
         "--broker", mosquitto.url, "--store", redis_server.url],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"MQTT on {mosquitto.url}" in out and f"Redis {redis_server.url}" in out, out
    assert "started 3 simulated vehicles: copter-01, taxi-02, taxi-03" in out, out
    progress = re.findall(r"vehicles online (\d+)/3, records received (\d+)", out)
    assert progress and progress[-1][0] == "3" and int(progress[-1][1]) > 50, out
    assert not (tmp_path / "demo" / "coordinator.db").exists()  # the state went to Redis
    assert "demo stopped cleanly" in out and "Traceback" not in done.stderr, done.stderr
