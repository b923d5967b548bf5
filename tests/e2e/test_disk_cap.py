"""A long outage fills the outbox cap: the files never exceed it, the oldest telemetry is evicted, and the
coordinator learns exactly how much was dropped."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from tests.e2e.test_outage import drain_and_stop
from tests.harness import AgentProcess, CoordinatorProcess, Mosquitto, wait_until

CAP = 2 * 1024 * 1024


def disk_bytes(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += os.stat(f"{path}{suffix}").st_size
        except FileNotFoundError:
            pass
    return total


def test_long_outage_respects_the_cap_and_reports_evictions(
        mosquitto: Mosquitto, coordinator: CoordinatorProcess, make_agent: Callable[..., AgentProcess]) -> None:
    agent = make_agent("drone-cap", outbox={"cap_bytes": CAP}, source={"rate_hz": 4000.0})
    agent.start()
    wait_until(lambda: coordinator.vehicle_stats("drone-cap").get("accepted", 0) > 100, 20, "first records")

    mosquitto.stop()
    peak = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        peak = max(peak, disk_bytes(agent.outbox_path))
        if time.monotonic() > deadline - 14 and agent.outbox_counts().get("evicted_telemetry", 0) > 20_000:
            break
        time.sleep(0.02)
    counts = agent.outbox_counts()
    assert counts.get("evicted_telemetry", 0) > 0, f"a long outage must fill a {CAP}-byte cap: {counts}"
    assert peak <= CAP, f"the outbox reached {peak} bytes on disk, over its cap of {CAP}"

    mosquitto.start()
    last_seq = drain_and_stop(agent)
    final = agent.outbox_counts()
    assert final.get("evicted_event", 0) == 0 and final.get("evicted_alert", 0) == 0
    stats = wait_until(
        lambda: (s := coordinator.vehicle_stats("drone-cap")) and s["accepted"] + s["evicted_at_edge"] >= last_seq and s,
        30, f"accepted plus evicted to reach {last_seq} (edge: {final})")
    assert stats["evicted_at_edge"] == final["evicted_telemetry"], "every eviction is reported, once"
    assert stats["accepted"] + stats["evicted_at_edge"] == last_seq
    assert stats["gaps"] == 0 and stats["duplicates"] >= 0
