"""End to end: one agent's backlog through Mosquitto into the coordinator.

An hour of 50 Hz telemetry (180,000 records) piles up in an agent's outbox during an outage; then the
agent starts with the link up and drains it. Measured: seconds from the agent's start to the last record
committed at the coordinator (`drain_s`), records per second between the first and the last arrival
(`records_per_s`), the agent's peak RSS (VmHWM), and exactly-once: every number 1..N present once
(`lost`, `duplicates`). For scale, the same run measures a baseline: the same batches published by a bare
paho QoS 1 publisher to a bare subscriber through the same broker, with no storage on either side.

Last line: {"records_per_s", "drain_s", "agent_peak_rss_mb", "lost", "duplicates", ...}.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec

from edge_agent.outbox import TelemetryOutbox
from protocols import Channel, EncodedBatch, EncodedRecord, encode, encode_data, topic_for
from tests.harness import AgentProcess, CoordinatorProcess, Mosquitto, wait_until


def fill_backlog(path: Path, n: int) -> None:
    outbox = TelemetryOutbox.open(path, cap_bytes=512 * 1024 * 1024)
    t0 = time.time() - n / 50
    for i in range(n):
        outbox.append("position", {"lat": 52.52 + i * 1e-7, "lon": 13.405, "alt_m": 60.0, "speed_m_s": 12.0,
                                   "heading_deg": float(i % 360)}, ts=t0 + i / 50)
        if i % 5000 == 4999:
            outbox.commit()
    outbox.commit()
    outbox.close()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def first_and_last_arrival(store: Path, vehicle_id: str) -> tuple[float, float]:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        first, last = db.execute("SELECT min(received_at), max(received_at) FROM telemetry WHERE vehicle_id = ?",
                                 (vehicle_id,)).fetchone()
    return float(first), float(last)


def baseline(broker: Mosquitto, n: int, batch: int) -> float:
    """Bare paho QoS 1 publish -> subscribe of the same batches, window of 8 like the agent."""
    payloads = []
    data = encode_data({"lat": 52.52, "lon": 13.405, "alt_m": 60.0, "speed_m_s": 12.0, "heading_deg": 1.0})
    for start in range(0, n, batch):
        payloads.append(encode(EncodedBatch(vehicle_id="bare", records=[
            EncodedRecord(seq=s + 1, ts=1.0, kind="position", cls=2, data=msgspec.Raw(data))
            for s in range(start, min(n, start + batch))])))
    received = [0]
    done = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        received[0] += len(msgspec.msgpack.decode(message.payload)["records"])
        if received[0] >= n:
            done.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub")
    sub.on_message = on_message
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe("fleetedge/v1/bare/#", qos=1)
    sub.loop_start()
    time.sleep(0.3)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub")
    pub.max_inflight_messages_set(8)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    topic = topic_for("bare", Channel.TELEMETRY)
    started = time.perf_counter()
    infos = [pub.publish(topic, p, qos=1) for p in payloads]
    for info in infos:
        info.wait_for_publish(60)
    done.wait(60)
    elapsed = time.perf_counter() - started
    for c in (pub, sub):
        c.loop_stop()
        c.disconnect()
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=180_000, help="backlog size (default 180,000 = 1 h at 50 Hz)")
    args = parser.parse_args()
    n = args.records
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "mosquitto").mkdir()
        (root / "coordinator").mkdir()
        (root / "agent").mkdir()
        broker = Mosquitto(root / "mosquitto")
        broker.start()
        coordinator = CoordinatorProcess(root / "coordinator", broker.url)
        coordinator.start()
        agent = AgentProcess(root / "agent", "drone-bench", broker.url, {"source": {"kind": "none"}})
        try:
            print(f"filling the agent's outbox with {n:,} records (an outage's backlog)...", flush=True)
            fill_backlog(agent.outbox_path, n)
            print("starting the agent with the link up; draining...", flush=True)
            started = time.monotonic()
            agent.start()
            assert agent.process is not None
            pid = agent.process.pid
            last_report = started
            while (accepted := coordinator.vehicle_stats("drone-bench").get("accepted", 0)) < n:
                if time.monotonic() - started > 120:
                    raise TimeoutError(f"drain incomplete after 120 s: {accepted:,}/{n:,}")
                if time.monotonic() - last_report >= 1:
                    print(f"  {time.monotonic() - started:5.1f} s: {accepted:,}/{n:,} at the coordinator", flush=True)
                    last_report = time.monotonic()
                time.sleep(0.02)
            drain_s = time.monotonic() - started
            wait_until(lambda: agent.outbox_counts()["records"] == 0, 30, "the outbox to empty")
            rss = peak_rss_mb(pid)
            agent.stop()
            first, last = first_and_last_arrival(coordinator.store_path, "drone-bench")
            seqs = coordinator.received_seqs("drone-bench")
            stats = coordinator.vehicle_stats("drone-bench")
            lost = n - len(set(seqs) & set(range(1, n + 1)))
            duplicates = stats["duplicates"] + (len(seqs) - len(set(seqs)))
            rate = n / max(last - first, 1e-9)
            print("measuring the bare-MQTT baseline...", flush=True)
            bare = baseline(broker, n, 1000)
        finally:
            if agent.process is not None:
                agent.kill()
            coordinator.stop()
            broker.stop()
    print(f"drain of {n:,} records: {drain_s:.2f} s from agent start; {rate:,.0f} records/s first-to-last arrival")
    print(f"bare paho QoS 1 through the same broker (no storage): {bare:,.0f} records/s")
    print(f"agent peak RSS {rss:.1f} MB; lost {lost}, duplicates {duplicates}")
    print(json.dumps({"records_per_s": round(rate), "drain_s": round(drain_s, 2), "agent_peak_rss_mb": round(rss, 1),
                      "lost": lost, "duplicates": duplicates, "baseline_bare_mqtt_records_per_s": round(bare),
                      "ratio_to_bare_mqtt": round(rate / bare, 3)}))


if __name__ == "__main__":
    main()
