"""With no broker configured, one command brings its own: agents connect and data flows exactly once."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.harness import AgentProcess, CoordinatorProcess, free_port, wait_until


def test_coordinator_alone_serves_agents_through_its_embedded_broker(tmp_path: Path) -> None:
    mqtt_port = free_port()
    workdir = tmp_path / "coordinator"
    workdir.mkdir()
    coordinator = CoordinatorProcess(workdir, broker_url="",
                                     env={"FLEETEDGE_COORDINATOR__BROKER__EMBEDDED_PORT": str(mqtt_port)})
    coordinator.start()
    agents = []
    try:
        for n in range(3):
            agent_dir = tmp_path / f"agent-{n}"
            agent_dir.mkdir()
            agent = AgentProcess(agent_dir, f"taxi-{n}", f"mqtt://127.0.0.1:{mqtt_port}",
                                 {"vehicle": {"kind": "taxi"}, "source": {"kind": "simulated", "rate_hz": 50.0}})
            agent.start()
            agents.append(agent)
        wait_until(lambda: coordinator.get("/v1/vehicles")["count"] == 3 and
                   all(v["online"] and v["last_seq"] > 50 for v in coordinator.get("/v1/vehicles")["vehicles"]),
                   30, "three agents online with data through the embedded broker")
        for agent in agents:
            assert agent.stop() == 0
        for agent in agents:
            counts = agent.outbox_counts()
            delivered = counts["next_seq"] - 1 - counts["records"]
            wait_until(lambda a=agent, n=delivered: coordinator.vehicle_stats(a.vehicle_id).get("accepted", 0) >= n,
                       20, f"{agent.vehicle_id}'s {delivered} delivered records")
            stats = coordinator.vehicle_stats(agent.vehicle_id)
            assert stats["gaps"] == 0 and stats["rejected"] == 0
            assert coordinator.received_seqs(agent.vehicle_id) == list(range(1, stats["max_seq"] + 1))
        assert httpx.get(f"{coordinator.base_url}/v1/vehicles").status_code == 401, "REST needs a key"
        # The installed command runs on libuv's loop (uvicorn's HTTP parser is pinned in code): on asyncio's own
        # loop the REST API's tail under load doubled (bench/api.py).
        assert "(event loop: uvloop)" in (workdir / "coordinator.log").read_text()
    finally:
        for agent in agents:
            if agent.process is not None:
                agent.kill()
        coordinator.stop()
