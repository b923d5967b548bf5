"""``fleet-sim demo``: a coordinator with its embedded broker and a small simulated fleet, each vehicle run
by a real edge agent with its own outbox and MQTT connection, all in one process, and a stream of orders
that dispatch assigns and the vehicles carry out.

Copters and rovers are simulated ArduPilot autopilots speaking MAVLink over UDP (their agents fly the jobs
as missions); taxis are a simulated NMEA GPS on a pseudo-terminal and a driver terminal on a local socket,
with a scripted driver who accepts most jobs and drives them. Orders are placed over the REST API with an
operator key, as a dispatcher's desk would.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import random
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import httpx
import msgspec

from coordinator.auth import Role, create_key
from coordinator.config import CoordinatorSettings
from coordinator.orders import OrderState
from coordinator.service import run_coordinator
from coordinator.store import open_store
from edge_agent.agent import EdgeAgent
from edge_agent.config import AgentSettings
from sim_hw.autopilot import SimulatedAutopilot
from sim_hw.city_demand import offset
from sim_hw.driver_terminal import DriverBehaviour
from sim_hw.mavlink_server import AutopilotServer
from sim_hw.taxi import SimulatedTaxi

KINDS = ("copter", "taxi", "rover")
CITY = (52.52, 13.405)


@dataclass(frozen=True, slots=True)
class DemoOptions:
    vehicles: int
    rate_hz: float
    duration_s: float | None
    workdir: Path
    api_port: int
    mqtt_port: int
    seed: int
    orders_every_s: float = 5.0
    speedup: float = 4.0
    mix: tuple[str, ...] = ()
    """The kind of each vehicle, in order; empty: copters, taxis and rovers in turn."""
    city: tuple[float, float] = CITY
    broker_url: str = ""
    """An external MQTT broker (Mosquitto) for the coordinator and every agent; empty: the embedded one."""
    redis_url: str = ""
    """Keep the coordinator's state in this Redis instead of the embedded SQLite file."""

    @property
    def kinds(self) -> list[str]:
        return list(self.mix) if self.mix else [KINDS[n % len(KINDS)] for n in range(self.vehicles)]

    @property
    def mqtt_url(self) -> str:
        return self.broker_url or f"mqtt://127.0.0.1:{self.mqtt_port}"


def parse_mix(text: str) -> tuple[str, ...]:
    """``copter=10,taxi=20`` -> the kind of each vehicle. Raises ValueError saying what is wrong."""
    kinds: list[str] = []
    for part in text.split(","):
        kind, _, count = part.strip().partition("=")
        if kind not in KINDS or not count.isdigit():
            raise ValueError(f"--mix {text!r}: use KIND=COUNT,... with kinds {', '.join(KINDS)}")
        kinds += [kind] * int(count)
    if not kinds:
        raise ValueError(f"--mix {text!r}: the fleet is empty")
    return tuple(kinds)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _vehicle(options: DemoOptions, n: int, rng: random.Random,
                   stack: contextlib.AsyncExitStack) -> AgentSettings:
    return (await start_vehicle(options, n, rng, stack))[0]


async def start_vehicle(options: DemoOptions, n: int, rng: random.Random, stack: contextlib.AsyncExitStack,
                        mqtt_url: str | None = None) -> tuple[AgentSettings, SimulatedAutopilot | SimulatedTaxi]:
    """Start the simulated devices of vehicle ``n``: its agent's settings, pointing at them (and at
    ``mqtt_url``, default the demo's broker), and the device (to inject failures into)."""
    kind = options.kinds[n]
    vid = f"{kind}-{n + 1:02d}"
    start = offset(options.city, rng.uniform(-1500, 1500), rng.uniform(-1500, 1500))
    devices: dict[str, object]
    device: SimulatedAutopilot | SimulatedTaxi
    if kind == "taxi":
        taxi = await stack.enter_async_context(SimulatedTaxi(
            start=start, behaviour=DriverBehaviour(time_scale=options.speedup), seed=options.seed * 1000 + n,
            speed_m_s=10.0 * options.speedup, boarding_s=5.0 / options.speedup, gps_rate_hz=options.rate_hz))
        device = taxi
        devices = {"gps": {"device": f"serial://{taxi.gps_path}?baud=9600"},
                   "terminal": {"device": f"tcp://{taxi.terminal_address}"}}
    else:
        port = _free_port()
        autopilot = SimulatedAutopilot(kind=kind, home=(*start, 34.0), time_scale=options.speedup,
                                       seed=options.seed * 1000 + n)
        await stack.enter_async_context(AutopilotServer(autopilot, f"udpout:127.0.0.1:{port}"))
        device = autopilot
        devices = {"autopilot": {"device": f"udpin://127.0.0.1:{port}",
                                 "stream_rates_hz": {"GLOBAL_POSITION_INT": options.rate_hz}},
                   "commands": {"job_hold_s": 5.0 / options.speedup}}
    return msgspec.convert({
        "vehicle": {"id": vid, "kind": kind},
        "outbox": {"path": str(options.workdir / "agents" / f"{vid}.db"), "cap_bytes": 64 * 1024 * 1024,
                   "durability": "normal"},
        "mqtt": {"url": mqtt_url or options.mqtt_url, "reconnect_min_s": 0.2, "reconnect_max_s": 2.0},
        "source": {"kind": "none"},
        **devices,
    }, AgentSettings), device


async def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> None:
    """Run the demo until Ctrl-C, SIGTERM or ``duration_s``."""
    options.workdir.mkdir(parents=True, exist_ok=True)
    settings = demo_coordinator_settings(options)
    key_store = open_store(settings.store)
    key = create_key(key_store, Role.VIEWER, "demo")
    desk = create_key(key_store, Role.OPERATOR, "demo dispatch desk")
    key_store.close()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    started = asyncio.Event()
    # The coordinator stops after the agents, so their last records and offline statuses still land.
    coordinator_stop = asyncio.Event()
    base = f"http://127.0.0.1:{options.api_port}"
    async with contextlib.AsyncExitStack() as devices, asyncio.TaskGroup() as tg:
        tg.create_task(_coordinator(settings, coordinator_stop, started, stop), name="coordinator")
        await started.wait()
        where = f"Redis {options.redis_url}" if options.redis_url else f"store {options.workdir / 'coordinator.db'}"
        print(f"FleetEdge demo: coordinator at {base} (OpenAPI at {base}/docs), MQTT on "
              f"{options.broker_url or f'127.0.0.1:{options.mqtt_port}'}, {where}", file=out)
        print(f"dashboard: {base}/dashboard/#key={key}", file=out)
        print(f"viewer key: {key} (operator key, to send vehicles from the dashboard: {desk})", file=out)
        print(f"try: curl -H 'Authorization: Bearer {key}' {base}/v1/orders", file=out)
        rng = random.Random(options.seed)
        agents = [await _vehicle(options, n, rng, devices) for n in range(len(options.kinds))]
        agent_tasks = []
        for a in agents:
            agent_tasks.append(tg.create_task(_run_agent(a, stop), name=f"agent-{a.vehicle.id}"))
            # Vehicles power up one after another; amqtt 0.12 also mishandles simultaneous connects.
            await asyncio.sleep(0.1)
        tg.create_task(_stop_coordinator_after(agent_tasks, coordinator_stop), name="coordinator-stop")
        print(f"started {len(agents)} simulated vehicles: {', '.join(a.vehicle.id for a in agents)}", file=out)
        tg.create_task(_report(options, stop, out, settings), name="progress")
        if options.orders_every_s > 0:
            tg.create_task(_place_orders(options, base, desk, stop, rng), name="orders")
        if options.duration_s is not None:
            tg.create_task(_stop_after(options.duration_s, stop), name="duration")
        else:
            print("running until Ctrl-C", file=out)
        out.flush()
    print("demo stopped cleanly", file=out)


async def _coordinator(settings: CoordinatorSettings, coordinator_stop: asyncio.Event, started: asyncio.Event,
                       stop: asyncio.Event) -> None:
    try:
        await run_coordinator(settings, coordinator_stop, started)
    finally:
        # The coordinator also stops on its own (its REST server answers SIGINT/SIGTERM): the fleet stops too.
        stop.set()


async def _run_agent(settings: AgentSettings, stop: asyncio.Event) -> None:
    async with EdgeAgent(settings) as agent:
        await agent.run(stop)


async def _stop_coordinator_after(agent_tasks: list[asyncio.Task[None]], coordinator_stop: asyncio.Event) -> None:
    await asyncio.wait(agent_tasks)
    await asyncio.sleep(0.5)
    coordinator_stop.set()


async def _stop_after(seconds: float, stop: asyncio.Event) -> None:
    # Ends at Ctrl-C too: a sleeping timer would keep the demo from ever finishing.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
    stop.set()


async def _place_orders(options: DemoOptions, base: str, key: str, stop: asyncio.Event,
                        rng: random.Random) -> None:
    """An order every ``orders_every_s``: parcels any vehicle may carry, and rides for taxis."""
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=10) as api:
        n = 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(options.orders_every_s):
                    await stop.wait()
            if stop.is_set():
                return
            n += 1
            pickup = offset(options.city, rng.uniform(-1200, 1200), rng.uniform(-1200, 1200))
            distance, bearing = rng.uniform(400, 1500), rng.uniform(0, 2 * math.pi)
            dropoff = offset(pickup, distance * math.cos(bearing), distance * math.sin(bearing))
            body: dict[str, object] = {"pickup": {"lat": pickup[0], "lon": pickup[1]},
                                       "dropoff": {"lat": dropoff[0], "lon": dropoff[1]}}
            if n % 2:
                body.update(payload_kg=round(rng.uniform(0.3, 2.0), 1))
            else:
                body.update(passengers=rng.randint(1, 3), vehicle_kinds=["taxi"])
            try:
                placed = await api.post("/v1/orders", json=body, headers={"Idempotency-Key": f"demo-{n}"})
            except httpx.HTTPError as exc:
                logging.getLogger(__name__).warning("placing demo order %d failed: %s", n, exc)
                continue
            if placed.status_code >= 400:
                logging.getLogger(__name__).warning("demo order %d refused: %s", n, placed.text)


async def _report(options: DemoOptions, stop: asyncio.Event, out: TextIO, settings: CoordinatorSettings) -> None:
    store = open_store(settings.store)
    started = time.monotonic()
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await stop.wait()
            stats = await asyncio.to_thread(store.stats)
            online = await asyncio.to_thread(store.online_count)
            orders = await asyncio.to_thread(store.orders, limit=100_000)
            accepted = sum(s["accepted"] for s in stats.values())
            gaps = sum(s["gaps"] for s in stats.values())
            states = collections.Counter(o.state for o in orders)
            moving = states[OrderState.ASSIGNED] + states[OrderState.ACCEPTED] + states[OrderState.PICKED_UP]
            print(f"[{time.monotonic() - started:6.1f} s] vehicles online {online}/{len(options.kinds)}, "
                  f"records received {accepted}, duplicates dropped {sum(s['duplicates'] for s in stats.values())}, "
                  f"gaps {gaps}; orders placed {len(orders)}, waiting {states[OrderState.PENDING]}, "
                  f"on the way {moving}, delivered {states[OrderState.DELIVERED]}", file=out)
            out.flush()
    finally:
        store.close()


def default_options(**overrides: object) -> DemoOptions:
    values: dict[str, object] = {"vehicles": 6, "rate_hz": 10.0, "duration_s": None,
                                 "workdir": Path("fleetedge-demo"), "api_port": 8080, "mqtt_port": 0, "seed": 1,
                                 "orders_every_s": 5.0, "speedup": 4.0}
    if overrides.get("mix"):
        overrides["vehicles"] = len(overrides["mix"])  # type: ignore[arg-type]
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values["api_port"] == 0:
        values["api_port"] = _free_port()
    if values["mqtt_port"] == 0:
        values["mqtt_port"] = _free_port()
    return DemoOptions(**values)  # type: ignore[arg-type]


def demo_coordinator_settings(options: DemoOptions) -> CoordinatorSettings:
    return msgspec.convert({
        "broker": {"url": options.broker_url} if options.broker_url else {"embedded_port": options.mqtt_port},
        "store": {"path": str(options.workdir / "coordinator.db"), "redis_url": options.redis_url},
        "api": {"port": options.api_port},
        "dispatch": {"accept_timeout_s": 30.0},
        "log_level": "warning",
    }, CoordinatorSettings)


def configure_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
