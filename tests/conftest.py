"""Fixtures that start real services: Mosquitto on a free loopback port, the coordinator and agents as
real processes with their own SQLite files (see ``tests/harness.py``)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.embedded_store import EmbeddedStore
from coordinator.redis_store import RedisStore
from coordinator.store import FleetStore

from tests.harness import AgentProcess, CoordinatorProcess, Mosquitto, RedisServer


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.fail("mosquitto is not installed: apt-get install mosquitto (the .ci/run script does)")
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    broker = Mosquitto(workdir)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def coordinator(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[CoordinatorProcess]:
    workdir = tmp_path / "coordinator"
    workdir.mkdir()
    proc = CoordinatorProcess(workdir, mosquitto.url)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def make_agent(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[Callable[..., AgentProcess]]:
    agents: list[AgentProcess] = []

    def make(vehicle_id: str, **settings: dict[str, Any]) -> AgentProcess:
        workdir = tmp_path / f"agent-{vehicle_id}"
        workdir.mkdir()
        agent = AgentProcess(workdir, vehicle_id, mosquitto.url, settings)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        if agent.process is not None:
            agent.kill()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None and not Path("/usr/bin/redis-server").exists():
        pytest.fail("redis-server is not installed: apt-get install redis-server (the .ci/run script does)")
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisServer(workdir)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["embedded", "redis"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., FleetStore]]:
    """Opens the store under test, again and again on the same state (a coordinator restarting)."""
    opened: list[FleetStore] = []

    def open_one(h3_resolution: int = 8) -> FleetStore:
        store: FleetStore
        if request.param == "embedded":
            store = EmbeddedStore(tmp_path / "coordinator.db", h3_resolution=h3_resolution)
        else:
            server: RedisServer = request.getfixturevalue("redis_server")
            store = RedisStore(server.url, h3_resolution=h3_resolution)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def store(store_factory: Callable[..., FleetStore]) -> FleetStore:
    return store_factory()
