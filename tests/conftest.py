"""Fixtures that start real services: Mosquitto on a free loopback port, the coordinator and agents as
real processes with their own SQLite files (see ``tests/harness.py``)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import AgentProcess, CoordinatorProcess, Mosquitto


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
