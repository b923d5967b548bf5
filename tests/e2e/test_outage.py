"""A broker outage while the agent keeps recording: afterwards the coordinator has every record once."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.harness import AgentProcess, CoordinatorProcess, Mosquitto, wait_until


def drain_and_stop(agent: AgentProcess) -> int:
    """Stop recording cleanly, then run without a source until the outbox is empty; returns the last seq."""
    assert agent.stop() == 0
    agent.settings["source"] = {"kind": "none"}
    # Nothing may add records once the outbox is empty: no on-board models reporting in this run.
    agent.settings["models"] = {"enabled": []}
    agent.start()
    wait_until(lambda: agent.outbox_counts()["records"] == 0, 60, "the outbox to drain")
    assert agent.stop() == 0
    return agent.outbox_counts()["next_seq"] - 1


def assert_exactly_once(coordinator: CoordinatorProcess, vehicle_id: str, last_seq: int) -> None:
    stats = wait_until(lambda: (s := coordinator.vehicle_stats(vehicle_id)) and s["accepted"] >= last_seq and s,
                       30, f"{last_seq} records of {vehicle_id} at the coordinator")
    assert coordinator.received_seqs(vehicle_id) == list(range(1, last_seq + 1)), "every record, each once"
    assert stats["accepted"] == last_seq and stats["max_seq"] == last_seq
    assert stats["gaps"] == 0 and stats["rejected"] == 0


def test_broker_outage_loses_nothing_and_counts_nothing_twice(
        mosquitto: Mosquitto, coordinator: CoordinatorProcess, make_agent: Callable[..., AgentProcess]) -> None:
    agent = make_agent("drone-outage")
    agent.start()
    wait_until(lambda: coordinator.vehicle_stats("drone-outage").get("accepted", 0) > 100, 20, "first records")

    mosquitto.stop()
    time.sleep(4)  # the agent keeps recording into its outbox
    during = agent.outbox_counts()
    assert during["records"] > 400, "records pile up in the outbox while the broker is down"
    mosquitto.start()
    wait_until(lambda: coordinator.vehicle_stats("drone-outage").get("accepted", 0) > during["next_seq"], 30,
               "the backlog to reach the coordinator")

    last_seq = drain_and_stop(agent)
    assert_exactly_once(coordinator, "drone-outage", last_seq)
    vehicle = coordinator.get("/v1/vehicles/drone-outage")
    assert vehicle["online"] is False, "a cleanly stopped agent says offline"
    assert vehicle["latest"]["position"]["seq"] <= last_seq
