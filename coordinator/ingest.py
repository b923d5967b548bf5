"""Ingest of every vehicle's uplink: validate, de-duplicate, store, and only then acknowledge.

The MQTT client runs with manual acknowledgement: a QoS 1 message is PUBACKed to the broker only after
the SQLite transaction holding it has committed. A coordinator that dies mid-batch therefore loses
nothing: the broker keeps the persistent session's unacknowledged messages and sends them again, and
``(vehicle, seq)`` de-duplication makes the second copy harmless.

Reading pauses when the bounded queue to the writer is full, which pushes back on the broker instead of
growing memory. A malformed message is rejected, counted against its vehicle and logged; it is still
acknowledged (sending it again cannot make it valid), and the loop goes on.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import ssl
import threading
import time
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from tenacity import Retrying, retry_if_exception_type, stop_never, wait_exponential, wait_random

from coordinator.config import CoordinatorSettings
from coordinator.store import FleetStore
from protocols import (
    UPLINK_CHANNELS,
    Channel,
    CommandAck,
    MalformedMessage,
    TelemetryBatch,
    TopicError,
    VehicleStatus,
    decode,
    parse_topic,
    subscription_for,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class IngestCounters:
    messages: int = 0
    records_accepted: int = 0
    records_duplicate: int = 0
    rejected: int = 0
    commits: int = 0
    connected: bool = False
    last_lag_s: float = 0.0
    reject_reasons: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Received:
    topic: str
    payload: bytes
    mid: int
    qos: int
    at: float


class TelemetryIngest:
    """Subscribes to every vehicle's uplink and writes it to the store, exactly once in effect."""

    def __init__(self, settings: CoordinatorSettings, store: FleetStore, *, broker_host: str, broker_port: int) -> None:
        self._settings = settings
        self._store = store
        self._host = broker_host
        self._port = broker_port
        self._queue: queue.Queue[_Received] = queue.Queue(maxsize=settings.ingest.queue_messages)
        self.counters = IngestCounters()
        self.connected = threading.Event()
        self._stopping = False

    def _client(self) -> mqtt.Client:
        b = self._settings.broker
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=b.client_id, clean_session=False,
                             manual_ack=True)
        if b.password_file:
            with open(b.password_file) as f:
                client.username_pw_set(b.username, f.read().strip())
        elif b.url:
            client.username_pw_set(b.username)
        if b.url and b.address.tls:
            client.tls_set_context(ssl.create_default_context(cafile=b.ca_file or None))
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        # Our own queue is the buffer; paho must not queue outgoing PUBACKs without bound either.
        client.max_inflight_messages_set(self._settings.ingest.queue_messages)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object,
                    properties: object) -> None:
        if getattr(reason, "is_failure", False):
            log.error("broker refused the coordinator's connection: %s", reason)
            return
        group = self._settings.broker.shared_group
        subs = [(f"$share/{group}/{subscription_for(c)}" if group else subscription_for(c), 1) for c in UPLINK_CHANNELS]
        client.subscribe(subs)
        self.counters.connected = True
        self.connected.set()
        log.info("ingest connected to %s:%d, subscribed to %d uplink channels", self._host, self._port, len(subs))

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object, reason: object,
                       properties: object) -> None:
        self.counters.connected = False
        self.connected.clear()
        if not self._stopping:
            log.warning("ingest lost the broker (%s); paho reconnects", reason)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        # Blocks paho's network thread when the writer is behind: TCP back-pressure to the broker.
        self._queue.put(_Received(message.topic, bytes(message.payload), message.mid, message.qos, time.time()))

    def run_blocking(self, stop: threading.Event) -> None:
        """Connect and ingest until ``stop`` is set. Runs on its own thread."""
        client = self._client()
        client.connect_async(self._host, self._port, keepalive=30)
        client.loop_start()
        try:
            self._write_loop(client, stop)
        finally:
            self._stopping = True
            client.disconnect()
            client.loop_stop()

    def _write_loop(self, client: mqtt.Client, stop: threading.Event) -> None:
        cfg = self._settings.ingest
        while not stop.is_set():
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            group = [first]
            deadline = time.monotonic() + cfg.commit_interval_ms / 1000
            while len(group) < cfg.max_messages_per_commit:
                try:
                    group.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            self._commit_with_retry(group)
            for item in group:
                if item.qos > 0:
                    client.ack(item.mid, item.qos)

    def _commit_with_retry(self, group: list[_Received]) -> None:
        # A busy or briefly failing disk is waited out; the messages stay unacknowledged meanwhile.
        for attempt in Retrying(retry=retry_if_exception_type(sqlite3.OperationalError),
                                wait=wait_exponential(multiplier=0.1, max=5) + wait_random(0, 0.1),
                                stop=stop_never, reraise=True,
                                before_sleep=lambda state: log.error("store write failed (%s); retrying",
                                                                     state.outcome and state.outcome.exception())):
            with attempt:
                self._commit(group)

    def _commit(self, group: list[_Received]) -> None:
        now = time.time()
        tally = IngestCounters()
        with self._store.transaction() as db:
            for item in group:
                vehicle_id = None
                try:
                    parsed = parse_topic(item.topic)
                    vehicle_id = parsed.vehicle_id
                    self._apply(db, tally, parsed.channel, vehicle_id, item.payload, item.at)
                except (MalformedMessage, TopicError) as exc:
                    tally.rejected += 1
                    key = type(exc).__name__
                    tally.reject_reasons[key] = tally.reject_reasons.get(key, 0) + 1
                    self._store.count_reject(db, vehicle_id, str(exc), now)
                    log.warning("rejected a message on %s (%d bytes): %s", item.topic[:200], len(item.payload), exc)
        # Counted only once the transaction holds: a retried group must not count twice.
        c = self.counters
        c.records_accepted += tally.records_accepted
        c.records_duplicate += tally.records_duplicate
        c.rejected += tally.rejected
        for key, n in tally.reject_reasons.items():
            c.reject_reasons[key] = c.reject_reasons.get(key, 0) + n
        c.messages += len(group)
        c.commits += 1
        c.last_lag_s = now - group[0].at

    def _apply(self, db: sqlite3.Connection, tally: IngestCounters, channel: Channel, vehicle_id: str,
               payload: bytes, at: float) -> None:
        if channel in (Channel.TELEMETRY, Channel.EVENTS):
            batch = decode(payload, TelemetryBatch)
            _same_vehicle(batch.vehicle_id, vehicle_id, "TelemetryBatch")
            result = self._store.ingest_batch(db, batch, at)
            tally.records_accepted += result.accepted
            tally.records_duplicate += result.duplicates
        elif channel is Channel.STATUS:
            if not payload:
                return  # a cleared retained status
            status = decode(payload, VehicleStatus)
            _same_vehicle(status.vehicle_id, vehicle_id, "VehicleStatus")
            self._store.ingest_status(db, status, at)
        elif channel is Channel.ACKS:
            ack = decode(payload, CommandAck)
            _same_vehicle(ack.vehicle_id, vehicle_id, "CommandAck")
            self._store.ingest_ack(db, ack, at)

    async def run(self) -> None:
        """Run the ingest thread as a task: cancelling the task stops the thread cleanly."""
        stop = threading.Event()
        worker = asyncio.get_running_loop().run_in_executor(None, self.run_blocking, stop)
        try:
            await asyncio.shield(worker)
        except asyncio.CancelledError:
            stop.set()
            await worker
            raise


def _same_vehicle(in_payload: str, in_topic: str, schema: str) -> None:
    # A vehicle may only speak for itself, whatever the broker's ACL lets through.
    if in_payload != in_topic:
        raise MalformedMessage(schema, f"vehicle_id {in_payload!r} at `$.vehicle_id` does not match the topic's {in_topic!r}")
