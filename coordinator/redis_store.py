"""The Redis fleet store: the fleet's state in Redis, shared by any number of coordinators.

Layout (every key under ``store.redis_key_prefix``):

    v:<vid>            hash     registry entry, position, counters, and the newest record of each kind
                                (``L:<kind>``, its seq in ``S:<kind>``): one HGETALL reads a vehicle
    vehicles           zset     every vehicle id (score 0: ordered by id, paged with ZRANGEBYLEX)
    geo                GEO set  latest position of each vehicle (radius queries)
    cell:<h3>          set      vehicles whose latest position is in that H3 cell
    kind:<kind>        set      vehicles of that kind
    online             set      vehicles whose retained status says online
    tel:<vid>          hash     seq -> record: one entry per (vehicle, seq) is what de-duplicates
    telts:<vid>        zset     zero-padded seq scored by ts (time-range reads)
    alerts             zset     ``<vid>|<seq>`` of alert-class records scored by ts
    rejects            hash     vid -> rejected messages; ``reject:<vid>`` holds the last reason
    cmd:<vid>:<cid>    hash     a command as posted; ``cmdev:<vid>:<cid>`` state -> (at, reason)
    cmds:<vid>         zset     the vehicle's command ids scored by issue time
    key:<id>           hash     an API key (its secret only as SHA-256); ``keys`` zset by creation time
    o:<oid>            hash     an order: ``doc`` (MessagePack) and ``version``, swapped together by one script
    orders             zset     every order id (score 0: ids sort by creation time)
    orders:open        set      orders not yet in a final state
    orders:v:<vid>     zset     ids of the orders a vehicle has held
    oidem:<scope>:<k>  hash     an Idempotency-Key: the order it created and the request's fingerprint;
                                ``oidem-by-time`` zset of those keys scored by the order's creation time
    lease:<name>       string   who holds a lease (dispatch rounds), expiring with it
    devent:<id>        string   a declared demand event (MessagePack); ``devents`` zset of ids scored by its end
    rollout:<name>     hash     a model rollout: ``doc`` and ``revision``; ``rollouts`` set of their names
    layout             string   the layout version of the data (see ``LAYOUT``), upgraded at start
    order-events       stream   every order transition, entry ids ``<seq>-0`` from ``order-events:seq``
    audit              stream   the audit log

Each uplink message is applied whole by one Lua script; an ingest call pipelines them without MULTI/EXEC,
so readers are never held up behind a whole commit group (a failure midway is retried by the ingest, and
the messages already applied count as duplicates). Durability is Redis's: run it with ``appendonly yes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
import urllib.parse
from collections.abc import Callable, Collection, Coroutine, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import h3
import msgspec
import redis
import redis.asyncio

from coordinator.errors import IdempotencyConflict, StoreError, StoreUnavailable
from coordinator.orders import OPEN_STATES, Order, OrderEvent, OrderState, decode_order, encode_order
from coordinator.store import (
    UNATTRIBUTED,
    CommandEvent,
    CommandRecord,
    CommandState,
    FleetStore,
    IngestResult,
    Received,
    Reject,
    VehicleSummary,
    command_history,
    newest_by_kind,
    valid_position,
    vehicle_counters,
)
from coordinator.supply.moves import Move, decode_move, encode_move
from protocols import CommandAck, RecordClass, TelemetryBatch, VehicleStatus, great_circle_m

_decode_order_event = msgspec.msgpack.Decoder(OrderEvent).decode
log = logging.getLogger(__name__)

LAYOUT = 2
"""The version of the key layout this code writes: 1 kept no index of rollouts (found by scanning every key);
2 lists their names in ``rollouts``. A coordinator upgrades an older data set as it starts."""

P = ParamSpec("P")
T = TypeVar("T")

_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder().decode
_SEQ_WIDTH = 20

# Shared by the scripts: create the registry entry on first contact, keep last_seen the newest.
_TOUCH = """
local function touch(p, vid, at)
  local v = p .. 'v:' .. vid
  if redis.call('HSETNX', v, 'first_seen', at) == 1 then
    redis.call('HSET', v, 'last_seen', at, 'max_seq', 0, 'accepted', 0, 'duplicates', 0, 'evicted', 0, 'lost', 0)
    redis.call('ZADD', p .. 'vehicles', 0, vid)
  elseif tonumber(redis.call('HGET', v, 'last_seen') or '0') < tonumber(at) then
    redis.call('HSET', v, 'last_seen', at)
  end
  return v
end
"""

# ARGV: prefix, vid, received_at, max_seq, position (seq, lat, lon, cell or empty), n, then n groups of
# seq, ts, cls, kind, record, latest, report (``E<n>`` evicted, ``Q<n>`` quarantined up to n, or empty).
_INGEST_BATCH = """
local p, vid, at = ARGV[1], ARGV[2], ARGV[3]
local v, tel, telts = p .. 'v:' .. vid, p .. 'tel:' .. vid, p .. 'telts:' .. vid
local n = tonumber(ARGV[9])
-- Lua unpacks at most 8000 values at once; a batch may hold 10,000 records.
local function chunks(list)
  local out = {}
  for i = 1, #list, 4000 do out[#out + 1] = {unpack(list, i, math.min(i + 3999, #list))} end
  return out
end
-- One read of everything the batch compares against, then one write per key: every write is a command in
-- the append-only file, and that file's growth sets how often Redis rewrites it (a fork and a full pass
-- over the data set, the worst stall readers see).
local fields = {'first_seen', 'last_seen', 'max_seq', 'position_seq', 'h3', 'accepted', 'duplicates'}
local slot = {}
local seqs = {}
for i = 0, n - 1 do
  local b = 10 + i * 7
  seqs[i + 1] = ARGV[b]
  if ARGV[b + 5] ~= '' then
    table.insert(fields, 'S:' .. ARGV[b + 3])
    slot[ARGV[b + 3]] = #fields
  end
end
local known = redis.call('HMGET', v, unpack(fields))
local stored = {}
for _, part in ipairs(chunks(seqs)) do
  local got = redis.call('HMGET', tel, unpack(part))
  for k = 1, #part do stored[#stored + 1] = got[k] end
end
local updates = {}
local function set(field, value) updates[#updates + 1] = field; updates[#updates + 1] = value end
if not known[1] then
  -- Written now, not with the updates: an eviction report in this very batch adds to these counters.
  redis.call('HSET', v, 'first_seen', at, 'last_seen', at, 'evicted', 0, 'lost', 0)
  redis.call('ZADD', p .. 'vehicles', 0, vid)
elseif tonumber(known[2]) < tonumber(at) then
  set('last_seen', at)
end
local records, times, alerts, reports = {}, {}, {}, {}
local taken = {}
for i = 0, n - 1 do
  local b = 10 + i * 7
  local seq, ts, cls, kind, record, newest, report =
    ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5], ARGV[b + 6]
  if not stored[i + 1] and not taken[seq] then
    taken[seq] = true
    local padded = string.rep('0', 20 - #seq) .. seq
    records[#records + 1] = seq; records[#records + 1] = record
    times[#times + 1] = ts; times[#times + 1] = padded
    if cls == '0' then alerts[#alerts + 1] = ts; alerts[#alerts + 1] = vid .. '|' .. padded end
    if report ~= '' then reports[#reports + 1] = report end
  end
  if newest ~= '' then
    local seen = known[slot[kind]]
    if not seen or tonumber(seen) < tonumber(seq) then set('L:' .. kind, newest); set('S:' .. kind, seq) end
  end
end
local accepted = #records / 2
if accepted > 0 then
  for _, part in ipairs(chunks(records)) do redis.call('HSET', tel, unpack(part)) end
  for _, part in ipairs(chunks(times)) do redis.call('ZADD', telts, unpack(part)) end
  for _, part in ipairs(chunks(alerts)) do redis.call('ZADD', p .. 'alerts', unpack(part)) end
  set('accepted', tonumber(known[6] or '0') + accepted)
end
if accepted < n then set('duplicates', tonumber(known[7] or '0') + n - accepted) end
for _, report in ipairs(reports) do
  if string.sub(report, 1, 1) == 'E' then
    redis.call('HINCRBY', v, 'evicted', tonumber(string.sub(report, 2)))
  else
    -- Numbers below resume_seq that never arrived died with the edge's corrupt database.
    local resume = tonumber(string.sub(report, 2))
    local received = 0
    for _, s in ipairs(redis.call('HKEYS', tel)) do
      if tonumber(s) < resume then received = received + 1 end
    end
    local f = redis.call('HMGET', v, 'evicted', 'lost')
    local lost = resume - 1 - received - tonumber(f[1] or '0') - tonumber(f[2] or '0')
    if lost > 0 then redis.call('HINCRBY', v, 'lost', lost) end
  end
end
if not known[3] or tonumber(known[3]) < tonumber(ARGV[4]) then set('max_seq', ARGV[4]) end
local pseq, cell = ARGV[5], ARGV[8]
if cell ~= '' and (not known[4] or tonumber(known[4]) < tonumber(pseq)) then
  local old = known[5]
  if old and old ~= cell then redis.call('SREM', p .. 'cell:' .. old, vid) end
  if old ~= cell then redis.call('SADD', p .. 'cell:' .. cell, vid) end
  -- GEO sets stop at the Web Mercator limit; nearer the poles a vehicle is found by its cell only.
  if math.abs(tonumber(ARGV[6])) <= 85.05112878 then
    redis.call('GEOADD', p .. 'geo', ARGV[7], ARGV[6], vid)
  else
    redis.call('ZREM', p .. 'geo', vid)
  end
  set('lat', ARGV[6]); set('lon', ARGV[7]); set('h3', cell); set('position_seq', pseq)
end
if #updates > 0 then redis.call('HSET', v, unpack(updates)) end
return accepted
"""

# ARGV: prefix, vid, received_at, online (1/0), status ts, agent version, kind (empty: unchanged).
# Arrival order, not ``ts``, decides: a Last Will carries the time it was registered, older than the
# online status it overrides.
_INGEST_STATUS = _TOUCH + """
local p, vid = ARGV[1], ARGV[2]
local v = touch(p, vid, ARGV[3])
redis.call('HSET', v, 'online', ARGV[4], 'status_ts', ARGV[5], 'agent_version', ARGV[6])
if ARGV[4] == '1' then redis.call('SADD', p .. 'online', vid) else redis.call('SREM', p .. 'online', vid) end
if ARGV[7] ~= '' then
  local old = redis.call('HGET', v, 'kind')
  if old and old ~= ARGV[7] then redis.call('SREM', p .. 'kind:' .. old, vid) end
  redis.call('HSET', v, 'kind', ARGV[7])
  redis.call('SADD', p .. 'kind:' .. ARGV[7], vid)
end
return 1
"""

# ARGV: prefix, vid, received_at, command id, state, packed (at, reason)
_INGEST_ACK = _TOUCH + """
touch(ARGV[1], ARGV[2], ARGV[3])
return redis.call('HSETNX', ARGV[1] .. 'cmdev:' .. ARGV[2] .. ':' .. ARGV[4], ARGV[5], ARGV[6])
"""

# ARGV: prefix, vid, at, reason
_INGEST_REJECT = """
redis.call('HINCRBY', ARGV[1] .. 'rejects', ARGV[2], 1)
redis.call('HSET', ARGV[1] .. 'reject:' .. ARGV[2], 'reason', ARGV[4], 'at', ARGV[3])
return 1
"""


# What a vehicle shows: these fields in this order, then the newest record of each kind as ``kind, packed``
# pairs; the ingest's bookkeeping (counters, per-kind seqs) stays in Redis. An unknown vehicle is {}.
_VIEW_FIELDS = ("first_seen", "last_seen", "online", "status_ts", "agent_version", "max_seq", "kind", "lat", "lon",
                "h3")
_VIEW = """
local SLOT = {FIELDS}
local function view(key)
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then return {} end
  -- false, not nil: a nil would end the array early.
  local out = {false, false, false, false, false, false, false, false, false, false}
  local n = 10
  for i = 1, #flat, 2 do
    local f = flat[i]
    local at = SLOT[f]
    if at then
      out[at] = flat[i + 1]
    elseif string.byte(f, 1) == 76 and string.byte(f, 2) == 58 then  -- 'L:'
      out[n + 1] = string.sub(f, 3)
      out[n + 2] = flat[i + 1]
      n = n + 2
    end
  end
  return out
end
""".replace("FIELDS", ", ".join(f"['{f}'] = {i}" for i, f in enumerate(_VIEW_FIELDS, 1)))

# ARGV: prefix, then vehicle ids; one view per id.
_READ_VEHICLES = _VIEW + """
local out = {}
for i = 2, #ARGV do out[i - 1] = view(ARGV[1] .. 'v:' .. ARGV[i]) end
return out
"""


# ARGV: prefix, number of kinds k, the k kinds, then vehicle ids; for each id kind, online, last_seen, lat,
# lon and the k latest records (packed, or false), flat.
_READ_SUMMARIES = """
local k = tonumber(ARGV[2])
local fields = {'kind', 'online', 'last_seen', 'lat', 'lon'}
for i = 1, k do fields[#fields + 1] = 'L:' .. ARGV[2 + i] end
local out = {}
for i = 3 + k, #ARGV do
  local f = redis.call('HMGET', ARGV[1] .. 'v:' .. ARGV[i], unpack(fields))
  for j = 1, #fields do out[#out + 1] = f[j] end
end
return out
"""
SUMMARIES_PER_CALL = 200
"""Vehicles one summaries script reads: a call holds Redis for a millisecond or two (about 6 us a vehicle),
and every other client's command waits behind it."""


NEAR_INLINE_MAX = 300
"""A radius query's script returns the vehicles themselves when at most this many are inside it."""

# ARGV: prefix, lon, lat, radius_m, most to return inline. Replies {ids} or {ids, views}.
_READ_NEAR = _VIEW + """
local ids = redis.call('GEOSEARCH', ARGV[1] .. 'geo', 'FROMLONLAT', ARGV[2], ARGV[3], 'BYRADIUS', ARGV[4], 'm')
if #ids > tonumber(ARGV[5]) then return {ids} end
local views = {}
for i, id in ipairs(ids) do views[i] = view(ARGV[1] .. 'v:' .. id) end
return {ids, views}
"""


# Order scripts' ARGV: prefix, order id, doc, open (1/0), vehicle id or '', then as each script says.
_ORDER_EVENTS = """
local function log_events(p, oid, first, last)
  for i = first, last do
    local seq = redis.call('INCR', p .. 'order-events:seq')
    redis.call('XADD', p .. 'order-events', seq .. '-0', 'o', oid, 'e', ARGV[i])
  end
end
local function index(p, oid, open, vid)
  if open == '1' then redis.call('SADD', p .. 'orders:open', oid) else redis.call('SREM', p .. 'orders:open', oid) end
  if vid ~= '' then redis.call('ZADD', p .. 'orders:v:' .. vid, 0, oid) end
end
"""

# ...6: number of events n, 7: version, 8..7+n: events, 8+n: the request's fingerprint and 9+n the order's
# creation time when KEYS[1] names an idempotency record. Returns 0, or {order id, fingerprint} of the order
# that record already names.
_ADD_ORDER = _ORDER_EVENTS + """
local p, oid = ARGV[1], ARGV[2]
local n = tonumber(ARGV[6])
if #KEYS == 1 then
  local seen = redis.call('HMGET', KEYS[1], 'order_id', 'fingerprint')
  if seen[1] then return {seen[1], seen[2]} end
  redis.call('HSET', KEYS[1], 'order_id', oid, 'fingerprint', ARGV[8 + n])
  redis.call('ZADD', p .. 'oidem-by-time', ARGV[9 + n], KEYS[1])
end
redis.call('HSET', p .. 'o:' .. oid, 'doc', ARGV[3], 'version', ARGV[7])
redis.call('ZADD', p .. 'orders', 0, oid)
index(p, oid, ARGV[4], ARGV[5])
log_events(p, oid, 8, 7 + n)
return 0
"""

# ...6: the version expected, 7: the new one, 8...: the new events. Returns 1 if saved, 0 if outdated.
_REPLACE_ORDER = _ORDER_EVENTS + """
local p, oid = ARGV[1], ARGV[2]
local key = p .. 'o:' .. oid
if redis.call('HGET', key, 'version') ~= ARGV[6] then return 0 end
redis.call('HSET', key, 'doc', ARGV[3], 'version', ARGV[7])
index(p, oid, ARGV[4], ARGV[5])
log_events(p, oid, 8, #ARGV)
return 1
"""


# KEYS[1]: the move's hash, KEYS[2]: the open set, KEYS[3]: every move by creation time; ARGV: move id, doc,
# open (1/0), version expected ('' for a new move), new version, created at. Returns 1 if saved, 0 if the
# stored version differs (or the move already exists).
_PUT_MOVE = """
local stored = redis.call('HGET', KEYS[1], 'version')
if ARGV[4] == '' then
  if stored then return 0 end
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[1])
elseif stored ~= ARGV[4] then return 0 end
redis.call('HSET', KEYS[1], 'doc', ARGV[2], 'version', ARGV[5])
if ARGV[3] == '1' then redis.call('SADD', KEYS[2], ARGV[1]) else redis.call('SREM', KEYS[2], ARGV[1]) end
return 1
"""

# KEYS[1]: the rollout's hash, KEYS[2]: every rollout's name; ARGV: revision expected (0: none yet), new
# revision, doc, name. 1 if saved.
_PUT_ROLLOUT = """
local stored = redis.call('HGET', KEYS[1], 'revision')
if ARGV[1] == '0' then
  if stored then return 0 end
elseif stored ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'revision', ARGV[2], 'doc', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[4])
return 1
"""

# KEYS[1]: the lease; ARGV: holder, ttl in ms. Taken if free, renewed if ours.
_HOLD_LEASE = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


def _vehicle_from(vid: str, view: list[bytes | None]) -> dict[str, Any] | None:
    """A vehicle as the API shows it, from the read scripts' view of its hash."""
    if not view:
        return None
    first_seen, last_seen, online, status_ts, agent_version, max_seq, kind, lat, lon, cell = view[:10]
    latest = {}
    for i in range(10, len(view), 2):
        seq, ts, data = _unpack(view[i + 1])  # type: ignore[arg-type]
        latest[view[i].decode()] = {"seq": seq, "ts": ts, **data}  # type: ignore[union-attr]
    return {
        "vehicle_id": vid, "first_seen": float(first_seen),  # type: ignore[arg-type]
        "last_seen": float(last_seen),  # type: ignore[arg-type]
        "online": None if online is None else online == b"1",
        "status_ts": None if status_ts is None else float(status_ts),
        "agent_version": agent_version.decode() if agent_version else "", "last_seq": int(max_seq or 0),
        "kind": kind.decode() if kind else "", "lat": None if lat is None else float(lat),
        "lon": None if lon is None else float(lon), "h3": cell.decode() if cell else None, "latest": latest,
    }


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    """Redis errors as the store's own: a lost connection may heal (retry), anything else is a bug or setup."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailable(f"Redis unreachable: {exc}") from exc
    except redis.RedisError as exc:
        raise StoreError(f"Redis: {exc}") from exc


def _translated(fn: Callable[P, T]) -> Callable[P, T]:
    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        with _store_errors():
            return fn(*args, **kwargs)

    return call


def _translated_async(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    @functools.wraps(fn)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        with _store_errors():
            return await fn(*args, **kwargs)

    return call


_Plan = Generator[list[tuple[Any, ...]], list[Any], T]


def _without_password(url: str) -> str:
    """``url`` fit for logs and error messages: any password in it replaced by ``***``."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}***@{host}"))


def _num(value: bytes | None, default: float | None = None) -> float | None:
    return default if value is None else float(value)


def _padded(seq: int) -> str:
    return str(seq).zfill(_SEQ_WIDTH)


class RedisStore(FleetStore):
    """Fleet state in Redis. Thread-safe: every call takes a connection from the client's pool."""

    def __init__(self, url: str, *, h3_resolution: int = 8, password_file: str = "", key_prefix: str = "fleetedge:",
                 socket_timeout_s: float = 5.0, loading_wait_s: float = 300.0) -> None:
        self.h3_resolution = h3_resolution
        self._p = key_prefix
        password = Path(password_file).read_text().strip() if password_file else None
        self._url = url
        self._shown_url = _without_password(url)
        self._client_options: dict[str, Any] = {
            "socket_timeout": socket_timeout_s, "socket_connect_timeout": socket_timeout_s,
            "health_check_interval": 30, "protocol": 2, **({"password": password} if password else {})}
        self._async: tuple[asyncio.AbstractEventLoop, Any] | None = None
        try:
            # redis-py's reply types are unions over decode_responses and RESP versions; we run one setup
            # (bytes, RESP2), so replies are handled as what that returns.
            self._r: Any = redis.Redis.from_url(url, **self._client_options)
            self._wait_while_loading(loading_wait_s)
        except (redis.RedisError, ValueError) as exc:
            raise StoreError(f"cannot reach the Redis store at {self._shown_url}: {exc}; is redis-server running "
                             "there?") from exc
        self._batch = self._r.register_script(_INGEST_BATCH)
        self._status = self._r.register_script(_INGEST_STATUS)
        self._ack = self._r.register_script(_INGEST_ACK)
        self._reject = self._r.register_script(_INGEST_REJECT)
        self._add_order = self._r.register_script(_ADD_ORDER)
        self._replace_order = self._r.register_script(_REPLACE_ORDER)
        self._hold_lease = self._r.register_script(_HOLD_LEASE)
        self._put_move = self._r.register_script(_PUT_MOVE)
        self._put_rollout = self._r.register_script(_PUT_ROLLOUT)
        with _store_errors():
            self._upgrade_layout()

    def _wait_while_loading(self, wait_s: float) -> None:
        """Ping until Redis has loaded its data set: after a reboot both start together, and a big append-only
        file takes a while to replay."""
        started = time.monotonic()
        next_note = started
        while True:
            try:
                self._r.ping()
                if time.monotonic() - started > 1.0:
                    log.info("the Redis store at %s has loaded its data set", self._shown_url)
                return
            except redis.BusyLoadingError:
                waited = time.monotonic() - started
                if waited >= wait_s:
                    raise StoreError(f"the Redis store at {self._shown_url} was still loading its data set after "
                                     f"{wait_s:g} s; try again once its log says it is ready") from None
                if time.monotonic() >= next_note:
                    log.warning("the Redis store at %s is loading its data set; waiting (%.0f s so far)",
                                self._shown_url, waited)
                    next_note = time.monotonic() + 30.0
                time.sleep(1.0)

    def _upgrade_layout(self) -> None:
        """Bring a data set written by an older FleetEdge to :data:`LAYOUT` (each step is idempotent, so
        coordinators starting together may both run it)."""
        found = self._r.get(self._k("layout"))
        layout = int(found) if found is not None else 1
        if layout > LAYOUT:
            raise StoreError(f"the Redis store at {self._shown_url} (prefix {self._p!r}) was written by a newer "
                             f"FleetEdge (key layout {layout}; this one knows up to {LAYOUT}): upgrade this "
                             "coordinator")
        if layout < 2:
            names = [key.decode()[len(self._k("rollout", "")):]
                     for key in self._r.scan_iter(match=self._k("rollout", "*"), count=1000)]
            if names:
                self._r.sadd(self._k("rollouts"), *names)
                log.info("Redis store: %d model rollouts indexed (key layout 1 -> 2)", len(names))
        if layout < LAYOUT:
            self._r.set(self._k("layout"), LAYOUT)

    def _k(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    # -- ingest -------------------------------------------------------------------------------------

    @_translated
    def ingest(self, items: Sequence[Received]) -> IngestResult:
        # No MULTI/EXEC: a transaction would stall every reader (and other coordinators) for the whole group.
        pipe = self._r.pipeline(transaction=False)
        sizes: list[int] = []
        for item in items:
            m = item.message
            if isinstance(m, TelemetryBatch):
                self._batch(args=self._batch_args(m, item.at), client=pipe)
                sizes.append(len(m.records))
            elif isinstance(m, VehicleStatus):
                self._status(args=[self._p, m.vehicle_id, repr(item.at), "1" if m.online else "0", repr(m.ts),
                                   m.agent_version, m.kind], client=pipe)
            elif isinstance(m, CommandAck):
                self._ack(args=[self._p, m.vehicle_id, repr(item.at), m.command_id, m.state.value,
                                _pack((m.ts, m.reason))], client=pipe)
            elif isinstance(m, Reject):
                self._reject(args=[self._p, m.vehicle_id or UNATTRIBUTED, repr(item.at), m.reason[:500]], client=pipe)
        results = pipe.execute()
        accepted = duplicates = 0
        batch_results = (r for item, r in zip(items, results, strict=True) if isinstance(item.message, TelemetryBatch))
        for size, result in zip(sizes, batch_results, strict=True):
            accepted += int(result)
            duplicates += size - int(result)
        return IngestResult(accepted, duplicates)

    def _batch_args(self, batch: TelemetryBatch, at: float) -> list[Any]:
        newest = newest_by_kind(batch.records)
        position = newest.get("position")
        point = valid_position(position.data) if position is not None else None
        if position is not None and point is not None:
            cell = h3.latlng_to_cell(point[0], point[1], self.h3_resolution)
            pos = [position.seq, repr(point[0]), repr(point[1]), cell]
        else:
            pos = [0, "0", "0", ""]
        args: list[Any] = [self._p, batch.vehicle_id, repr(at), max(r.seq for r in batch.records), *pos,
                           len(batch.records)]
        for r in batch.records:
            report = ""
            if r.kind == "outbox.evicted" and isinstance(n := r.data.get("records"), int) and n > 0:
                report = f"E{n}"
            elif r.kind == "outbox.quarantined" and isinstance(n := r.data.get("resume_seq"), int) and n > 1:
                report = f"Q{n}"
            newest_packed = _pack((r.seq, r.ts, r.data)) if newest[r.kind] is r else ""
            args += [r.seq, repr(r.ts), int(r.cls), r.kind, _pack((r.ts, r.kind, int(r.cls), r.data)), newest_packed,
                     report]
        return args

    # -- vehicles and telemetry ---------------------------------------------------------------------

    # The hot reads are written once, as plans: generators that yield a batch of Redis commands and get
    # their replies back. One driver runs them on the blocking client (worker threads), another on the
    # asyncio client, so the REST API's event loop reads without a thread hop.

    def _run(self, plan: _Plan[T]) -> T:
        try:
            commands = next(plan)
            while True:
                if len(commands) == 1:
                    commands = plan.send([self._r.execute_command(*commands[0])])
                    continue
                pipe = self._r.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)
                commands = plan.send(pipe.execute())
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def _run_async(self, plan: _Plan[T]) -> T:
        client = self._async_client()
        try:
            commands = next(plan)
            while True:
                if len(commands) == 1:  # a pipeline's bookkeeping costs more than the round trip it saves
                    commands = plan.send([await client.execute_command(*commands[0])])
                    continue
                pipe = client.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)
                commands = plan.send(await pipe.execute())
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _async_client(self) -> Any:
        # An asyncio client belongs to one event loop; tests run several loops one after another.
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            self._async = (loop, redis.asyncio.Redis.from_url(self._url, **self._client_options))
        return self._async[1]

    def _vehicles_plan(self, ids: Sequence[str]) -> _Plan[list[dict[str, Any]]]:
        # One script call returns every hash: one reply for hiredis to parse, not one per vehicle.
        [replies] = yield [("EVAL", _READ_VEHICLES, 0, self._p, *ids)]
        return [v for vid, flat in zip(ids, replies, strict=True) if (v := _vehicle_from(vid, flat)) is not None]

    def _vehicle_plan(self, vehicle_id: str) -> _Plan[dict[str, Any] | None]:
        found = yield from self._vehicles_plan([vehicle_id])
        return found[0] if found else None

    def _find_plan(self, kind: str | None, online: bool | None, near: tuple[float, float, float] | None,
                   cells: set[str] | None, after: str | None, limit: int) -> _Plan[list[dict[str, Any]]]:
        lookups: list[tuple[Any, ...]] = []
        if near is not None:
            lat, lon, radius = near
            # Redis measures on a slightly different sphere: search a hair wider, then decide exactly below.
            lookups.append(("EVAL", _READ_NEAR, 0, self._p, lon, lat, radius * 1.001 + 1, NEAR_INLINE_MAX))
        if cells is not None:
            lookups.append(("SUNION", *[self._k("cell", c) for c in cells]) if cells else ("SMEMBERS", self._k("none")))
        if kind is not None:
            lookups.append(("SMEMBERS", self._k("kind", kind)))
        if online:
            lookups.append(("SMEMBERS", self._k("online")))

        def keep(v: dict[str, Any]) -> bool:
            if online is False and v["online"]:
                return False
            return near is None or (v["lat"] is not None and
                                    great_circle_m(near[0], near[1], v["lat"], v["lon"]) <= near[2])

        out: list[dict[str, Any]] = []
        chunk = max(limit, 100)
        if lookups:
            candidates: set[str] | None = None
            fetched: dict[str, dict[str, Any] | None] = {}
            replies = yield lookups
            if near is not None:
                # The radius script: the ids within it, and each one's hash when there are few enough.
                near_reply, replies = replies[0], replies[1:]
                ids_b = near_reply[0]
                candidates = {i.decode() for i in ids_b}
                if len(near_reply) > 1:
                    fetched = {i.decode(): _vehicle_from(i.decode(), flat) for i, flat in zip(
                        ids_b, near_reply[1], strict=True)}
            for ids in replies:
                found = {i.decode() for i in ids}
                candidates = found if candidates is None else candidates & found
            ordered = sorted(c for c in candidates or () if after is None or c > after)
            if fetched:
                out = [v for c in ordered if (v := fetched.get(c)) is not None and keep(v)]
                return out[:limit]
            for start in range(0, len(ordered), chunk):
                out += [v for v in (yield from self._vehicles_plan(ordered[start:start + chunk])) if keep(v)]
                if len(out) >= limit:
                    break
            return out[:limit]
        cursor = f"({after}" if after is not None else "-"
        while len(out) < limit:
            [page_b] = yield [("ZRANGEBYLEX", self._k("vehicles"), cursor, "+", "LIMIT", 0, chunk)]
            page = [i.decode() for i in page_b]
            if not page:
                break
            out += [v for v in (yield from self._vehicles_plan(page)) if keep(v)]
            cursor = f"({page[-1]}"
        return out[:limit]

    @_translated
    def vehicle(self, vehicle_id: str) -> dict[str, Any] | None:
        return self._run(self._vehicle_plan(vehicle_id))

    @_translated_async
    async def vehicle_async(self, vehicle_id: str) -> dict[str, Any] | None:
        return await self._run_async(self._vehicle_plan(vehicle_id))

    @_translated
    def find_vehicles(self, *, kind: str | None = None, online: bool | None = None,
                      near: tuple[float, float, float] | None = None, cells: set[str] | None = None,
                      after: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return self._run(self._find_plan(kind, online, near, cells, after, limit))

    @_translated_async
    async def find_vehicles_async(self, *, kind: str | None = None, online: bool | None = None,
                                  near: tuple[float, float, float] | None = None, cells: set[str] | None = None,
                                  after: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return await self._run_async(self._find_plan(kind, online, near, cells, after, limit))

    @_translated
    def summaries(self, kinds: Collection[str]) -> list[VehicleSummary]:
        kinds = list(kinds)
        width = 5 + len(kinds)
        ids = [i.decode() for i in self._r.zrange(self._k("vehicles"), 0, -1)]
        out: list[VehicleSummary] = []
        for start in range(0, len(ids), SUMMARIES_PER_CALL):
            chunk = ids[start:start + SUMMARIES_PER_CALL]
            flat = self._r.execute_command("EVAL", _READ_SUMMARIES, 0, self._p, len(kinds), *kinds, *chunk)
            for i, vid in enumerate(chunk):
                kind, online, last_seen, lat, lon, *packed = flat[width * i:width * (i + 1)]
                if last_seen is None:
                    continue  # removed between the two reads
                latest = {}
                for name, blob in zip(kinds, packed, strict=True):
                    if blob is not None:
                        seq, ts, data = _unpack(blob)
                        latest[name] = {"seq": seq, "ts": ts, **data}
                out.append(VehicleSummary(vid, kind.decode() if kind else "",
                                          None if online is None else online == b"1", float(last_seen),
                                          None if lat is None else float(lat), None if lon is None else float(lon),
                                          latest))
        return out

    @_translated
    def online_count(self) -> int:
        return int(self._r.scard(self._k("online")))

    @_translated
    def telemetry(self, vehicle_id: str, *, since: float | None, until: float | None, limit: int,
                  kind: str | None = None) -> list[dict[str, Any]]:
        low = repr(since) if since is not None else "-inf"
        high = f"({until!r}" if until is not None else "+inf"
        out: list[dict[str, Any]] = []
        offset, chunk = 0, max(limit, 500) if kind is None else 5000
        while len(out) < limit:
            seqs = self._r.zrangebyscore(self._k("telts", vehicle_id), low, high, start=offset, num=chunk)
            if not seqs:
                break
            offset += len(seqs)
            numbers = [int(s) for s in seqs]
            for seq, packed in zip(numbers, self._r.hmget(self._k("tel", vehicle_id), numbers), strict=True):
                if packed is None:
                    continue  # pruned between the two reads
                ts, k, cls, data = _unpack(packed)
                if kind is None or k == kind:
                    out.append({"seq": seq, "ts": ts, "kind": k, "cls": RecordClass(cls).name.lower(), "data": data})
        return out[:limit]

    @_translated
    def alerts(self, *, vehicle_id: str | None, kind: str | None, since: float | None,
               limit: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        offset, chunk = 0, max(limit, 200)
        while len(out) < limit:
            members = self._r.zrevrangebyscore(self._k("alerts"), "+inf", repr(since or 0.0), start=offset, num=chunk)
            if not members:
                break
            offset += len(members)
            refs = [m.decode().rpartition("|") for m in members]
            refs = [(vid, int(seq)) for vid, _, seq in refs if vehicle_id is None or vid == vehicle_id]
            pipe = self._r.pipeline(transaction=False)
            for vid, seq in refs:
                pipe.hget(self._k("tel", vid), seq)
            for (vid, seq), packed in zip(refs, pipe.execute(), strict=True):
                if packed is None:
                    continue
                ts, k, _cls, data = _unpack(packed)
                if kind is None or k == kind:
                    out.append({"vehicle_id": vid, "seq": seq, "ts": ts, "kind": k, "data": data})
        return out[:limit]

    @_translated
    def stats(self) -> dict[str, dict[str, int]]:
        ids = [i.decode() for i in self._r.zrange(self._k("vehicles"), 0, -1)]
        pipe = self._r.pipeline(transaction=False)
        for vid in ids:
            pipe.hmget(self._k("v", vid), "max_seq", "accepted", "duplicates", "evicted", "lost")
        out: dict[str, dict[str, int]] = {}
        for vid, fields in zip(ids, pipe.execute(), strict=True):
            out[vid] = vehicle_counters(*(int(f or 0) for f in fields))
        for vid_b, count in self._r.hgetall(self._k("rejects")).items():
            out.setdefault(vid_b.decode(), vehicle_counters())["rejected"] = int(count)
        return out

    @_translated
    def prune_telemetry(self, before_ts: float, *, max_records: int = 50_000) -> int:
        removed = 0
        for vid_b in self._r.zrange(self._k("vehicles"), 0, -1):
            if removed >= max_records:
                break
            vid = vid_b.decode()
            old = self._r.zrangebyscore(self._k("telts", vid), "-inf", f"({before_ts!r}", start=0,
                                        num=max_records - removed)
            if not old:
                continue
            pipe = self._r.pipeline(transaction=True)
            pipe.hdel(self._k("tel", vid), *[int(s) for s in old])
            pipe.zrem(self._k("telts", vid), *old)
            pipe.zrem(self._k("alerts"), *[f"{vid}|{s.decode()}" for s in old])
            removed += int(pipe.execute()[0])
        return removed

    # -- commands -----------------------------------------------------------------------------------

    @_translated
    def add_command(self, command: CommandRecord) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(self._k("cmd", command.vehicle_id, command.command_id), mapping={
            "action": command.action, "params": _pack(command.params), "issued_at": repr(command.issued_at),
            "expires_at": repr(command.expires_at), "issued_by": command.issued_by})
        pipe.zadd(self._k("cmds", command.vehicle_id), {command.command_id: command.issued_at})
        for event in command.history:
            pipe.hsetnx(self._k("cmdev", command.vehicle_id, command.command_id), event.state.value,
                        _pack((event.at, event.reason)))
        pipe.execute()

    @_translated
    def add_command_event(self, vehicle_id: str, command_id: str, event: CommandEvent) -> None:
        self._r.hsetnx(self._k("cmdev", vehicle_id, command_id), event.state.value, _pack((event.at, event.reason)))

    @_translated
    def command(self, vehicle_id: str, command_id: str) -> CommandRecord | None:
        found = self._commands(vehicle_id, [command_id])
        return found[0] if found else None

    @_translated
    def commands(self, vehicle_id: str, *, limit: int) -> list[CommandRecord]:
        ids = [c.decode() for c in self._r.zrevrange(self._k("cmds", vehicle_id), 0, limit - 1)]
        return self._commands(vehicle_id, ids)

    def _commands(self, vehicle_id: str, ids: list[str]) -> list[CommandRecord]:
        pipe = self._r.pipeline(transaction=False)
        for cid in ids:
            pipe.hgetall(self._k("cmd", vehicle_id, cid))
            pipe.hgetall(self._k("cmdev", vehicle_id, cid))
        replies = pipe.execute()
        out = []
        for i, cid in enumerate(ids):
            h = replies[2 * i]
            if not h:
                continue
            events = [CommandEvent(CommandState(state.decode()), *_unpack(packed))
                      for state, packed in replies[2 * i + 1].items()]
            out.append(CommandRecord(cid, vehicle_id, h[b"action"].decode(), _unpack(h[b"params"]),
                                     float(h[b"issued_at"]), float(h[b"expires_at"]), h[b"issued_by"].decode(),
                                     command_history(events)))
        return out

    # -- orders -------------------------------------------------------------------------------------

    @_translated
    def add_order(self, order: Order, *, idempotency: tuple[str, str, str] | None = None) -> tuple[Order, bool]:
        events = [encode_order(e) for e in order.history]
        keys = [self._k("oidem", idempotency[0], idempotency[1])] if idempotency else []
        args: list[Any] = [self._p, order.order_id, encode_order(order), "0" if order.state.final else "1",
                           order.vehicle_id or "", len(events), order.version, *events]
        if idempotency:
            args += [idempotency[2], repr(order.created_at)]
        seen = self._add_order(keys=keys, args=args)
        if seen == 0:
            return order, True
        first_id, fingerprint = seen[0].decode(), seen[1].decode()
        assert idempotency is not None
        if fingerprint != idempotency[2]:
            raise IdempotencyConflict(f"Idempotency-Key {idempotency[1]!r} was used for a different order "
                                      f"({first_id})")
        first = self.order(first_id)
        if first is None:
            raise StoreError(f"order {first_id} of Idempotency-Key {idempotency[1]!r} is missing")
        return first, False

    @_translated
    def prune_idempotency_keys(self, before_ts: float) -> int:
        index = self._k("oidem-by-time")
        stale = self._r.zrangebyscore(index, "-inf", f"({before_ts!r}")
        if not stale:
            return 0
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(*stale)
        pipe.zrem(index, *stale)
        pipe.execute()
        return len(stale)

    @_translated
    def order(self, order_id: str) -> Order | None:
        doc = self._r.hget(self._k("o", order_id), "doc")
        return None if doc is None else decode_order(doc)

    def _orders_by_id(self, ids: Sequence[str]) -> list[Order]:
        pipe = self._r.pipeline(transaction=False)
        for oid in ids:
            pipe.hget(self._k("o", oid), "doc")
        return [decode_order(doc) for doc in pipe.execute() if doc is not None]

    @_translated
    def orders(self, *, states: Collection[OrderState] | None = None, vehicle_id: str | None = None,
               before: str | None = None, limit: int = 100) -> list[Order]:
        index = self._k("orders:v", vehicle_id) if vehicle_id is not None else self._k("orders")
        if states is not None and set(states) <= OPEN_STATES and vehicle_id is None:
            # Open orders are few beside the whole history: filter their set instead of paging through all.
            ids = sorted((i.decode() for i in self._r.smembers(self._k("orders:open"))), reverse=True)
            ids = [i for i in ids if before is None or i < before]
            return [o for o in self._orders_by_id(ids) if o.state in states][:limit]
        out: list[Order] = []
        upper = f"({before}" if before is not None else "+"
        while len(out) < limit:
            page = [i.decode() for i in self._r.zrevrangebylex(index, upper, "-", start=0, num=max(limit, 100))]
            if not page:
                break
            out += [o for o in self._orders_by_id(page) if states is None or o.state in states]
            upper = f"({page[-1]}"
        return out[:limit]

    @_translated
    def open_orders(self) -> list[Order]:
        return self.orders(states=OPEN_STATES, limit=1 << 62)

    @_translated
    def replace_order(self, old: Order, new: Order) -> bool:
        events = [encode_order(e) for e in new.history[len(old.history):]]
        done = self._replace_order(args=[self._p, new.order_id, encode_order(new), "0" if new.state.final else "1",
                                         new.vehicle_id or "", old.version, new.version, *events])
        return bool(done)

    @_translated
    def order_events(self, *, after: int, limit: int) -> list[tuple[int, str, OrderEvent]]:
        entries = self._r.xrange(self._k("order-events"), f"({after}-0", "+", count=limit)
        return [(int(eid.split(b"-")[0]), fields[b"o"].decode(), _decode_order_event(fields[b"e"]))
                for eid, fields in entries]

    # -- declared demand events ---------------------------------------------------------------------

    @_translated
    def add_demand_event(self, event: dict[str, Any]) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.set(self._k("devent", event["event_id"]), _pack(event))
        pipe.zadd(self._k("devents"), {event["event_id"]: event["end"]})
        pipe.execute()

    @_translated
    def demand_events(self, *, ending_after: float, limit: int = 1000) -> list[dict[str, Any]]:
        ids = [i.decode() for i in self._r.zrangebyscore(self._k("devents"), f"({ending_after!r}", "+inf")]
        if not ids:
            return []
        docs = self._r.mget([self._k("devent", i) for i in ids])
        found = [_unpack(doc) for doc in docs if doc is not None]
        return sorted(found, key=lambda e: (e["start"], e["event_id"]))[:limit]

    # -- reposition moves ---------------------------------------------------------------------------

    def _save_move(self, new: Move, expected: int | None) -> bool:
        saved = self._put_move(keys=[self._k("mv", new.move_id), self._k("moves:open"), self._k("moves")],
                               args=[new.move_id, encode_move(new), "0" if new.state.final else "1",
                                     "" if expected is None else expected, new.version, repr(new.created_at)])
        return bool(saved)

    @_translated
    def add_move(self, move: Move) -> None:
        if not self._save_move(move, None):
            raise StoreError(f"reposition move {move.move_id} exists already")

    @_translated
    def replace_move(self, old: Move, new: Move) -> bool:
        return self._save_move(new, old.version)

    @_translated
    def moves(self, *, open_only: bool = False, since: float | None = None, limit: int = 1000) -> list[Move]:
        if open_only:
            ids = sorted((i.decode() for i in self._r.smembers(self._k("moves:open"))), reverse=True)
        else:
            low = "-inf" if since is None else repr(since)
            ids = [i.decode() for i in self._r.zrevrangebyscore(self._k("moves"), "+inf", low, start=0, num=limit)]
        pipe = self._r.pipeline(transaction=False)
        for mid in ids:
            pipe.hget(self._k("mv", mid), "doc")
        found = [decode_move(doc) for doc in pipe.execute() if doc is not None]
        found.sort(key=lambda m: (m.created_at, m.move_id), reverse=True)
        return [m for m in found if since is None or m.created_at >= since][:limit]

    # -- model registry -----------------------------------------------------------------------------

    @_translated
    def put_blob(self, sha256: str, data: bytes) -> None:
        self._r.set(self._k("blob", sha256), data, nx=True)

    @_translated
    def blob(self, sha256: str) -> bytes | None:
        data = self._r.get(self._k("blob", sha256))
        return None if data is None else bytes(data)

    @_translated
    def add_model(self, record: dict[str, Any]) -> bool:
        member = f"{record['name']}/{record['version']}"
        if not self._r.set(self._k("model", member), _pack(record), nx=True):
            return False
        self._r.zadd(self._k("models"), {member: record["uploaded_at"]})
        return True

    @_translated
    def model(self, name: str, version: str) -> dict[str, Any] | None:
        doc = self._r.get(self._k("model", f"{name}/{version}"))
        return None if doc is None else dict(_unpack(doc))

    @_translated
    def models(self, name: str | None = None) -> list[dict[str, Any]]:
        members = [m.decode() for m in self._r.zrevrange(self._k("models"), 0, -1)]
        members = [m for m in members if name is None or m.split("/", 1)[0] == name]
        if not members:
            return []
        return [dict(_unpack(doc)) for doc in self._r.mget([self._k("model", m) for m in members]) if doc is not None]

    @_translated
    def rollout(self, name: str) -> dict[str, Any] | None:
        doc = self._r.hget(self._k("rollout", name), "doc")
        return None if doc is None else dict(_unpack(doc))

    @_translated
    def rollouts(self) -> list[dict[str, Any]]:
        names = sorted(n.decode() for n in self._r.smembers(self._k("rollouts")))
        pipe = self._r.pipeline(transaction=False)
        for name in names:
            pipe.hget(self._k("rollout", name), "doc")
        return [dict(_unpack(doc)) for doc in pipe.execute() if doc is not None]

    @_translated
    def replace_rollout(self, name: str, revision: int, new: dict[str, Any]) -> bool:
        return bool(self._put_rollout(keys=[self._k("rollout", name), self._k("rollouts")],
                                      args=[str(revision), str(new["revision"]), _pack(new), name]))

    # -- leadership ---------------------------------------------------------------------------------

    @_translated
    def hold_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        return bool(self._hold_lease(keys=[self._k("lease", name)], args=[holder, max(1, round(ttl_s * 1000))]))

    # -- API keys and audit -------------------------------------------------------------------------

    @_translated
    def add_api_key(self, key_id: str, name: str, role: str, secret_hash: bytes, created_at: float) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(self._k("key", key_id), mapping={"name": name, "role": role, "secret_hash": secret_hash,
                                                   "created_at": repr(created_at)})
        pipe.zadd(self._k("keys"), {key_id: created_at})
        pipe.execute()

    @_translated
    def active_api_key(self, key_id: str) -> tuple[str, str, bytes] | None:
        name, role, secret_hash, revoked_at = self._r.hmget(self._k("key", key_id), "name", "role", "secret_hash",
                                                            "revoked_at")
        if name is None or revoked_at is not None:
            return None
        return name.decode(), role.decode(), secret_hash

    @_translated
    def api_keys(self) -> list[dict[str, Any]]:
        ids = [k.decode() for k in self._r.zrange(self._k("keys"), 0, -1)]
        pipe = self._r.pipeline(transaction=False)
        for key_id in ids:
            pipe.hmget(self._k("key", key_id), "name", "role", "created_at", "revoked_at")
        return [{"key_id": key_id, "name": name.decode(), "role": role.decode(), "created_at": float(created),
                 "revoked_at": _num(revoked)}
                for key_id, (name, role, created, revoked) in zip(ids, pipe.execute(), strict=True) if name]

    @_translated
    def revoke_api_key(self, key_id: str, at: float) -> bool:
        key = self._k("key", key_id)
        # WATCH makes check-then-set one step even with several coordinators revoking at once.
        with self._r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    if not pipe.hexists(key, "name") or pipe.hexists(key, "revoked_at"):
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.hset(key, "revoked_at", repr(at))
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    @_translated
    def record_audit(self, *, at: float, key_id: str, key_name: str, role: str, method: str, path: str,
                     status: int, client: str) -> None:
        self._r.xadd(self._k("audit"), {"e": _pack((at, key_id, key_name, role, method, path, status, client))},
                     maxlen=1_000_000, approximate=True)

    @_translated
    def audit(self, *, since: float | None, limit: int) -> list[dict[str, Any]]:
        # Stream ids start with the Redis server's clock in ms; filter on the entry's own time as well.
        low = f"{max(0, math.floor((since or 0.0) * 1000) - 60_000)}-0"
        names = ("at", "key_id", "key_name", "role", "method", "path", "status", "client")
        out = []
        for _id, fields in self._r.xrevrange(self._k("audit"), "+", low, count=limit):
            entry = dict(zip(names, _unpack(fields[b"e"]), strict=True))
            if since is None or entry["at"] >= since:
                out.append(entry)
        return out[:limit]

    async def close_async(self) -> None:
        if self._async is not None and self._async[0] is asyncio.get_running_loop():
            await self._async[1].aclose()
            self._async = None

    def close(self) -> None:
        self._r.close()
