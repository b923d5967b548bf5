"""The fleet store interface: what the coordinator keeps, whichever store keeps it.

Two implementations pass one contract suite (``tests/coordinator/test_store_contract.py``):

- :class:`coordinator.embedded_store.EmbeddedStore`: one SQLite file, zero setup; the default.
- :class:`coordinator.redis_store.RedisStore`: Redis (hashes, GEO and sorted sets, streams), so several
  coordinators can share the fleet's state.

Ingest writes through :meth:`FleetStore.ingest` only, and acknowledges its MQTT messages only after the
call has returned. A call is safe to repeat after a failure: every telemetry record is stored once under
``(vehicle_id, seq)`` (a batch sent again after a lost PUBACK adds nothing and is counted as duplicates),
each message is applied whole or not at all, and the embedded store applies the whole call in one
transaction.
"""

from __future__ import annotations

import abc
import asyncio
import enum
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, ParamSpec, TypeVar

from coordinator.config import StoreSettings
from coordinator.orders import Order, OrderEvent, OrderState
from coordinator.supply.moves import Move
from protocols import AckState, CommandAck, TelemetryBatch, TelemetryRecord, VehicleStatus

P = ParamSpec("P")
T = TypeVar("T")

# Topic-level rejects that name no valid vehicle are counted under this id.
UNATTRIBUTED = "(unattributed)"


def valid_position(data: dict[str, Any]) -> tuple[float, float] | None:
    """``(lat, lon)`` of a position record's data, or None when it holds no usable fix."""
    lat, lon = data.get("lat"), data.get("lon")
    if isinstance(lat, bool) or isinstance(lon, bool) or not isinstance(lat, int | float) or not isinstance(
            lon, int | float):
        return None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):  # also false for NaN
        return None
    return float(lat), float(lon)


def newest_by_kind(records: Sequence[TelemetryRecord]) -> dict[str, TelemetryRecord]:
    """The highest-numbered record of each kind (the vehicle's latest state, whatever the arrival order)."""
    newest: dict[str, TelemetryRecord] = {}
    for r in records:
        if r.kind not in newest or r.seq > newest[r.kind].seq:
            newest[r.kind] = r
    return newest


def vehicle_counters(max_seq: int = 0, accepted: int = 0, duplicates: int = 0, evicted: int = 0,
                     lost: int = 0) -> dict[str, int]:
    """A vehicle's ingest counters as ``stats()`` reports them; ``gaps`` are the numbers not accounted for."""
    return {"accepted": accepted, "duplicates": duplicates, "rejected": 0, "max_seq": max_seq,
            "gaps": max(0, max_seq - accepted - evicted - lost), "evicted_at_edge": evicted, "lost_at_edge": lost}


@dataclass(frozen=True, slots=True)
class Reject:
    """A message that failed validation; counted against its vehicle (if the topic named one)."""

    vehicle_id: str | None
    reason: str


UplinkMessage = TelemetryBatch | VehicleStatus | CommandAck | Reject


class FleetPosition(NamedTuple):
    """Where an online vehicle is: what fleet-wide planning reads of it, and no more (a tuple: the heatmap
    reads the whole fleet every few seconds)."""

    vehicle_id: str
    kind: str
    lat: float
    lon: float


class VehicleSummary(NamedTuple):
    """A vehicle as a fleet-wide view shows it: its registry state and only the newest records asked for."""

    vehicle_id: str
    kind: str
    online: bool | None
    last_seen: float
    lat: float | None
    lon: float | None
    latest: dict[str, dict[str, Any]]
    """Kind -> its newest record (``seq``, ``ts`` and the data), for the kinds asked for that it has."""


@dataclass(frozen=True, slots=True)
class Received:
    """One validated (or rejected) uplink message and when the coordinator received it."""

    message: UplinkMessage
    at: float


@dataclass(frozen=True, slots=True)
class IngestResult:
    accepted: int = 0
    duplicates: int = 0


class CommandState(enum.StrEnum):
    """Where a command posted over REST stands. Later states outrank earlier ones, whatever the arrival order."""

    PENDING = "pending"          # stored, not yet handed to the broker
    NOT_SENT = "not_sent"        # the broker could not be reached; the command never left
    SENT = "sent"                # the broker has it (PUBACK); the vehicle has not answered yet
    EXPIRED = "expired"          # nobody answered before expires_at: it can no longer run
    RECEIVED = AckState.RECEIVED.value
    ACCEPTED = AckState.ACCEPTED.value
    REJECTED = AckState.REJECTED.value
    COMPLETED = AckState.COMPLETED.value
    FAILED = AckState.FAILED.value

    @property
    def rank(self) -> int:
        return _RANK[self]

    @property
    def final(self) -> bool:
        return self in (CommandState.NOT_SENT, CommandState.EXPIRED, CommandState.REJECTED, CommandState.COMPLETED,
                        CommandState.FAILED)


_RANK = {CommandState.PENDING: 0, CommandState.SENT: 1, CommandState.RECEIVED: 2, CommandState.ACCEPTED: 3,
         CommandState.NOT_SENT: 4, CommandState.EXPIRED: 4, CommandState.REJECTED: 4, CommandState.COMPLETED: 4,
         CommandState.FAILED: 4}


@dataclass(frozen=True, slots=True)
class CommandEvent:
    state: CommandState
    at: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """A command as posted, with every state it went through (oldest first)."""

    command_id: str
    vehicle_id: str
    action: str
    params: dict[str, Any]
    issued_at: float
    expires_at: float
    issued_by: str
    history: tuple[CommandEvent, ...] = field(default=())

    def state_at(self, now: float) -> CommandEvent:
        """The command's state: the highest-ranked event, or ``expired`` if it was never answered in time."""
        best = max(self.history, key=lambda e: (e.state.rank, e.at), default=CommandEvent(CommandState.PENDING,
                                                                                           self.issued_at))
        if best.state in (CommandState.PENDING, CommandState.SENT) and now > self.expires_at:
            return CommandEvent(CommandState.EXPIRED, self.expires_at, "the vehicle did not answer before it expired")
        return best


def command_history(events: Sequence[CommandEvent]) -> tuple[CommandEvent, ...]:
    return tuple(sorted(events, key=lambda e: (e.at, e.state.rank)))


class FleetStore(abc.ABC):
    """Fleet state: vehicles, telemetry history, alerts, commands, API keys and the audit log.

    Safe to call from several threads at once (the ingest thread and the API's worker threads).
    Transient failures (a busy or unreachable backend) raise :class:`coordinator.errors.StoreUnavailable`,
    which callers retry; anything else is a :class:`coordinator.errors.StoreError`.
    """

    h3_resolution: int
    reads_inline: bool = False
    """True when reads are local and never wait (SQLite in WAL mode): the ``*_async`` reads then run on the
    caller's event loop; otherwise on a worker thread, unless the store overrides them with native async."""

    # -- ingest -------------------------------------------------------------------------------------

    @abc.abstractmethod
    def ingest(self, items: Sequence[Received]) -> IngestResult:
        """Apply uplink messages, each whole; records already stored count as duplicates."""

    # -- vehicles and telemetry ---------------------------------------------------------------------

    @abc.abstractmethod
    def vehicle(self, vehicle_id: str) -> dict[str, Any] | None:
        """The vehicle's registry entry and newest record of each kind, or None if it never reported."""

    @abc.abstractmethod
    def find_vehicles(self, *, kind: str | None = None, online: bool | None = None,
                      near: tuple[float, float, float] | None = None, cells: set[str] | None = None,
                      after: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Vehicles matching every filter given, ordered by id, at most ``limit`` after the id ``after``.

        ``near`` is (lat, lon, radius_m) by great-circle distance; ``cells`` a set of H3 cells at the store's
        resolution.
        """

    async def vehicle_async(self, vehicle_id: str) -> dict[str, Any] | None:
        """:meth:`vehicle` for the REST API's event loop."""
        return await self.read_async(self.vehicle, vehicle_id)

    async def find_vehicles_async(self, *, kind: str | None = None, online: bool | None = None,
                                  near: tuple[float, float, float] | None = None, cells: set[str] | None = None,
                                  after: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """:meth:`find_vehicles` for the REST API's event loop."""
        return await self.read_async(self.find_vehicles, kind=kind, online=online, near=near, cells=cells,
                                     after=after, limit=limit)

    async def read_async(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Any of the blocking reads, from an event loop: inline when reads never wait, else on a thread."""
        # A thread hop costs more than a local indexed read, and under load far more (the GIL hand-off).
        if self.reads_inline:
            return fn(*args, **kwargs)
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def close_async(self) -> None:  # noqa: B027 - most stores hold nothing per event loop
        """Release what the ``*_async`` reads hold on the running event loop (call before it closes)."""

    def vehicles(self, *, online: bool | None = None) -> list[dict[str, Any]]:
        """Every vehicle (only the online or offline ones when ``online`` says), by id."""
        out: list[dict[str, Any]] = []
        after: str | None = None
        while page := self.find_vehicles(online=online, after=after, limit=1000):
            out.extend(page)
            after = page[-1]["vehicle_id"]
        return out

    def positions(self) -> list[FleetPosition]:
        """Every online vehicle with a known position, by id: the lean read fleet-wide planning needs (the
        whole fleet's full state costs ten times as much, in the process that serves the REST API)."""
        return [FleetPosition(v.vehicle_id, v.kind, v.lat, v.lon) for v in self.summaries(())
                if v.online and v.lat is not None and v.lon is not None]

    def summaries(self, kinds: Collection[str]) -> list[VehicleSummary]:
        """Every vehicle, by id, with the newest records of ``kinds`` only. Stores answer it with one lean
        read (the dashboard's live view reads the whole fleet every second)."""
        return [VehicleSummary(v["vehicle_id"], v["kind"], v["online"], v["last_seen"], v["lat"], v["lon"],
                               {k: r for k, r in v["latest"].items() if k in kinds}) for v in self.vehicles()]

    @abc.abstractmethod
    def online_count(self) -> int: ...

    @abc.abstractmethod
    def telemetry(self, vehicle_id: str, *, since: float | None, until: float | None, limit: int,
                  kind: str | None = None) -> list[dict[str, Any]]:
        """Records with ``since <= ts < until``, oldest first (by ts, then seq)."""

    @abc.abstractmethod
    def alerts(self, *, vehicle_id: str | None, kind: str | None, since: float | None,
               limit: int) -> list[dict[str, Any]]:
        """Alert-class records (battery low, link lost, failsafe, GPS fix lost...), newest first."""

    @abc.abstractmethod
    def stats(self) -> dict[str, dict[str, int]]:
        """Ingest counters per vehicle; ``gaps`` are numbers neither received nor accounted for by the edge."""

    @abc.abstractmethod
    def prune_telemetry(self, before_ts: float, *, max_records: int = 50_000) -> int:
        """Delete telemetry history older than ``before_ts`` (at most ``max_records``); how many went.

        The latest record of each kind, the registry and the counters stay.
        """

    # -- commands -----------------------------------------------------------------------------------

    @abc.abstractmethod
    def add_command(self, command: CommandRecord) -> None:
        """Store a new command (with its history so far)."""

    @abc.abstractmethod
    def add_command_event(self, vehicle_id: str, command_id: str, event: CommandEvent) -> None:
        """Record a state the command reached; the same state twice is kept once."""

    @abc.abstractmethod
    def command(self, vehicle_id: str, command_id: str) -> CommandRecord | None: ...

    @abc.abstractmethod
    def commands(self, vehicle_id: str, *, limit: int) -> list[CommandRecord]:
        """The vehicle's commands, newest first."""

    # -- orders -------------------------------------------------------------------------------------

    @abc.abstractmethod
    def add_order(self, order: Order, *, idempotency: tuple[str, str, str] | None = None) -> tuple[Order, bool]:
        """Store a new order; ``(order, True)``.

        With ``idempotency`` = ``(scope, key, fingerprint)``, a later call with the same scope and key stores
        nothing and returns ``(first order as it stands now, False)``.

        Raises:
            IdempotencyConflict: the key was used in this scope for a request with another fingerprint.
        """

    @abc.abstractmethod
    def prune_idempotency_keys(self, before_ts: float) -> int:
        """Forget Idempotency-Keys of orders placed before ``before_ts`` (the orders stay); how many went."""

    @abc.abstractmethod
    def order(self, order_id: str) -> Order | None: ...

    @abc.abstractmethod
    def orders(self, *, states: Collection[OrderState] | None = None, vehicle_id: str | None = None,
               before: str | None = None, limit: int = 100) -> list[Order]:
        """Orders matching the filters, newest first (ids sort by creation time), with ids below ``before``."""

    def orders_since(self, since: float, *, first_page: int = 1000) -> Iterator[Order]:
        """Orders placed at or after ``since``, newest first: read in pages that grow from ``first_page`` to
        1,000 (small first pages for a reader that expects few), until a page reaches back before ``since``."""
        limit, before = first_page, None
        while page := self.orders(before=before, limit=limit):
            yield from (o for o in page if o.created_at >= since)
            if page[-1].created_at < since:
                return
            before, limit = page[-1].order_id, min(1000, limit * 4)

    @abc.abstractmethod
    def open_orders(self) -> list[Order]:
        """Every order not yet in a final state."""

    @abc.abstractmethod
    def replace_order(self, old: Order, new: Order) -> bool:
        """Save ``new`` if the stored version is still ``old``'s, and log the events ``new`` adds to its
        history; False (nothing saved) if another version was saved in between."""

    @abc.abstractmethod
    def order_events(self, *, after: int, limit: int) -> list[tuple[int, str, OrderEvent]]:
        """``(seq, order_id, event)`` of every order transition with ``seq > after``, oldest first."""

    # -- declared demand events ---------------------------------------------------------------------

    @abc.abstractmethod
    def add_demand_event(self, event: dict[str, Any]) -> None:
        """Store a declared event (``event_id``, ``name``, ``lat``, ``lon``, ``radius_m``, ``start``, ``end``,
        ``extra_orders``, ``created_by``, ``created_at``)."""

    @abc.abstractmethod
    def demand_events(self, *, ending_after: float, limit: int = 1000) -> list[dict[str, Any]]:
        """Declared events that end after ``ending_after``, by start time."""

    # -- reposition moves ---------------------------------------------------------------------------

    @abc.abstractmethod
    def add_move(self, move: Move) -> None:
        """Store a new reposition move."""

    @abc.abstractmethod
    def replace_move(self, old: Move, new: Move) -> bool:
        """Save ``new`` if the stored version is still ``old``'s; False (nothing saved) otherwise."""

    @abc.abstractmethod
    def moves(self, *, open_only: bool = False, since: float | None = None, limit: int = 1000) -> list[Move]:
        """Reposition moves, newest first: the open ones only, or those created at or after ``since``."""

    # -- model registry -----------------------------------------------------------------------------

    @abc.abstractmethod
    def put_blob(self, sha256: str, data: bytes) -> None:
        """Keep ``data`` under its sha256 (a model file); storing it again changes nothing."""

    @abc.abstractmethod
    def blob(self, sha256: str) -> bytes | None: ...

    @abc.abstractmethod
    def add_model(self, record: dict[str, Any]) -> bool:
        """Register a model version (``name``, ``version``, ``uploaded_at``...); False if it exists already."""

    @abc.abstractmethod
    def model(self, name: str, version: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def models(self, name: str | None = None) -> list[dict[str, Any]]:
        """Registered versions (of ``name``, or all), newest upload first."""

    @abc.abstractmethod
    def rollout(self, name: str) -> dict[str, Any] | None:
        """The rollout of model ``name`` (with its ``revision``), or None before the first."""

    @abc.abstractmethod
    def rollouts(self) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def replace_rollout(self, name: str, revision: int, new: dict[str, Any]) -> bool:
        """Save ``new`` (its ``revision`` one above) if the stored rollout is still at ``revision`` (0: none
        yet); False otherwise."""

    # -- leadership ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def hold_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew the lease ``name`` for ``holder`` for ``ttl_s``; False while another holder has it.

        Several coordinators may share a store; work that must run once (dispatch rounds) runs only in the
        one holding its lease, and another takes over within ``ttl_s`` of its last renewal.
        """

    # -- API keys and audit -------------------------------------------------------------------------

    @abc.abstractmethod
    def add_api_key(self, key_id: str, name: str, role: str, secret_hash: bytes, created_at: float) -> None: ...

    @abc.abstractmethod
    def active_api_key(self, key_id: str) -> tuple[str, str, bytes] | None:
        """``(name, role, secret_hash)`` of a key that exists and is not revoked."""

    @abc.abstractmethod
    def api_keys(self) -> list[dict[str, Any]]:
        """Every key (revoked ones too), without secrets, oldest first."""

    @abc.abstractmethod
    def revoke_api_key(self, key_id: str, at: float) -> bool:
        """Revoke an active key; False if there is none with that id."""

    @abc.abstractmethod
    def record_audit(self, *, at: float, key_id: str, key_name: str, role: str, method: str, path: str,
                     status: int, client: str) -> None: ...

    @abc.abstractmethod
    def audit(self, *, since: float | None, limit: int) -> list[dict[str, Any]]:
        """Audit entries, newest first."""

    @abc.abstractmethod
    def close(self) -> None: ...


def open_store(settings: StoreSettings) -> FleetStore:
    """The store the settings choose: Redis when ``store.redis_url`` is set, else the embedded SQLite file."""
    if settings.redis_url:
        from coordinator.redis_store import RedisStore

        return RedisStore(settings.redis_url, h3_resolution=settings.h3_resolution,
                          password_file=settings.redis_password_file, key_prefix=settings.redis_key_prefix)
    from coordinator.embedded_store import EmbeddedStore

    return EmbeddedStore(settings.path, h3_resolution=settings.h3_resolution)
