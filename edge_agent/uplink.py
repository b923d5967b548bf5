"""The MQTT link to the coordinator: committed outbox records up, commands down.

Records go up as QoS 1 batches, most precious class first, with at most ``inflight_batches`` awaiting
the broker's PUBACK; only a PUBACK lets the outbox delete them. The session is persistent (the broker
keeps this vehicle's command subscription and queued commands while it is away). The retained
``status`` topic says online on connect; the Last Will says offline when the link dies. Lost links are
retried with jittered exponential backoff that resets once a session has been established.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

import aiomqtt
import msgspec
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never, wait_exponential, wait_random

from edge_agent.bandwidth import BandwidthCap
from edge_agent.command_executor import CommandExecutor
from edge_agent.command_inbox import Admission, CommandInbox
from edge_agent.config import AgentSettings
from edge_agent.errors import LinkError
from edge_agent.outbox import Claim, TelemetryOutbox
from protocols import (
    AckState,
    Channel,
    Command,
    EncodedBatch,
    EncodedRecord,
    MalformedMessage,
    RecordClass,
    VehicleStatus,
    decode,
    encode,
    topic_for,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(slots=True)
class UplinkCounters:
    connected: bool = False
    sessions: int = 0
    batches_sent: int = 0
    records_sent: int = 0
    bytes_sent: int = 0
    commands_received: int = 0
    commands_rejected_malformed: int = 0
    commands_duplicate: int = 0
    commands_expired: int = 0
    acks_sent: int = 0
    foreign_messages_ignored: int = 0
    last_error: str = ""


class Uplink:
    """Keeps the vehicle's MQTT session up and drains the outbox through it.

    Args:
        settings: the agent's settings.
        outbox: the outbox to drain.
        db: the one-thread executor every outbox call runs on, keeping SQLite off the event loop.
        records_committed: set by the committer after each commit that wrote records.
        agent_version: reported in the retained status.
        inbox: where received commands are admitted (stored once) before anything else happens.
        executor: runs admitted commands.
        acks_ready: set whenever a command reached a state whose ack is still to be sent.
    """

    def __init__(self, settings: AgentSettings, outbox: TelemetryOutbox, db: Executor,
                 records_committed: asyncio.Event, agent_version: str, *, inbox: CommandInbox,
                 executor: CommandExecutor, acks_ready: asyncio.Event,
                 urgent_committed: asyncio.Event | None = None) -> None:
        self._settings = settings
        self._outbox = outbox
        self._inbox = inbox
        self._executor = executor
        self._acks_ready = acks_ready
        self._db = db
        self._records_committed = records_committed
        self._urgent_committed = urgent_committed or asyncio.Event()
        self._version = agent_version
        vid = settings.vehicle.id
        self._topics = {
            RecordClass.ALERT: topic_for(vid, Channel.EVENTS),
            RecordClass.EVENT: topic_for(vid, Channel.EVENTS),
            RecordClass.TELEMETRY: topic_for(vid, Channel.TELEMETRY),
        }
        self._status_topic = topic_for(vid, Channel.STATUS)
        self._commands_topic = topic_for(vid, Channel.COMMANDS)
        self._acks_topic = topic_for(vid, Channel.ACKS)
        up = settings.uplink
        self._bandwidth = BandwidthCap(up.bandwidth_bytes_per_s, burst=max(up.bandwidth_bytes_per_s, up.batch_bytes))
        self.counters = UplinkCounters()

    async def _in_db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db, lambda: fn(*args, **kwargs))

    async def run(self) -> None:
        """Connect, serve and reconnect until cancelled."""
        mqtt = self._settings.mqtt
        while True:
            retrying = AsyncRetrying(
                retry=retry_if_exception_type(LinkError),
                # Jitter spreads a fleet's reconnects after a broker restart.
                wait=wait_exponential(multiplier=mqtt.reconnect_min_s, max=mqtt.reconnect_max_s)
                + wait_random(0, mqtt.reconnect_min_s),
                stop=stop_never,
                before_sleep=self._log_retry,
            )
            async for attempt in retrying:
                with attempt:
                    await self._session()

    def _log_retry(self, state: RetryCallState) -> None:
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning("broker %s unreachable (%s); retrying in %.1f s", self._settings.mqtt.url,
                    self.counters.last_error, delay)

    def _status(self, online: bool) -> bytes:
        return encode(VehicleStatus(vehicle_id=self._settings.vehicle.id, online=online, ts=time.time(),
                                    agent_version=self._version, kind=self._settings.vehicle.kind))

    def _client(self) -> aiomqtt.Client:
        s = self._settings
        password = None
        if s.mqtt.password_file:
            with open(s.mqtt.password_file) as f:
                password = f.read().strip()
        tls_context = None
        address = s.mqtt.address
        if address.tls:
            tls_context = ssl.create_default_context(cafile=s.mqtt.ca_file or None)
            if s.mqtt.cert_file:
                tls_context.load_cert_chain(s.mqtt.cert_file, s.mqtt.key_file or None)
        return aiomqtt.Client(
            address.host,
            address.port,
            identifier=s.vehicle.id,
            username=s.mqtt.username or s.vehicle.id,
            password=password,
            clean_session=False,
            keepalive=s.mqtt.keepalive_s,
            will=aiomqtt.Will(self._status_topic, self._status(False), qos=1, retain=True),
            tls_context=tls_context,
            timeout=s.uplink.publish_timeout_s,
            # paho's own queue must never hold more than our window; the outbox is the real queue.
            max_inflight_messages=s.uplink.inflight_batches + 4,
            max_queued_incoming_messages=256,
        )

    async def _session(self) -> None:
        """One MQTT session. Returns after an established session ends; raises LinkError if none was."""
        established = False
        try:
            async with self._client() as client:
                established = True
                self.counters.connected = True
                self.counters.sessions += 1
                log.info("connected to %s as %s", self._settings.mqtt.url, self._settings.vehicle.id)
                try:
                    await client.publish(self._status_topic, self._status(True), qos=1, retain=True)
                    await client.subscribe(self._commands_topic, qos=1)
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._send_loop(client), name="uplink-send")
                        tg.create_task(self._receive_loop(client), name="uplink-receive")
                        tg.create_task(self._ack_loop(client), name="uplink-acks")
                except asyncio.CancelledError:
                    # A clean stop: say offline ourselves, since the broker sends the Will only on a lost link.
                    with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                        async with asyncio.timeout(2):
                            await client.publish(self._status_topic, self._status(False), qos=1, retain=True)
                    raise
        except* (aiomqtt.MqttError, TimeoutError) as group:
            self.counters.last_error = "; ".join(str(e) or type(e).__name__ for e in group.exceptions)
            if established:
                log.warning("link to %s lost: %s", self._settings.mqtt.url, self.counters.last_error)
        finally:
            self.counters.connected = False
            await asyncio.shield(self._in_db(self._outbox.release_unacknowledged))
        if not established:
            raise LinkError(self.counters.last_error)

    async def _send_loop(self, client: aiomqtt.Client) -> None:
        up = self._settings.uplink
        window = asyncio.Semaphore(up.inflight_batches)
        async with asyncio.TaskGroup() as tg:
            while True:
                await window.acquire()
                claim = await self._in_db(self._outbox.claim, max_records=up.batch_records, max_bytes=up.batch_bytes)
                if claim is None:
                    window.release()
                    self._records_committed.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.5):
                            await self._records_committed.wait()
                    continue
                payload = encode(EncodedBatch(
                    vehicle_id=self._settings.vehicle.id,
                    records=[EncodedRecord(seq=r.seq, ts=r.ts, kind=r.kind, cls=int(r.cls), data=msgspec.Raw(r.data))
                             for r in claim.rows],
                ))
                await self._bandwidth.take(len(payload))
                tg.create_task(self._publish(client, claim, payload, window),
                               name=f"publish-{claim.cls.name.lower()}-{claim.first_seq}")
                if claim.cls is RecordClass.TELEMETRY and len(claim.rows) < up.batch_records and up.linger_ms:
                    # The backlog is drained: let live telemetry gather into fuller batches (fewer messages,
                    # less CPU and radio time); an alert or event committed meanwhile ends the wait.
                    self._urgent_committed.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(up.linger_ms / 1000):
                            await self._urgent_committed.wait()

    async def _publish(self, client: aiomqtt.Client, claim: Claim, payload: bytes, window: asyncio.Semaphore) -> None:
        try:
            await client.publish(self._topics[claim.cls], payload, qos=1)
        finally:
            window.release()
        self._outbox.acknowledge(claim)
        self.counters.batches_sent += 1
        self.counters.records_sent += len(claim.rows)
        self.counters.bytes_sent += len(payload)

    async def _receive_loop(self, client: aiomqtt.Client) -> None:
        # Also how an idle link's loss is noticed: the iterator raises MqttError when it drops.
        async for message in client.messages:
            if message.topic.value != self._commands_topic:
                # Only a broker bug delivers other topics (amqtt 0.12 replays every retained message on
                # connect); a vehicle acts on nothing but its own commands.
                self.counters.foreign_messages_ignored += 1
                continue
            payload = message.payload if isinstance(message.payload, bytes) else b""
            try:
                command = decode(payload, Command)
            except MalformedMessage as exc:
                self.counters.commands_rejected_malformed += 1
                log.warning("rejected a malformed command on %s: %s", message.topic, exc)
                continue
            if command.vehicle_id != self._settings.vehicle.id:
                self.counters.commands_rejected_malformed += 1
                log.warning("rejected command %s addressed to %r on this vehicle's topic", command.command_id,
                            command.vehicle_id)
                continue
            self.counters.commands_received += 1
            await self._admit(command)

    async def _admit(self, command: Command) -> None:
        # Stored before anything is acknowledged or run: a redelivery after a crash is still recognised.
        admission = await asyncio.to_thread(self._inbox.admit, command, time.time())
        if admission is Admission.NEW and not self._executor.submit(command):
            await asyncio.to_thread(self._inbox.update, command.command_id, AckState.REJECTED,
                                    f"busy: {self._settings.commands.queue} commands already wait to run")
        elif admission is Admission.DUPLICATE:
            self.counters.commands_duplicate += 1
            log.info("command %s delivered again; it runs once, its state is acknowledged again", command.command_id)
        elif admission is Admission.EXPIRED:
            self.counters.commands_expired += 1
            log.warning("command %s arrived after it expired; rejected", command.command_id)
        self._acks_ready.set()

    async def _ack_loop(self, client: aiomqtt.Client) -> None:
        """Sends every command state not yet acknowledged, now and whenever one is reached."""
        last_prune = 0.0
        while True:
            self._acks_ready.clear()
            for pending in await asyncio.to_thread(self._inbox.pending_acks):
                await client.publish(self._acks_topic, encode(self._inbox.ack_for(pending)), qos=1)
                await asyncio.to_thread(self._inbox.acknowledged, pending)
                self.counters.acks_sent += 1
            if time.monotonic() - last_prune > 3600:
                last_prune = time.monotonic()
                await asyncio.to_thread(self._inbox.prune, time.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await self._acks_ready.wait()
