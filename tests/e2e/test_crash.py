"""kill -9 the agent again and again during heavy recording and upload: no committed record is lost,
none is counted twice."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from tests.e2e.test_outage import assert_exactly_once, drain_and_stop
from tests.harness import AgentProcess, CoordinatorProcess, wait_until

KILLS = 20


def test_repeated_kill_9_loses_no_committed_record(
        coordinator: CoordinatorProcess, make_agent: Callable[..., AgentProcess]) -> None:
    rng = random.Random(7)
    agent = make_agent("drone-crash", source={"rate_hz": 2000.0}, uplink={"batch_records": 200})
    committed_before_kill = []
    for _ in range(KILLS):
        agent.start()
        time.sleep(rng.uniform(0.4, 1.2))
        agent.kill()
        # What the dead process had committed is what must arrive, whatever else was in flight.
        committed_before_kill.append(agent.outbox_counts().get("next_seq", 1) - 1)  # killed before a commit: 0
    assert committed_before_kill == sorted(committed_before_kill)
    assert committed_before_kill[-1] > 5000, "the agent recorded heavily between kills"

    agent.start()
    wait_until(lambda: coordinator.vehicle_stats("drone-crash").get("accepted", 0) > committed_before_kill[-1], 30,
               "recording and upload to resume after the last kill")
    last_seq = drain_and_stop(agent)
    assert last_seq >= committed_before_kill[-1]
    assert_exactly_once(coordinator, "drone-crash", last_seq)
    stats = coordinator.vehicle_stats("drone-crash")
    print(f"{KILLS} kills, {last_seq} records, {stats['duplicates']} duplicates dropped by the coordinator")


def test_a_killed_ingest_process_is_restarted_and_loses_nothing(
        coordinator: CoordinatorProcess, make_agent: Callable[..., AgentProcess]) -> None:
    import psutil

    assert coordinator.process is not None
    parent = psutil.Process(coordinator.process.pid)

    def ingest_child() -> psutil.Process | None:
        for child in parent.children():
            try:
                if child.status() != psutil.STATUS_ZOMBIE and "multiprocessing" in " ".join(child.cmdline()):
                    return child
            except psutil.Error:  # gone, or a killed one not yet reaped
                continue
        return None

    agent = make_agent("drone-ingest", source={"rate_hz": 1000.0})
    agent.start()
    killed = set()
    for _ in range(3):
        wait_until(lambda: coordinator.vehicle_stats("drone-ingest").get("accepted", 0) > 0, 30, "records arriving")
        child = wait_until(lambda: (c := ingest_child()) is not None and c.pid not in killed and c, 30,
                           "a (new) ingest process")
        time.sleep(0.5)
        child.kill()  # mid-commit, with messages received but not yet acknowledged
        killed.add(child.pid)
    wait_until(lambda: coordinator.get("/healthz")["broker_connected"], 60, "the restarted ingest's broker session")
    last_seq = drain_and_stop(agent)
    assert_exactly_once(coordinator, "drone-ingest", last_seq)
    assert coordinator.process.poll() is None, "the coordinator itself kept running"
