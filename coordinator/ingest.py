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

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import paho.mqtt.client as mqtt
from tenacity import Retrying, retry_if_exception_type, wait_exponential, wait_random

from coordinator.config import CoordinatorSettings
from coordinator.errors import StoreUnavailable
from coordinator.ingest_counters import IngestCounters
from coordinator.mqtt_session import broker_client
from coordinator.store import FleetStore, Received, Reject, UplinkMessage
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


class StopFlag(Protocol):
    def is_set(self) -> bool: ...


@dataclass(slots=True)
class _Tally:
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Received:
    topic: str
    payload: bytes
    mid: int
    qos: int
    at: float


class TelemetryIngest:
    """Subscribes to every vehicle's uplink and writes it to the store, exactly once in effect."""

    def __init__(self, settings: CoordinatorSettings, store: FleetStore, *, broker_host: str, broker_port: int,
                 counters: IngestCounters | None = None) -> None:
        self._settings = settings
        self._store = store
        self._host = broker_host
        self._port = broker_port
        self._queue: queue.Queue[_Received] = queue.Queue(maxsize=settings.ingest.queue_messages)
        self.counters = counters or IngestCounters()
        self.reject_reasons: dict[str, int] = {}
        self.connected = threading.Event()
        self._stopping = False

    def _client(self) -> mqtt.Client:
        client = broker_client(self._settings.broker, self._settings.broker.client_id, clean_session=False,
                               manual_ack=True)
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
        # Blocks paho's network thread when the writer is behind: TCP back-pressure to the broker. Not once
        # the ingest stops, though: the writer is gone, and stopping joins this thread. A message dropped
        # then was never acknowledged; the broker delivers it again to the next ingest.
        item = _Received(message.topic, bytes(message.payload), message.mid, message.qos, time.time())
        while not self._stopping:
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def run_blocking(self, stop: StopFlag) -> None:
        """Connect and ingest until ``stop`` is set (see ``coordinator.ingest_process``)."""
        client = self._client()
        client.connect_async(self._host, self._port, keepalive=30)
        client.loop_start()
        try:
            self._write_loop(client, stop)
        except StoreUnavailable:
            if not stop.is_set():
                raise
            log.warning("ingest stopped while the store was unreachable; the broker keeps what was not written")
        finally:
            self._stopping = True
            client.disconnect()
            client.loop_stop()

    def _write_loop(self, client: mqtt.Client, stop: StopFlag) -> None:
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
            self._commit_with_retry(group, stop)
            for item in group:
                if item.qos > 0:
                    client.ack(item.mid, item.qos)

    def _commit_with_retry(self, group: list[_Received], stop: StopFlag) -> None:
        # Decoding is pure: done once, outside the retries.
        items, tally = self._decode(group)
        # A busy disk or an unreachable Redis is waited out (until the ingest is told to stop); the messages
        # stay unacknowledged meanwhile.
        for attempt in Retrying(retry=retry_if_exception_type(StoreUnavailable),
                                wait=wait_exponential(multiplier=0.1, max=5) + wait_random(0, 0.1),
                                stop=lambda _state: stop.is_set(), reraise=True,
                                before_sleep=lambda state: log.error("store write failed (%s); retrying",
                                                                     state.outcome and state.outcome.exception())):
            with attempt:
                result = self._store.ingest(items)
        # Counted only once the store holds them: a retried group must not count twice.
        c = self.counters
        c.records_accepted += result.accepted
        c.records_duplicate += result.duplicates
        c.rejected += tally.rejected
        for key, n in tally.reasons.items():
            self.reject_reasons[key] = self.reject_reasons.get(key, 0) + n
        c.messages += len(group)
        c.commits += 1
        c.last_lag_s = time.time() - group[0].at

    def _decode(self, group: list[_Received]) -> tuple[list[Received], _Tally]:
        tally = _Tally()
        items: list[Received] = []
        for item in group:
            vehicle_id = None
            try:
                parsed = parse_topic(item.topic)
                vehicle_id = parsed.vehicle_id
                message = _decode_uplink(parsed.channel, vehicle_id, item.payload)
            except (MalformedMessage, TopicError) as exc:
                tally.rejected += 1
                key = type(exc).__name__
                tally.reasons[key] = tally.reasons.get(key, 0) + 1
                log.warning("rejected a message on %s (%d bytes): %s", item.topic[:200], len(item.payload), exc)
                message = Reject(vehicle_id, str(exc))
            if message is not None:
                items.append(Received(message, item.at))
        return items, tally

def _decode_uplink(channel: Channel, vehicle_id: str, payload: bytes) -> UplinkMessage | None:
    """The message a vehicle sent on one of its uplink channels; None for a cleared retained status."""
    message: TelemetryBatch | VehicleStatus | CommandAck
    if channel in (Channel.TELEMETRY, Channel.EVENTS):
        message = decode(payload, TelemetryBatch)
    elif channel is Channel.STATUS:
        if not payload:
            return None
        message = decode(payload, VehicleStatus)
    elif channel is Channel.ACKS:
        message = decode(payload, CommandAck)
    else:
        raise TopicError(f"vehicles do not publish on {channel.value}")
    _same_vehicle(message.vehicle_id, vehicle_id, type(message).__name__)
    return message


def _same_vehicle(in_payload: str, in_topic: str, schema: str) -> None:
    # A vehicle may only speak for itself, whatever the broker's ACL lets through.
    if in_payload != in_topic:
        raise MalformedMessage(schema, f"vehicle_id {in_payload!r} at `$.vehicle_id` does not match the topic's "
                                       f"{in_topic!r}")
