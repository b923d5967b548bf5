"""Malformed and oversized payloads on uplink topics are rejected and counted; ingest goes on."""

from __future__ import annotations

import os

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from protocols import Channel, TelemetryBatch, TelemetryRecord, encode, topic_for
from tests.harness import CoordinatorProcess, Mosquitto, wait_until


def test_bad_payloads_are_rejected_counted_and_good_data_still_flows(
        mosquitto: Mosquitto, coordinator: CoordinatorProcess) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="attacker")
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    telemetry = topic_for("drone-bad", Channel.TELEMETRY)
    bad = [
        (telemetry, os.urandom(300)),
        (telemetry, b""),
        (telemetry, encode(TelemetryBatch(vehicle_id="drone-bad", records=[
            TelemetryRecord(seq=1, ts=1.0, kind="position")]))[:-3]),
        (telemetry, msgspec.msgpack.encode({"v": 1, "vehicle_id": "drone-bad",
                                            "records": [{"seq": "x", "ts": 1.0, "kind": "position"}]})),
        (telemetry, encode(TelemetryBatch(vehicle_id="someone-else", records=[
            TelemetryRecord(seq=1, ts=1.0, kind="position")]))),
        (telemetry, b"\x91" + b"\xc6" + (2 * 1024 * 1024).to_bytes(4, "big") + b"\0" * (2 * 1024 * 1024)),
        (topic_for("drone-bad", Channel.STATUS), b"\xff\xff"),
        (topic_for("drone-bad", Channel.ACKS), msgspec.msgpack.encode([1, 2, 3])),
    ]
    for topic, payload in bad:
        client.publish(topic, payload, qos=1).wait_for_publish(10)
    client.publish("fleetedge/v1/not valid!/up/events", b"x", qos=1).wait_for_publish(10)
    good = TelemetryBatch(vehicle_id="drone-bad", records=[
        TelemetryRecord(seq=i, ts=1_800_000_000.0 + i, kind="position", data={"lat": 52.5, "lon": 13.4})
        for i in range(1, 51)])
    client.publish(telemetry, encode(good), qos=1).wait_for_publish(10)
    client.loop_stop()
    client.disconnect()

    stats = wait_until(lambda: (s := coordinator.vehicle_stats("drone-bad")) and s["accepted"] == 50 and s,
                       20, "the good batch after the bad ones")
    assert stats["rejected"] == len(bad)
    assert stats["max_seq"] == 50 and stats["gaps"] == 0
    everything = coordinator.get("/v1/stats")
    assert everything["vehicles"]["(unattributed)"]["rejected"] == 1, "a topic naming no valid vehicle is counted too"
    assert everything["ingest"]["rejected"] == len(bad) + 1
    assert coordinator.process is not None and coordinator.process.poll() is None, "the coordinator keeps running"
    log = (coordinator.workdir / "coordinator.log").read_text()
    assert "at `$.records[0].seq`" in log, "the log names the bad field"
