"""Stopping the ingest while it is stuck (its queue full, the store gone) returns promptly and loses nothing:
what was not written was never acknowledged, and the broker delivers it to the next ingest."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from coordinator.config import BrokerSettings, CoordinatorSettings, IngestSettings, StoreSettings
from coordinator.ingest import TelemetryIngest
from coordinator.redis_store import RedisStore
from protocols import Channel, TelemetryBatch, TelemetryRecord, encode, topic_for
from tests.harness import Mosquitto, RedisServer, wait_until


def test_a_stuck_ingest_stops_promptly_and_the_next_one_gets_everything(mosquitto: Mosquitto,
                                                                          redis_server: RedisServer) -> None:
    settings = CoordinatorSettings(broker=BrokerSettings(client_id="ingest-stop-test"),
                                   ingest=IngestSettings(queue_messages=4),
                                   store=StoreSettings(redis_url=redis_server.url))
    store = RedisStore(redis_server.url, socket_timeout_s=1)
    ingest = TelemetryIngest(settings, store, broker_host="127.0.0.1", broker_port=mosquitto.port)
    stop = threading.Event()
    runner = threading.Thread(target=ingest.run_blocking, args=(stop,), daemon=True)
    runner.start()
    assert ingest.connected.wait(10)
    redis_server.stop()  # every write now fails: the ingest waits it out, its queue fills, paho's thread blocks

    vehicle = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="rover-1")
    vehicle.connect("127.0.0.1", mosquitto.port)
    vehicle.loop_start()
    now = time.time()
    for seq in range(1, 41):
        batch = TelemetryBatch(vehicle_id="rover-1", records=[TelemetryRecord(seq=seq, ts=now + seq, kind="battery",
                                                                              data={"pct": 90.0})])
        vehicle.publish(topic_for("rover-1", Channel.TELEMETRY), encode(batch), qos=1).wait_for_publish(5)
    vehicle.loop_stop()
    vehicle.disconnect()
    time.sleep(1.0)

    started = time.monotonic()
    stop.set()
    runner.join(15)
    assert not runner.is_alive(), "stopping must not wait for a store that is gone or a queue nobody empties"
    assert time.monotonic() - started < 10
    store.close()

    redis_server.start()  # the same data directory: nothing of rover-1 was written
    store = RedisStore(redis_server.url)
    assert store.vehicle("rover-1") is None
    again = TelemetryIngest(settings, store, broker_host="127.0.0.1", broker_port=mosquitto.port)
    stop = threading.Event()
    runner = threading.Thread(target=again.run_blocking, args=(stop,), daemon=True)
    runner.start()
    try:
        wait_until(lambda: (v := store.vehicle("rover-1")) is not None and v["last_seq"] == 40, 20,
                   "the next ingest to get all 40 batches again from the broker")
        assert [r["seq"] for r in store.telemetry("rover-1", since=None, until=None, limit=100)] == list(range(1, 41))
    finally:
        stop.set()
        runner.join(15)
        store.close()
