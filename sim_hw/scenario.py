"""``fleet-sim scenario FILE``: a seeded scenario run headless on the real stack, faster than real time, and its
report.

A scenario (TOML) names a fleet, a demand, declared events and failures to inject. It runs like the demo: a
coordinator with its embedded broker, simulated vehicles each driven by a real edge agent, orders placed
over REST; but every agent reaches the broker through a relay the scenario can cut (a link outage), and at
their times it injects:

- ``link_outage`` (``vehicle``): every connection of that vehicle dropped, new ones refused, for ``for_s``;
- ``gps_lost`` (``vehicle``): its GPS loses the fix (an autopilot's GPS, or a taxi's receiver);
- ``vehicle_offline`` (``vehicle``): its agent stops (the vehicle powered down) and starts again after
  ``for_s`` with the same outbox;
- ``broker_restart``: every vehicle's connection to the broker drops at once and comes back after ``for_s``.

The seed fixes everything the scenario decides: where vehicles start, when and where every order is placed,
when each failure strikes (the plan, in the report). What the real processes then do with it (timing on a
shared machine) varies a little from run to run, as it would in the field.

The report (``report.json``): orders placed and how they ended, mean and p90 pickup time (from placing to
pickup, in wall-clock and in simulated seconds), utilisation (share of online vehicles serving an order, over
the samples), empty km (to pickups, and repositioning), incentives earned, alerts by kind, telemetry
delivered and lost; a timeline sampled every ``sample_s``; and ``kpis.png``, the timeline plotted with each
failure's window shaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TextIO

import httpx
import msgspec

from coordinator.auth import Role, create_key
from coordinator.orders import OrderState
from coordinator.service import run_coordinator
from coordinator.store import FleetStore, open_store
from edge_agent.agent import EdgeAgent
from edge_agent.config import AgentSettings
from sim_hw.autopilot import SimulatedAutopilot
from sim_hw.city_demand import offset
from sim_hw.demo import KINDS, DemoOptions, default_options, demo_coordinator_settings, start_vehicle
from sim_hw.link_proxy import LinkProxy
from sim_hw.taxi import SimulatedTaxi

Positive = Annotated[float, msgspec.Meta(gt=0)]


class ScenarioError(Exception):
    """A scenario file that cannot run; the message names the file and the key."""


class FailureSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kind: Literal["link_outage", "gps_lost", "vehicle_offline", "broker_restart"]
    at_s: Annotated[float, msgspec.Meta(ge=0)]
    for_s: Positive
    vehicle: str = ""


class EventSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A declared event (a match): extra demand around a place of the city, declared at ``at_s``."""

    at_s: Annotated[float, msgspec.Meta(ge=0)]
    north_m: float
    east_m: float
    extra_orders: Annotated[float, msgspec.Meta(ge=1)]
    duration_s: Positive = 1800.0
    radius_m: Annotated[float, msgspec.Meta(ge=10)] = 300.0


class DemandSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    orders_every_s: Positive = 5.0
    """Mean seconds between orders (each gap drawn around it)."""
    spread_m: Positive = 1200.0
    """Pickups fall within this of the city centre."""


class ScenarioSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    duration_s: Annotated[float, msgspec.Meta(gt=0, le=86_400)]
    """Wall-clock seconds the scenario runs (simulated time is ``speedup`` times more)."""
    fleet: dict[str, Annotated[int, msgspec.Meta(ge=0)]]
    seed: int = 1
    speedup: Annotated[float, msgspec.Meta(gt=0, le=100)] = 8.0
    city: tuple[float, float] = (52.52, 13.405)
    demand: DemandSpec = DemandSpec()
    events: list[EventSpec] = msgspec.field(default_factory=list)
    failures: list[FailureSpec] = msgspec.field(default_factory=list)
    sample_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 2.0

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(kind for kind in KINDS for _ in range(self.fleet.get(kind, 0)))

    @property
    def vehicle_ids(self) -> list[str]:
        return [f"{kind}-{n + 1:02d}" for n, kind in enumerate(self.kinds)]


def load_scenario(path: str | Path) -> ScenarioSpec:
    """Raises ScenarioError naming the file and the key."""
    try:
        raw = tomllib.loads(Path(path).read_text())
        spec = msgspec.convert(raw, ScenarioSpec)
    except OSError as exc:
        raise ScenarioError(f"{path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not TOML: {exc}") from None
    except msgspec.ValidationError as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    unknown = sorted(set(spec.fleet) - set(KINDS))
    if unknown:
        raise ScenarioError(f"{path}: key 'fleet': unknown kinds {unknown}; use {', '.join(KINDS)}")
    if not spec.kinds:
        raise ScenarioError(f"{path}: key 'fleet': the fleet is empty")
    for i, failure in enumerate(spec.failures):
        if failure.kind != "broker_restart" and failure.vehicle not in spec.vehicle_ids:
            raise ScenarioError(f"{path}: key 'failures[{i}].vehicle': {failure.vehicle!r} is not in the fleet "
                                f"({', '.join(spec.vehicle_ids)})")
    return spec


def plan(spec: ScenarioSpec) -> dict[str, Any]:
    """Everything the seed decides: the orders (when, where) and the failures, in time order."""
    rng = random.Random(spec.seed)
    orders = []
    t = rng.expovariate(1 / spec.demand.orders_every_s)
    while t < spec.duration_s * 0.8:  # the last fifth lets the orders placed finish
        s = spec.demand.spread_m
        pickup = offset(spec.city, rng.uniform(-s, s), rng.uniform(-s, s))
        distance, bearing = rng.uniform(400, 1500), rng.uniform(0, 2 * math.pi)
        dropoff = offset(pickup, distance * math.cos(bearing), distance * math.sin(bearing))
        body: dict[str, Any] = {"pickup": {"lat": round(pickup[0], 6), "lon": round(pickup[1], 6)},
                                "dropoff": {"lat": round(dropoff[0], 6), "lon": round(dropoff[1], 6)}}
        if rng.random() < 0.5 and any(k != "taxi" for k in spec.kinds):
            body["payload_kg"] = round(rng.uniform(0.3, 2.0), 1)
        else:
            body.update(passengers=rng.randint(1, 3), vehicle_kinds=["taxi"])
        orders.append({"at_s": round(t, 3), "body": body})
        t += rng.expovariate(1 / spec.demand.orders_every_s)
    return {"seed": spec.seed, "vehicles": spec.vehicle_ids, "orders": orders,
            "failures": [msgspec.to_builtins(f) for f in sorted(spec.failures, key=lambda f: f.at_s)],
            "events": [msgspec.to_builtins(e) for e in spec.events]}


@dataclass
class _Vehicle:
    vid: str
    settings: AgentSettings
    device: SimulatedAutopilot | SimulatedTaxi
    proxy: LinkProxy
    stop: asyncio.Event
    task: asyncio.Task[None] | None = None


class ScenarioRun:
    def __init__(self, spec: ScenarioSpec, workdir: Path, out: TextIO) -> None:
        self.spec = spec
        self.workdir = workdir
        self.out = out
        self.plan = plan(spec)
        self.options: DemoOptions = default_options(
            mix=spec.kinds, city=spec.city, speedup=spec.speedup, workdir=workdir, api_port=0, mqtt_port=0,
            seed=spec.seed, orders_every_s=0.0)
        self.vehicles: dict[str, _Vehicle] = {}
        self.timeline: list[dict[str, Any]] = []
        self.applied: list[dict[str, Any]] = []
        self.t0 = 0.0

    def _log(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f} s] {text}", file=self.out, flush=True)

    async def run(self) -> dict[str, Any]:
        await asyncio.to_thread(self.workdir.mkdir, parents=True, exist_ok=True)
        settings = demo_coordinator_settings(self.options)
        store = open_store(settings.store)
        desk = create_key(store, Role.OPERATOR, "scenario")
        started, coordinator_stop, done = asyncio.Event(), asyncio.Event(), asyncio.Event()
        base = f"http://127.0.0.1:{self.options.api_port}"
        try:
            async with contextlib.AsyncExitStack() as stack, asyncio.TaskGroup() as tg:
                tg.create_task(run_coordinator(settings, coordinator_stop, started), name="coordinator")
                await started.wait()
                rng = random.Random(self.spec.seed)
                for n, vid in enumerate(self.spec.vehicle_ids):
                    proxy = await stack.enter_async_context(LinkProxy("127.0.0.1", self.options.mqtt_port))
                    agent_settings, device = await start_vehicle(self.options, n, rng, stack, mqtt_url=proxy.url)
                    vehicle = _Vehicle(vid, agent_settings, device, proxy, asyncio.Event())
                    self.vehicles[vid] = vehicle
                    self._start_agent(tg, vehicle)
                    await asyncio.sleep(0.1)
                self.t0 = time.monotonic()
                self._log(f"scenario {self.spec.name!r} (seed {self.spec.seed}): {len(self.vehicles)} vehicles, "
                          f"{len(self.plan['orders'])} orders and {len(self.plan['failures'])} failures planned over "
                          f"{self.spec.duration_s:g} s at x{self.spec.speedup:g}")
                async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {desk}"},
                                             timeout=10) as api:
                    runners = [tg.create_task(self._orders(api), name="orders"),
                               tg.create_task(self._events(api), name="events"),
                               *(tg.create_task(self._failure(tg, f), name=f"failure-{i}")
                                 for i, f in enumerate(self.spec.failures)),
                               tg.create_task(self._sample(store, done), name="sampler")]
                    await asyncio.sleep(self.spec.duration_s)
                    done.set()
                    await asyncio.gather(*runners)
                for vehicle in self.vehicles.values():
                    vehicle.proxy.restore()
                    vehicle.stop.set()
                await asyncio.gather(*(v.task for v in self.vehicles.values() if v.task is not None))
                coordinator_stop.set()
            return self._report(store)
        finally:
            store.close()

    def _start_agent(self, tg: asyncio.TaskGroup, vehicle: _Vehicle) -> None:
        vehicle.stop = asyncio.Event()

        async def run() -> None:
            async with EdgeAgent(vehicle.settings) as agent:
                await agent.run(vehicle.stop)

        vehicle.task = tg.create_task(run(), name=f"agent-{vehicle.vid}")

    async def _until(self, at_s: float) -> None:
        await asyncio.sleep(max(0.0, self.t0 + at_s - time.monotonic()))

    async def _orders(self, api: httpx.AsyncClient) -> None:
        for n, order in enumerate(self.plan["orders"]):
            await self._until(order["at_s"])
            try:
                placed = await api.post("/v1/orders", json=order["body"],
                                        headers={"Idempotency-Key": f"scenario-{self.spec.seed}-{n}"})
            except httpx.HTTPError as exc:
                self._log(f"order {n} not placed: {exc}")
                continue
            if placed.status_code >= 400:
                self._log(f"order {n} refused: {placed.text}")

    async def _events(self, api: httpx.AsyncClient) -> None:
        for event in self.spec.events:
            await self._until(event.at_s)
            lat, lon = offset(self.spec.city, event.north_m, event.east_m)
            now = time.time()
            await api.post("/v1/events", json={"name": "scenario event", "lat": lat, "lon": lon,
                                               "radius_m": event.radius_m, "start": now,
                                               "end": now + event.duration_s, "extra_orders": event.extra_orders})

    async def _failure(self, tg: asyncio.TaskGroup, failure: FailureSpec) -> None:
        await self._until(failure.at_s)
        targets = list(self.vehicles.values()) if failure.kind == "broker_restart" else [
            self.vehicles[failure.vehicle]]
        self._log(f"inject {failure.kind}{f' on {failure.vehicle}' if failure.vehicle else ''} for {failure.for_s:g} s")
        started = time.monotonic() - self.t0
        for v in targets:
            if failure.kind in ("link_outage", "broker_restart"):
                v.proxy.cut()
            elif failure.kind == "gps_lost":
                _set_fix(v.device, False)
            else:
                v.stop.set()
        await asyncio.sleep(failure.for_s)
        for v in targets:
            if failure.kind in ("link_outage", "broker_restart"):
                v.proxy.restore()
            elif failure.kind == "gps_lost":
                _set_fix(v.device, True)
            else:
                if v.task is not None:
                    await v.task
                self._start_agent(tg, v)
        self._log(f"{failure.kind}{f' on {failure.vehicle}' if failure.vehicle else ''} over")
        self.applied.append({**msgspec.to_builtins(failure), "from_s": round(started, 2),
                             "to_s": round(time.monotonic() - self.t0, 2)})

    async def _sample(self, store: FleetStore, done: asyncio.Event) -> None:
        while not done.is_set():
            row = await asyncio.to_thread(_sample, store, time.monotonic() - self.t0)
            self.timeline.append(row)
            self._log(f"online {row['online']}/{len(self.vehicles)}, open orders {row['open_orders']}, delivered "
                      f"{row['delivered']}, records {row['records']}, alerts {row['alerts']}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.spec.sample_s):
                    await done.wait()

    def _report(self, store: FleetStore) -> dict[str, Any]:
        orders = store.orders(limit=1_000_000)
        states = Counter(o.state.value for o in orders)
        pickups = sorted(next(e.at for e in o.history if e.state is OrderState.PICKED_UP) - o.created_at
                         for o in orders if any(e.state is OrderState.PICKED_UP for e in o.history))
        to_pickup_m = sum(o.assigned_distance_m or 0.0 for o in orders
                          if any(e.state is OrderState.PICKED_UP for e in o.history))
        moves = store.moves(limit=1 << 30)
        stats = store.stats()
        alerts = store.alerts(vehicle_id=None, kind=None, since=None, limit=100_000)
        utilisation = [r["serving"] / r["online"] for r in self.timeline if r["online"]]

        def p90(values: list[float]) -> float | None:
            return round(values[int(0.9 * (len(values) - 1))], 1) if values else None

        mean = round(sum(pickups) / len(pickups), 1) if pickups else None
        return {
            "scenario": self.spec.name, "seed": self.spec.seed, "duration_s": self.spec.duration_s,
            "speedup": self.spec.speedup,
            "kpis": {
                "orders_placed": len(orders), "orders_by_state": dict(states),
                "orders_served": states[OrderState.DELIVERED.value],
                "served_share": round(states[OrderState.DELIVERED.value] / len(orders), 4) if orders else None,
                "mean_pickup_s": mean, "p90_pickup_s": p90(pickups),
                "mean_pickup_sim_s": None if mean is None else round(mean * self.spec.speedup, 1),
                "utilisation": round(sum(utilisation) / len(utilisation), 4) if utilisation else None,
                "empty_km": round((to_pickup_m + sum(m.empty_m for m in moves)) / 1000, 3),
                "incentives_earned": round(sum(m.earned for m in moves), 2),
                "alerts": len(alerts), "alerts_by_kind": dict(Counter(a["kind"] for a in alerts)),
                "telemetry_delivered": sum(s["accepted"] for s in stats.values()),
                "telemetry_lost": sum(s["lost_at_edge"] + s["gaps"] for s in stats.values()),
                "telemetry_evicted_at_edge": sum(s["evicted_at_edge"] for s in stats.values()),
            },
            "failures_applied": self.applied, "plan": self.plan, "timeline": self.timeline}


def _set_fix(device: SimulatedAutopilot | SimulatedTaxi, fix: bool) -> None:
    if isinstance(device, SimulatedTaxi):
        device.gps.fix = fix
    else:
        device.failures.gps_lost = not fix


def _sample(store: FleetStore, t: float) -> dict[str, Any]:
    stats = store.stats()
    open_orders = store.open_orders()
    return {"t": round(t, 2), "online": store.online_count(), "open_orders": len(open_orders),
            "serving": sum(1 for o in open_orders if o.state in (OrderState.ACCEPTED, OrderState.PICKED_UP)),
            "delivered": len(store.orders(states=[OrderState.DELIVERED], limit=1_000_000)),
            "records": sum(s["accepted"] for s in stats.values()),
            "alerts": len(store.alerts(vehicle_id=None, kind=None, since=None, limit=100_000))}


def plot(report: dict[str, Any], path: Path) -> None:
    """The timeline as a PNG, each failure's window shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["timeline"]
    t = [r["t"] for r in rows]
    fig, axes = plt.subplots(4, 1, figsize=(9, 9), sharex=True)
    series = [("vehicles online", ["online", "serving"]), ("orders", ["open_orders", "delivered"]),
              ("telemetry records received", ["records"]), ("alerts", ["alerts"])]
    for ax, (title, keys) in zip(axes, series, strict=True):
        for key in keys:
            ax.plot(t, [r[key] for r in rows], label=key.replace("_", " "))
        for failure in report["failures_applied"]:
            ax.axvspan(failure["from_s"], failure["to_s"], color="tab:red", alpha=0.12)
        ax.set_title(title, fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel("seconds (wall clock)")
    fig.suptitle(f"{report['scenario']} (seed {report['seed']}, x{report['speedup']:g}); shaded: failures injected")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    plot(report, out_dir / "kpis.png")


async def run_scenario(spec: ScenarioSpec, out_dir: Path, workdir: Path, out: TextIO) -> dict[str, Any]:
    """Run ``spec`` and write ``report.json`` and ``kpis.png`` into ``out_dir``."""
    report = await ScenarioRun(spec, workdir, out).run()
    await asyncio.to_thread(write_report, report, out_dir)
    k = report["kpis"]
    print(f"scenario {spec.name!r} done: {k['orders_served']}/{k['orders_placed']} orders served, mean pickup "
          f"{k['mean_pickup_s']} s, telemetry {k['telemetry_delivered']} delivered, {k['telemetry_lost']} lost, "
          f"{k['alerts']} alerts; report {out_dir / 'report.json'}, plot {out_dir / 'kpis.png'}", file=out, flush=True)
    return report
