"""REST latency under load, for both stores: 10,000 live vehicles, 10,000 telemetry records/s being ingested.

For each store (embedded SQLite, then Redis) a real coordinator process runs against Mosquitto (and a real
redis-server configured by ``packaging/docker/redis.conf``, as shipped). A feeder process registers 10,000
vehicles spread over a 20 x 20 km city and then publishes 10,000 records/s (2,000 QoS 1 batches of 5 records:
positions that move, battery) for the whole run. A separate load process then sends requests open-loop at a
fixed rate over keep-alive connections, timing each from its scheduled start (so a slow server is not hidden
by a waiting client). Everything shares this machine's cores; the feeder, which stands in for remote
vehicles, runs at a lower priority (nice 10):

- ``healthz``: ``GET /healthz``, the framework's floor with no store behind it (the same-run baseline);
- ``detail``: ``GET /v1/vehicles/{id}`` for random vehicles;
- ``radius``: ``GET /v1/vehicles?near=lat,lng&radius_m=500`` around random points in the city.

Targets: p99 < 20 ms (detail) and < 30 ms (radius). Last line: {"detail_p99_ms", "radius_p99_ms" (worst of
the two stores), "embedded": {...}, "redis": {...}}.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from protocols import Channel, TelemetryBatch, TelemetryRecord, VehicleStatus, encode, topic_for
from tests.harness import ROOT, CoordinatorProcess, Mosquitto, RedisServer, _env, wait_until

CITY = (52.52, 13.405)
CITY_HALF_M = 10_000.0


def vehicle_id(i: int) -> str:
    return f"veh-{i:05d}"


def city_point(rng: random.Random) -> tuple[float, float]:
    north, east = rng.uniform(-CITY_HALF_M, CITY_HALF_M), rng.uniform(-CITY_HALF_M, CITY_HALF_M)
    return (CITY[0] + math.degrees(north / 6_371_000),
            CITY[1] + math.degrees(east / (6_371_000 * math.cos(math.radians(CITY[0])))))


# -- feeder process -----------------------------------------------------------------------------------


def feed(port: int, vehicles: int, records_per_s: int, batch: int, duration_s: float) -> None:
    """Register every vehicle, then publish ``records_per_s`` in batches of ``batch`` until ``duration_s``."""
    # The feeder stands in for 10,000 remote vehicles; on this one machine it must not outrank the
    # coordinator it feeds (the load process, which measures, keeps its normal priority).
    os.nice(10)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-feeder", clean_session=True)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    rng = random.Random(7)
    positions = [city_point(rng) for _ in range(vehicles)]
    seqs = [0] * vehicles
    now = time.time()
    for i in range(vehicles):
        kind = ("copter", "rover", "taxi")[i % 3]
        client.publish(topic_for(vehicle_id(i), Channel.STATUS),
                       encode(VehicleStatus(vehicle_id=vehicle_id(i), online=True, ts=now, kind=kind)), qos=1)
        if i % 500 == 499:
            time.sleep(0.05)
    print(f"feeder: {vehicles} vehicles registered", flush=True)
    messages_per_s = records_per_s / batch
    started = time.monotonic()
    sent = 0
    next_vehicle = 0
    while time.monotonic() - started < duration_s:
        due = int((time.monotonic() - started) * messages_per_s)
        while sent < due:
            i = next_vehicle
            next_vehicle = (next_vehicle + 1) % vehicles
            lat, lon = positions[i]
            lat += rng.uniform(-2e-5, 2e-5)
            lon += rng.uniform(-2e-5, 2e-5)
            positions[i] = (lat, lon)
            t = time.time()
            records = []
            for k in range(batch):
                seqs[i] += 1
                if k == batch - 1:
                    records.append(TelemetryRecord(seq=seqs[i], ts=t, kind="position",
                                                   data={"lat": lat, "lon": lon, "alt_m": 30.0, "speed_m_s": 8.0}))
                else:
                    records.append(TelemetryRecord(seq=seqs[i], ts=t - 0.1 * (batch - k), kind="battery",
                                                   data={"pct": 80.0, "voltage_v": 15.8}))
            client.publish(topic_for(vehicle_id(i), Channel.TELEMETRY),
                           encode(TelemetryBatch(vehicle_id=vehicle_id(i), records=records)), qos=1)
            sent += 1
        time.sleep(0.002)
    client.loop_stop()
    client.disconnect()


# -- load process ---------------------------------------------------------------------------------------


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def get(self, path: str, key: str) -> int:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        match = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
        if match is None:
            raise RuntimeError("responses must carry content-length")
        await self.reader.readexactly(int(match.group(1)))
        return status


async def _load(port: int, key: str, route: str, rate: float, duration_s: float, vehicles: int,
                connections: int) -> dict[str, Any]:
    rng = random.Random(11)
    idle: asyncio.Queue[_Connection] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(_Connection(*await asyncio.open_connection("127.0.0.1", port)))
    latencies: list[float] = []
    errors: dict[int, int] = {}
    sizes: list[int] = []

    def path() -> str:
        if route == "healthz":
            return "/healthz"
        if route == "detail":
            return f"/v1/vehicles/{vehicle_id(rng.randrange(vehicles))}"
        lat, lon = city_point(rng)
        return f"/v1/vehicles?near={lat:.6f},{lon:.6f}&radius_m=500"

    async def one(scheduled: float, target: str) -> None:
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        conn = await idle.get()
        try:
            status = await conn.get(target, key)
        finally:
            idle.put_nowait(conn)
        latencies.append(time.perf_counter() - scheduled)
        if status != 200:
            errors[status] = errors.get(status, 0) + 1

    count = int(rate * duration_s)
    targets = [path() for _ in range(count)]
    # Like wrk, the generator must not add pauses of its own to what it measures: each request's task is
    # made just before it is due (10,000 tasks made up front cost tens of ms of garbage collection while
    # the first requests were due), and what exists before the run is frozen out of the collector's passes.
    gc.collect()
    gc.freeze()
    start = time.perf_counter() + 0.05
    async with asyncio.TaskGroup() as tg:
        for n, target in enumerate(targets):
            scheduled = start + n / rate
            if scheduled - time.perf_counter() > 0.002:
                await asyncio.sleep(scheduled - time.perf_counter() - 0.001)
            tg.create_task(one(scheduled, target))
    if route == "radius":
        # How many vehicles a query returns, from a few samples outside the timed run.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            for _ in range(20):
                sizes.append((await client.get(path())).json()["count"])
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000, 2)

    return {"requests": len(latencies), "rate_per_s": rate, "p50_ms": pct(50), "p99_ms": pct(99),
            "max_ms": round(latencies[-1] * 1000, 2), "errors": errors,
            **({"mean_vehicles_returned": round(sum(sizes) / len(sizes), 1)} if sizes else {})}


# -- orchestration ---------------------------------------------------------------------------------------


def ingest_rate(coordinator: CoordinatorProcess, seconds: float) -> float:
    def accepted() -> float:
        text = httpx.get(f"{coordinator.base_url}/metrics", headers={"Authorization": f"Bearer {coordinator.key}"},
                         timeout=30).text
        return float(re.search(r"^fleetedge_ingest_records_accepted_total (\S+)", text, re.M).group(1))  # type: ignore[union-attr]

    first, t0 = accepted(), time.monotonic()
    time.sleep(seconds)
    return (accepted() - first) / (time.monotonic() - t0)


ROUTE_TEMPLATES = {"healthz": "/healthz", "detail": "/v1/vehicles/{vehicle_id}", "radius": "/v1/vehicles"}


def server_buckets(coordinator: CoordinatorProcess, route: str) -> dict[float, float]:
    """The coordinator's own latency histogram for ``route``: cumulative counts by upper bound (s)."""
    text = httpx.get(f"{coordinator.base_url}/metrics", headers={"Authorization": f"Bearer {coordinator.key}"},
                     timeout=30).text
    template = re.escape(ROUTE_TEMPLATES[route])
    found: dict[float, float] = {}
    for le, count in re.findall(rf'^fleetedge_api_request_seconds_bucket{{le="([^"]+)",method="GET",'
                                rf'route="{template}",status="200"}} (\S+)$', text, re.M):
        found[float(le)] = found.get(float(le), 0.0) + float(count)
    return found


def server_p99_le_ms(before: dict[float, float], after: dict[float, float]) -> float | None:
    """The histogram bucket holding the 99th percentile of the requests between two scrapes (upper bound, ms):
    the time inside the coordinator, from the first ASGI byte to the last, without queueing before it."""
    total = after.get(math.inf, 0.0) - before.get(math.inf, 0.0)
    if total <= 0:
        return None
    for le in sorted(after):
        if after[le] - before.get(le, 0.0) >= 0.99 * total:
            return le * 1000
    return None


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each process (``load``: this process's finished children)."""
    import psutil

    out = {}
    for name, pid in pids.items():
        try:
            times = psutil.Process(pid).cpu_times()
            out[name] = times.user + times.system
        except psutil.Error:
            out[name] = 0.0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    out["load"] = children.ru_utime + children.ru_stime
    return out


def online(coordinator: CoordinatorProcess) -> int:
    text = httpx.get(f"{coordinator.base_url}/metrics", headers={"Authorization": f"Bearer {coordinator.key}"},
                     timeout=30).text
    match = re.search(r"^fleetedge_vehicles_online (\S+)", text, re.M)
    return int(float(match.group(1))) if match else 0


def run_store(store: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    workdir.mkdir()
    broker = Mosquitto(workdir)
    broker.start()
    redis_server = None
    env = {"FLEETEDGE_COORDINATOR__API__RATE_LIMIT_PER_S": "0", "FLEETEDGE_COORDINATOR__LOG_LEVEL": "warning",
           "FLEETEDGE_COORDINATOR__INGEST__QUEUE_MESSAGES": "4096"}
    if store == "redis":
        (workdir / "redis").mkdir()
        redis_server = RedisServer(workdir / "redis")
        redis_server.start()
        env["FLEETEDGE_COORDINATOR__STORE__REDIS_URL"] = redis_server.url
    (workdir / "coordinator").mkdir()
    coordinator = CoordinatorProcess(workdir / "coordinator", broker.url, env=env)
    feeder: subprocess.Popen[bytes] | None = None
    try:
        coordinator.start()
        total_s = 60 + 3 * args.seconds + 60
        feeder = subprocess.Popen([sys.executable, __file__, "--feed", str(broker.port), "--vehicles",
                                   str(args.vehicles), "--records-per-s", str(args.records_per_s),
                                   "--duration", str(total_s)], env=_env(), cwd=ROOT)
        wait_until(lambda: online(coordinator) >= args.vehicles, 120, f"{args.vehicles} vehicles online")
        time.sleep(3)  # every vehicle has sent positions by now; ingest runs at its steady rate
        achieved = ingest_rate(coordinator, 5)
        print(f"[{store}] {args.vehicles} vehicles online; ingest at {achieved:,.0f} records/s", flush=True)
        result: dict[str, Any] = {"ingest_records_per_s": round(achieved)}
        import psutil

        assert coordinator.process is not None and broker.process is not None
        # The coordinator's spawned children besides multiprocessing's resource tracker: the ingest process,
        # started first, and the heatmap worker.
        children = sorted((c for c in psutil.Process(coordinator.process.pid).children()
                           if "resource_tracker" not in " ".join(c.cmdline())), key=lambda c: c.create_time())
        pids = {"coordinator (REST, dispatch)": coordinator.process.pid, "ingest": children[0].pid,
                **({"heatmap worker": children[1].pid} if len(children) > 1 else {}),
                "mosquitto": broker.process.pid, "feeder": feeder.pid}
        if redis_server is not None and redis_server.process is not None:
            pids["redis-server"] = redis_server.process.pid
        def aof_rewrites() -> int:
            if redis_server is None:
                return 0
            import redis

            return int(redis.Redis(port=redis_server.port).info("persistence")["aof_rewrites"])

        for route in ("healthz", "detail", "radius"):
            before, cpu_before, started = server_buckets(coordinator, route), cpu_seconds(pids), time.monotonic()
            rewrites_before = aof_rewrites()
            out = subprocess.run([sys.executable, __file__, "--load", str(coordinator.api_port), "--key",
                                  coordinator.key, "--route", route, "--rate", str(args.rate), "--seconds",
                                  str(args.seconds), "--vehicles", str(args.vehicles)],
                                 env=_env(), cwd=ROOT, check=True, capture_output=True, text=True)
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            elapsed = time.monotonic() - started
            # Where the time goes: inside the coordinator, or waiting for a CPU among the others.
            figures["server_p99_le_ms"] = server_p99_le_ms(before, server_buckets(coordinator, route))
            figures["cpu_pct"] = {name: round(100 * (after - cpu_before[name]) / elapsed)
                                  for name, after in cpu_seconds(pids).items()}
            if redis_server is not None:
                # A rewrite of Redis's append-only file forks and copies the data set on these same cores;
                # the figures say whether one fell inside this route's run.
                figures["aof_rewrites"] = aof_rewrites() - rewrites_before
            print(f"[{store}] {route:8s} {figures}", flush=True)
            result[route] = figures
        result["ingest_records_per_s_after"] = round(ingest_rate(coordinator, 5))
        if redis_server is not None:
            import redis

            info = redis.Redis(port=redis_server.port).info()
            # Forks for AOF rewrites stall Redis; on a small machine they explain much of its tail.
            result["redis"] = {"used_memory_mb": round(info["used_memory"] / 2**20),
                               "aof_rewrites": info.get("aof_rewrites", 0),
                               "latest_fork_ms": round(info.get("latest_fork_usec", 0) / 1000, 1)}
            print(f"[{store}] redis-server: {result['redis']}", flush=True)
        result["detail_p99_ms"] = result["detail"]["p99_ms"]
        result["radius_p99_ms"] = result["radius"]["p99_ms"]
        return result
    finally:
        if feeder is not None:
            feeder.terminate()
            feeder.wait(10)
        coordinator.stop()
        if redis_server is not None:
            redis_server.stop()
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vehicles", type=int, default=10_000)
    parser.add_argument("--records-per-s", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second of the load process")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of load per route")
    parser.add_argument("--stores", default="embedded,redis")
    parser.add_argument("--feed", type=int, metavar="MQTT_PORT", help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=60.0, help=argparse.SUPPRESS)
    parser.add_argument("--load", type=int, metavar="API_PORT", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--route", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.feed:
        feed(args.feed, args.vehicles, args.records_per_s, 5, args.duration)
        return
    if args.load:
        print(json.dumps(asyncio.run(_load(args.load, args.key, args.route, args.rate, args.seconds, args.vehicles,
                                           connections=32))))
        return
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fleetedge-bench-api-") as tmp:
        for store in args.stores.split(","):
            results[store] = run_store(store, args, Path(tmp) / store)
    summary = {"detail_p99_ms": max(r["detail_p99_ms"] for r in results.values()),
               "radius_p99_ms": max(r["radius_p99_ms"] for r in results.values()),
               "vehicles": args.vehicles, "ingest_target_records_per_s": args.records_per_s,
               "rate_per_s": args.rate, **results}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
