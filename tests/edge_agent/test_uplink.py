"""The uplink against a real Mosquitto: priority after an outage, PUBACK-gated deletion, status and Will."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.agent import EdgeAgent
from edge_agent.bandwidth import BandwidthCap
from edge_agent.config import AgentSettings
from protocols import Channel, RecordClass, TelemetryBatch, VehicleStatus, decode, topic_for
from tests.harness import AgentProcess, CoordinatorProcess, Mosquitto, wait_until


def settings_for(tmp_path: Path, broker: Mosquitto, **uplink: object) -> AgentSettings:
    return msgspec.convert({
        "vehicle": {"id": "drone-up"},
        "outbox": {"path": str(tmp_path / "outbox.db"), "flush_interval_ms": 10},
        "mqtt": {"url": broker.url, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
        "uplink": {"batch_records": 100, **uplink},
        "source": {"kind": "none"},
        # Only the records a test appends: no on-board models reporting what they run.
        "models": {"enabled": []},
    }, AgentSettings)


class Recorder:
    """A plain paho subscriber that notes every message on the vehicle's namespace, in arrival order."""

    def __init__(self, broker: Mosquitto) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="recorder")
        self.client.on_message = lambda c, u, m: self._note(m.topic, bytes(m.payload))
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe("fleetedge/v1/drone-up/#", qos=1)
        self.client.loop_start()

    def _note(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self.messages.append((topic, payload))

    def records(self) -> list[tuple[str, int]]:
        with self._lock:
            out = []
            for topic, payload in self.messages:
                if topic.endswith("/up/telemetry") or topic.endswith("/up/events"):
                    out += [(topic.rsplit("/", 1)[1], r.seq) for r in decode(payload, TelemetryBatch).records]
            return out

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def test_after_an_outage_events_go_first_then_the_backlog(tmp_path: Path, mosquitto: Mosquitto) -> None:
    mosquitto.stop()
    async with EdgeAgent(settings_for(tmp_path, mosquitto)) as agent:
        assert agent.outbox is not None
        for i in range(2000):
            agent.outbox.append("position", {"i": i})
        for i in range(5):
            agent.outbox.append("mode.changed", {"i": i}, cls=RecordClass.EVENT)
        agent.outbox.append("battery.low", {"pct": 19.0}, cls=RecordClass.ALERT)
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(agent.run(stop))
            await asyncio.sleep(0.5)  # offline: the agent retries with backoff
            mosquitto.start()
            recorder = await asyncio.to_thread(Recorder, mosquitto)
            try:
                async with asyncio.timeout(30):
                    while len(recorder.records()) < 2006:
                        await asyncio.sleep(0.05)
                    while agent.outbox.stats().records:
                        await asyncio.sleep(0.05)
            finally:
                stop.set()
                recorder.close()
    arrived = recorder.records()
    assert sorted(seq for _, seq in arrived) == list(range(1, 2007))
    firsts = [channel for channel, _ in arrived[:6]]
    assert firsts == ["events"] * 6, f"alerts and events must lead after an outage, got {firsts}"
    assert arrived[0][1] == 2006, "the alert goes before the events"


async def test_records_stay_in_the_outbox_until_the_broker_acknowledges(tmp_path: Path, mosquitto: Mosquitto) -> None:
    mosquitto.stop()
    async with EdgeAgent(settings_for(tmp_path, mosquitto)) as agent:
        assert agent.outbox is not None
        for i in range(300):
            agent.outbox.append("position", {"i": i})
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(agent.run(stop))
            await asyncio.sleep(1.0)
            assert agent.outbox.stats().records == 300, "no broker, no PUBACK: nothing may leave"
            mosquitto.start()
            async with asyncio.timeout(20):
                while agent.outbox.stats().records:
                    await asyncio.sleep(0.05)
            assert agent.outbox.stats().delivered == 300
            stop.set()


def test_retained_status_is_online_then_the_will_says_offline_on_kill(
        coordinator: CoordinatorProcess, make_agent: Callable[..., AgentProcess]) -> None:
    agent = make_agent("drone-will")
    agent.start()
    wait_until(lambda: coordinator.get("/v1/vehicles").get("count") and
               coordinator.get("/v1/vehicles/drone-will")["online"] is True, 20, "online status")
    agent.kill()
    wait_until(lambda: coordinator.get("/v1/vehicles/drone-will")["online"] is False, 20,
               "the Last Will to mark the vehicle offline")
    vehicle = coordinator.get("/v1/vehicles/drone-will")
    assert vehicle["online"] is False and vehicle["agent_version"], "the Will is a full status message"


def test_retained_status_reaches_a_late_subscriber(mosquitto: Mosquitto, make_agent: Callable[..., AgentProcess]) -> None:
    agent = make_agent("drone-up")
    agent.start()
    time.sleep(1.5)
    recorder = Recorder(mosquitto)
    try:
        status_topic = topic_for("drone-up", Channel.STATUS)
        wait_until(lambda: any(t == status_topic for t, _ in recorder.messages), 10, "the retained status")
        payload = next(p for t, p in recorder.messages if t == status_topic)
        assert decode(payload, VehicleStatus).online is True
    finally:
        recorder.close()


async def test_bandwidth_cap_spaces_uploads() -> None:
    cap = BandwidthCap(rate=200_000, burst=50_000)
    started = time.monotonic()
    for _ in range(5):
        await cap.take(50_000)
    # 250 kB at 200 kB/s with a 50 kB burst cannot take less than a second.
    assert time.monotonic() - started >= 0.95
    unlimited = BandwidthCap(rate=0, burst=1)
    started = time.monotonic()
    with contextlib.suppress(Exception):
        for _ in range(1000):
            await unlimited.take(10**9)
    assert time.monotonic() - started < 1.0
