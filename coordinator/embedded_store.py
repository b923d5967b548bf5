"""The embedded fleet store: one SQLite file, zero setup, the coordinator's default.

One writer at a time (the ingest thread, API writes) and any number of readers (API threads), each
thread with its own connection; WAL lets readers run beside the writer. Each telemetry record is stored
once under ``(vehicle_id, seq)``: a batch re-sent after a lost PUBACK inserts nothing new and is counted
as duplicates.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import h3
import msgspec

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
from protocols import (
    EARTH_RADIUS_M,
    CommandAck,
    RecordClass,
    TelemetryBatch,
    TelemetryRecord,
    VehicleStatus,
    encode_data,
    great_circle_m,
)

_decode_data = msgspec.msgpack.Decoder(dict[str, Any]).decode
_decode_order_event = msgspec.msgpack.Decoder(OrderEvent).decode


def _migration_1(db: sqlite3.Connection) -> None:
    db.executescript("""
        CREATE TABLE vehicles (
            vehicle_id TEXT PRIMARY KEY,
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL,
            online INTEGER,
            status_ts REAL,
            agent_version TEXT NOT NULL DEFAULT '',
            max_seq INTEGER NOT NULL DEFAULT 0,
            accepted INTEGER NOT NULL DEFAULT 0,
            duplicates INTEGER NOT NULL DEFAULT 0,
            evicted_at_edge INTEGER NOT NULL DEFAULT 0,
            lost_at_edge INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID;
        CREATE TABLE telemetry (
            vehicle_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            ts REAL NOT NULL,
            kind TEXT NOT NULL,
            cls INTEGER NOT NULL,
            data BLOB NOT NULL,
            received_at REAL NOT NULL,
            PRIMARY KEY (vehicle_id, seq)
        ) WITHOUT ROWID;
        CREATE INDEX telemetry_by_time ON telemetry (vehicle_id, ts);
        CREATE TABLE latest (
            vehicle_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            seq INTEGER NOT NULL,
            ts REAL NOT NULL,
            data BLOB NOT NULL,
            PRIMARY KEY (vehicle_id, kind)
        ) WITHOUT ROWID;
        CREATE TABLE rejects (
            vehicle_id TEXT PRIMARY KEY,
            count INTEGER NOT NULL,
            last_reason TEXT NOT NULL,
            last_at REAL NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE command_acks (
            vehicle_id TEXT NOT NULL,
            command_id TEXT NOT NULL,
            state TEXT NOT NULL,
            ts REAL NOT NULL,
            reason TEXT NOT NULL,
            PRIMARY KEY (vehicle_id, command_id, state)
        ) WITHOUT ROWID;
        CREATE TABLE api_keys (
            key_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            role TEXT NOT NULL,
            secret_hash BLOB NOT NULL,
            created_at REAL NOT NULL,
            revoked_at REAL
        ) WITHOUT ROWID;
    """)


def _migration_2(db: sqlite3.Connection) -> None:
    db.executescript("""
        CREATE TABLE audit_log (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            key_id TEXT NOT NULL,
            key_name TEXT NOT NULL,
            role TEXT NOT NULL,
            method TEXT NOT NULL,
            path TEXT NOT NULL,
            status INTEGER NOT NULL,
            client TEXT NOT NULL
        );
        CREATE INDEX audit_by_time ON audit_log (at);
    """)


def _migration_3(db: sqlite3.Connection) -> None:
    for column in ("kind TEXT NOT NULL DEFAULT ''", "lat REAL", "lon REAL", "h3 TEXT", "position_seq INTEGER"):
        db.execute(f"ALTER TABLE vehicles ADD COLUMN {column}")
    db.execute("CREATE INDEX vehicles_by_h3 ON vehicles (h3)")


def _migration_4(db: sqlite3.Connection) -> None:
    # Partial: only alert rows are indexed, so bulk telemetry inserts pay nothing for it.
    db.execute("CREATE INDEX telemetry_alerts ON telemetry (ts) WHERE cls = 0")


def _migration_5(db: sqlite3.Connection) -> None:
    db.executescript("""
        CREATE TABLE commands (
            vehicle_id TEXT NOT NULL,
            command_id TEXT NOT NULL,
            action TEXT NOT NULL,
            params BLOB NOT NULL,
            issued_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            issued_by TEXT NOT NULL,
            PRIMARY KEY (vehicle_id, command_id)
        ) WITHOUT ROWID;
        CREATE INDEX commands_by_time ON commands (vehicle_id, issued_at);
        CREATE INDEX vehicles_by_kind ON vehicles (kind);
    """)


def _migration_6(db: sqlite3.Connection) -> None:
    # An R*Tree of the latest positions for radius queries; it needs an integer key per vehicle. It replaces
    # the latitude index, which every position update would otherwise keep paying for.
    db.executescript("""
        DROP INDEX IF EXISTS vehicles_by_lat;
        CREATE TABLE vehicle_keys (id INTEGER PRIMARY KEY, vehicle_id TEXT NOT NULL UNIQUE);
        CREATE VIRTUAL TABLE vehicle_positions USING rtree(id, min_lat, max_lat, min_lon, max_lon, +vehicle_id TEXT);
    """)
    for vid, lat, lon in db.execute("SELECT vehicle_id, lat, lon FROM vehicles WHERE lat IS NOT NULL").fetchall():
        _index_position(db, vid, lat, lon)


def _migration_7(db: sqlite3.Connection) -> None:
    db.executescript("""
        CREATE TABLE orders (
            order_id TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            vehicle_id TEXT,
            version INTEGER NOT NULL,
            doc BLOB NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX orders_by_state ON orders (state);
        CREATE INDEX orders_by_vehicle ON orders (vehicle_id, order_id);
        CREATE TABLE order_idempotency (
            scope TEXT NOT NULL,
            key TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            order_id TEXT NOT NULL,
            PRIMARY KEY (scope, key)
        ) WITHOUT ROWID;
        CREATE TABLE order_events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            order_id TEXT NOT NULL,
            event BLOB NOT NULL
        );
        CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, until REAL NOT NULL) WITHOUT ROWID;
    """)


def _migration_8(db: sqlite3.Connection) -> None:
    db.executescript("""
        CREATE TABLE demand_events (
            event_id TEXT PRIMARY KEY,
            start REAL NOT NULL,
            end_at REAL NOT NULL,
            doc BLOB NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX demand_events_by_end ON demand_events (end_at);
    """)


def _migration_9(db: sqlite3.Connection) -> None:
    db.executescript("""
        ALTER TABLE order_idempotency ADD COLUMN created_at REAL NOT NULL DEFAULT 0;
        CREATE INDEX order_idempotency_by_time ON order_idempotency (created_at);
    """)


def _migration_10(db: sqlite3.Connection) -> None:
    db.executescript("""
        CREATE TABLE reposition_moves (
            move_id TEXT PRIMARY KEY,
            open INTEGER NOT NULL,
            created_at REAL NOT NULL,
            version INTEGER NOT NULL,
            doc BLOB NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX reposition_moves_open ON reposition_moves (open) WHERE open = 1;
    """)


def _migration_11(db: sqlite3.Connection) -> None:
    db.executescript("""
        CREATE TABLE blobs (sha256 TEXT PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;
        CREATE TABLE models (
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            uploaded_at REAL NOT NULL,
            doc BLOB NOT NULL,
            PRIMARY KEY (name, version)
        ) WITHOUT ROWID;
        CREATE TABLE model_rollouts (name TEXT PRIMARY KEY, revision INTEGER NOT NULL, doc BLOB NOT NULL)
            WITHOUT ROWID;
    """)


def _index_position(db: sqlite3.Connection, vid: str, lat: float, lon: float) -> None:
    db.execute("INSERT OR IGNORE INTO vehicle_keys (vehicle_id) VALUES (?)", (vid,))
    db.execute("INSERT OR REPLACE INTO vehicle_positions SELECT id, ?, ?, ?, ?, vehicle_id FROM vehicle_keys"
               " WHERE vehicle_id = ?", (lat, lat, lon, lon, vid))


def _bounding_box(lat: float, lon: float, radius_m: float) -> tuple[float, float, float, float]:
    """``(lat_min, lat_max, lon_min, lon_max)`` holding every point within ``radius_m``; the whole longitude
    range when the box would cross the antimeridian or reach a pole."""
    dlat = math.degrees(radius_m / EARTH_RADIUS_M)
    cos_lat = math.cos(math.radians(min(90.0, abs(lat) + dlat)))
    dlon = dlat / cos_lat if cos_lat > 1e-9 else 360.0
    if lon - dlon < -180 or lon + dlon > 180:
        return lat - dlat, lat + dlat, -180.0, 180.0
    return lat - dlat, lat + dlat, lon - dlon, lon + dlon


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migration_1, _migration_2, _migration_3, _migration_4,
                                                          _migration_5, _migration_6, _migration_7, _migration_8,
                                                          _migration_9, _migration_10,
                                                          _migration_11]


class _Where:
    """SQL conditions and their arguments, built up filter by filter."""

    def __init__(self, *always: str) -> None:
        self.clauses = list(always) or ["1"]
        self.args: list[object] = []

    def add(self, clause: str, *args: object) -> None:
        self.clauses.append(clause)
        self.args.extend(args)

    def __str__(self) -> str:
        return " AND ".join(self.clauses)


_VEHICLE_COLUMNS = ("vehicle_id, first_seen, last_seen, online, status_ts, agent_version, max_seq, kind, lat, lon, h3")

class EmbeddedStore(FleetStore):
    """Fleet state in one SQLite file. Writes are serialised; reads run from any thread."""

    reads_inline = True  # WAL: readers never wait for the writer; an indexed read takes well under a millisecond

    def __init__(self, path: str | Path, *, h3_resolution: int = 8) -> None:
        self._path = Path(path)
        self.h3_resolution = h3_resolution
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            db = self._connection()
            db.execute("PRAGMA journal_mode = WAL")
            _migrate(db)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the store {self._path}: {exc}") from exc

    @property
    def path(self) -> Path:
        return self._path

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection (each thread reads through its own)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=30)
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA busy_timeout = 30000")
            self._local.db = db
            with self._write_lock:
                self._connections.append(db)
        return db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; writers are serialised. A busy or failing disk is StoreUnavailable."""
        db = self._connection()
        with self._write_lock:
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise StoreUnavailable(f"store {self._path}: {exc}") from exc

    # -- ingest -------------------------------------------------------------------------------------

    def ingest(self, items: Sequence[Received]) -> IngestResult:
        accepted = duplicates = 0
        with self._transaction() as db:
            for item in items:
                m = item.message
                if isinstance(m, TelemetryBatch):
                    a, d = self._ingest_batch(db, m, item.at)
                    accepted += a
                    duplicates += d
                elif isinstance(m, VehicleStatus):
                    self._ingest_status(db, m, item.at)
                elif isinstance(m, CommandAck):
                    self._touch(db, m.vehicle_id, item.at)
                    db.execute("INSERT OR IGNORE INTO command_acks VALUES (?, ?, ?, ?, ?)",
                               (m.vehicle_id, m.command_id, m.state.value, m.ts, m.reason))
                elif isinstance(m, Reject):
                    db.execute(
                        "INSERT INTO rejects VALUES (?, 1, ?, ?) ON CONFLICT (vehicle_id) DO UPDATE SET"
                        " count = count + 1, last_reason = excluded.last_reason, last_at = excluded.last_at",
                        (m.vehicle_id or UNATTRIBUTED, m.reason[:500], item.at))
        return IngestResult(accepted, duplicates)

    def _ingest_batch(self, db: sqlite3.Connection, batch: TelemetryBatch, received_at: float) -> tuple[int, int]:
        vid = batch.vehicle_id
        self._touch(db, vid, received_at)
        bulk: list[tuple[Any, ...]] = []
        special: list[tuple[tuple[Any, ...], TelemetryRecord]] = []
        for r in batch.records:
            row = (vid, r.seq, r.ts, r.kind, int(r.cls), encode_data(r.data), received_at)
            if r.kind.startswith("outbox."):
                special.append((row, r))
            else:
                bulk.append(row)
        accepted = 0
        if bulk:
            accepted += db.executemany("INSERT OR IGNORE INTO telemetry VALUES (?, ?, ?, ?, ?, ?, ?)", bulk).rowcount
        for row, record in special:
            # Edge bookkeeping must count once: act only if this record is new.
            if db.execute("INSERT OR IGNORE INTO telemetry VALUES (?, ?, ?, ?, ?, ?, ?)", row).rowcount:
                accepted += 1
                self._apply_edge_report(db, vid, record.kind, record.data)
        newest = newest_by_kind(batch.records)
        db.executemany(
            "INSERT INTO latest VALUES (?, ?, ?, ?, ?) ON CONFLICT (vehicle_id, kind) DO UPDATE SET"
            " seq = excluded.seq, ts = excluded.ts, data = excluded.data WHERE excluded.seq > latest.seq",
            [(vid, r.kind, r.seq, r.ts, encode_data(r.data)) for r in newest.values()],
        )
        position = newest.get("position")
        if position is not None and (point := valid_position(position.data)) is not None:
            lat, lon = point
            cell = h3.latlng_to_cell(lat, lon, self.h3_resolution)
            if db.execute("UPDATE vehicles SET lat = ?, lon = ?, h3 = ?, position_seq = ? WHERE vehicle_id = ?"
                          " AND (position_seq IS NULL OR position_seq < ?)",
                          (lat, lon, cell, position.seq, vid, position.seq)).rowcount:
                _index_position(db, vid, lat, lon)
        duplicates = len(batch.records) - accepted
        db.execute(
            "UPDATE vehicles SET accepted = accepted + ?, duplicates = duplicates + ?, max_seq = max(max_seq, ?)"
            " WHERE vehicle_id = ?",
            (accepted, duplicates, max(r.seq for r in batch.records), vid),
        )
        return accepted, duplicates

    def _apply_edge_report(self, db: sqlite3.Connection, vid: str, kind: str, data: dict[str, Any]) -> None:
        if kind == "outbox.evicted":
            count = data.get("records")
            if isinstance(count, int) and count > 0:
                db.execute("UPDATE vehicles SET evicted_at_edge = evicted_at_edge + ? WHERE vehicle_id = ?",
                           (count, vid))
        elif kind == "outbox.quarantined":
            resume = data.get("resume_seq")
            if isinstance(resume, int) and resume > 1:
                # Numbers below resume_seq that never arrived died with the edge's corrupt database.
                received = db.execute("SELECT count(*) FROM telemetry WHERE vehicle_id = ? AND seq < ?",
                                      (vid, resume)).fetchone()[0]
                evicted, lost = db.execute("SELECT evicted_at_edge, lost_at_edge FROM vehicles WHERE vehicle_id = ?",
                                           (vid,)).fetchone()
                newly_lost = max(0, resume - 1 - received - evicted - lost)
                db.execute("UPDATE vehicles SET lost_at_edge = lost_at_edge + ? WHERE vehicle_id = ?",
                           (newly_lost, vid))

    def _ingest_status(self, db: sqlite3.Connection, status: VehicleStatus, received_at: float) -> None:
        self._touch(db, status.vehicle_id, received_at)
        # Arrival order, not ``ts``, decides: the broker delivers one topic in order, and a Last Will
        # carries the time it was registered, which is older than the online status it overrides.
        db.execute(
            "UPDATE vehicles SET online = ?, status_ts = ?, agent_version = ?,"
            " kind = CASE WHEN ? = '' THEN kind ELSE ? END WHERE vehicle_id = ?",
            (int(status.online), status.ts, status.agent_version, status.kind, status.kind, status.vehicle_id),
        )

    def _touch(self, db: sqlite3.Connection, vid: str, at: float) -> None:
        db.execute(
            "INSERT INTO vehicles (vehicle_id, first_seen, last_seen) VALUES (?, ?, ?)"
            " ON CONFLICT (vehicle_id) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen)",
            (vid, at, at),
        )

    # -- vehicles and telemetry ---------------------------------------------------------------------

    def vehicle(self, vehicle_id: str) -> dict[str, Any] | None:
        found = self._vehicles([vehicle_id])
        return found[0] if found else None

    def _vehicles(self, ids: list[str]) -> list[dict[str, Any]]:
        """Registry rows and latest records of ``ids``, in that order, in two queries."""
        if not ids:
            return []
        db = self._connection()
        marks = ",".join("?" * len(ids))
        rows = {row[0]: row for row in db.execute(f"SELECT {_VEHICLE_COLUMNS} FROM vehicles"
                                                  f" WHERE vehicle_id IN ({marks})", ids)}
        latest: dict[str, dict[str, dict[str, Any]]] = {}
        for vid, kind, seq, ts, data in db.execute(
                f"SELECT vehicle_id, kind, seq, ts, data FROM latest WHERE vehicle_id IN ({marks})", ids):
            latest.setdefault(vid, {})[kind] = {"seq": seq, "ts": ts, **_decode_data(data)}
        return [{
            "vehicle_id": r[0], "first_seen": r[1], "last_seen": r[2],
            "online": None if r[3] is None else bool(r[3]), "status_ts": r[4], "agent_version": r[5],
            "last_seq": r[6], "kind": r[7], "lat": r[8], "lon": r[9], "h3": r[10], "latest": latest.get(r[0], {}),
        } for vid in ids if (r := rows.get(vid)) is not None]

    def find_vehicles(self, *, kind: str | None = None, online: bool | None = None,
                      near: tuple[float, float, float] | None = None, cells: set[str] | None = None,
                      after: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        where = _Where()
        if kind is not None:
            where.add("kind = ?", kind)
        if online is not None:
            where.add("online = 1" if online else "(online IS NULL OR online = 0)")
        if cells is not None:
            where.add(f"h3 IN ({','.join('?' * len(cells))})", *sorted(cells))
        source = "vehicles"
        if near is not None:
            # The R*Tree finds the vehicles in the bounding box; the exact great-circle distance decides below.
            source = "vehicle_positions p JOIN vehicles USING (vehicle_id)"
            where.add("p.max_lat >= ? AND p.min_lat <= ? AND p.max_lon >= ? AND p.min_lon <= ?",
                      *_bounding_box(*near))
        if after is not None:
            where.add("vehicle_id > ?", after)
        ids: list[str] = []
        rows = self._connection().execute(
            f"SELECT vehicle_id, lat, lon FROM {source} WHERE {where} ORDER BY vehicle_id", where.args)
        for vid, vlat, vlon in rows:
            if near is not None and great_circle_m(near[0], near[1], vlat, vlon) > near[2]:
                continue
            ids.append(vid)
            if len(ids) == limit:
                break
        return self._vehicles(ids)

    def summaries(self, kinds: Collection[str]) -> list[VehicleSummary]:
        db = self._connection()
        latest: dict[str, dict[str, dict[str, Any]]] = {}
        if kinds:
            marks = ",".join("?" * len(kinds))
            for vid, kind, seq, ts, data in db.execute(
                    f"SELECT vehicle_id, kind, seq, ts, data FROM latest WHERE kind IN ({marks})", list(kinds)):
                latest.setdefault(vid, {})[kind] = {"seq": seq, "ts": ts, **_decode_data(data)}
        return [VehicleSummary(vid, kind, None if online is None else bool(online), last_seen, lat, lon,
                               latest.get(vid, {}))
                for vid, kind, online, last_seen, lat, lon in db.execute(
                    "SELECT vehicle_id, kind, online, last_seen, lat, lon FROM vehicles ORDER BY vehicle_id")]

    def online_count(self) -> int:
        return int(self._connection().execute("SELECT count(*) FROM vehicles WHERE online = 1").fetchone()[0])

    def telemetry(self, vehicle_id: str, *, since: float | None, until: float | None, limit: int,
                  kind: str | None = None) -> list[dict[str, Any]]:
        where = _Where()
        where.add("vehicle_id = ?", vehicle_id)
        if since is not None:
            where.add("ts >= ?", since)
        if until is not None:
            where.add("ts < ?", until)
        if kind is not None:
            where.add("kind = ?", kind)
        rows = self._connection().execute(
            f"SELECT seq, ts, kind, cls, data FROM telemetry WHERE {where} ORDER BY ts, seq LIMIT ?",
            (*where.args, limit),
        )
        return [{"seq": seq, "ts": ts, "kind": k, "cls": RecordClass(cls).name.lower(), "data": _decode_data(data)}
                for seq, ts, k, cls, data in rows]

    def alerts(self, *, vehicle_id: str | None, kind: str | None, since: float | None,
               limit: int) -> list[dict[str, Any]]:
        where = _Where("cls = 0")
        where.add("ts >= ?", since or 0.0)
        if vehicle_id is not None:
            where.add("vehicle_id = ?", vehicle_id)
        if kind is not None:
            where.add("kind = ?", kind)
        rows = self._connection().execute(
            f"SELECT vehicle_id, seq, ts, kind, data FROM telemetry WHERE {where} ORDER BY ts DESC, seq DESC LIMIT ?",
            (*where.args, limit))
        return [{"vehicle_id": v, "seq": s, "ts": t, "kind": k, "data": _decode_data(d)} for v, s, t, k, d in rows]

    def stats(self) -> dict[str, dict[str, int]]:
        db = self._connection()
        out: dict[str, dict[str, int]] = {}
        for vid, *counters in db.execute(
                "SELECT vehicle_id, max_seq, accepted, duplicates, evicted_at_edge, lost_at_edge FROM vehicles"):
            out[vid] = vehicle_counters(*counters)
        for vid, count in db.execute("SELECT vehicle_id, count FROM rejects"):
            out.setdefault(vid, vehicle_counters())["rejected"] = count
        return out

    def prune_telemetry(self, before_ts: float, *, max_records: int = 50_000) -> int:
        removed = 0
        for (vid,) in self._connection().execute("SELECT vehicle_id FROM vehicles").fetchall():
            if removed >= max_records:
                break
            if self._connection().execute("SELECT 1 FROM telemetry WHERE vehicle_id = ? AND ts < ? LIMIT 1",
                                          (vid, before_ts)).fetchone() is None:
                continue
            with self._transaction() as db:
                # The (vehicle_id, ts) index finds the old rows; small transactions keep ingest flowing.
                removed += db.execute(
                    "DELETE FROM telemetry WHERE vehicle_id = ? AND seq IN"
                    " (SELECT seq FROM telemetry WHERE vehicle_id = ? AND ts < ? LIMIT ?)",
                    (vid, vid, before_ts, max_records - removed)).rowcount
        return removed

    # -- commands -----------------------------------------------------------------------------------

    def add_command(self, command: CommandRecord) -> None:
        with self._transaction() as db:
            db.execute("INSERT INTO commands VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (command.vehicle_id, command.command_id, command.action, encode_data(command.params),
                        command.issued_at, command.expires_at, command.issued_by))
            for event in command.history:
                self._add_event(db, command.vehicle_id, command.command_id, event)

    def add_command_event(self, vehicle_id: str, command_id: str, event: CommandEvent) -> None:
        with self._transaction() as db:
            self._add_event(db, vehicle_id, command_id, event)

    def _add_event(self, db: sqlite3.Connection, vehicle_id: str, command_id: str, event: CommandEvent) -> None:
        db.execute("INSERT OR IGNORE INTO command_acks VALUES (?, ?, ?, ?, ?)",
                   (vehicle_id, command_id, event.state.value, event.at, event.reason))

    def command(self, vehicle_id: str, command_id: str) -> CommandRecord | None:
        found = self._commands("vehicle_id = ? AND command_id = ?", (vehicle_id, command_id), 1)
        return found[0] if found else None

    def commands(self, vehicle_id: str, *, limit: int) -> list[CommandRecord]:
        return self._commands("vehicle_id = ?", (vehicle_id,), limit)

    def _commands(self, where: str, args: tuple[Any, ...], limit: int) -> list[CommandRecord]:
        db = self._connection()
        out = []
        for vid, cid, action, params, issued_at, expires_at, issued_by in db.execute(
                f"SELECT vehicle_id, command_id, action, params, issued_at, expires_at, issued_by FROM commands"
                f" WHERE {where} ORDER BY issued_at DESC LIMIT ?", (*args, limit)).fetchall():
            events = [CommandEvent(CommandState(state), ts, reason) for state, ts, reason in db.execute(
                "SELECT state, ts, reason FROM command_acks WHERE vehicle_id = ? AND command_id = ?", (vid, cid))]
            out.append(CommandRecord(cid, vid, action, _decode_data(params), issued_at, expires_at, issued_by,
                                     command_history(events)))
        return out

    # -- orders -------------------------------------------------------------------------------------

    def add_order(self, order: Order, *, idempotency: tuple[str, str, str] | None = None) -> tuple[Order, bool]:
        with self._transaction() as db:
            if idempotency is not None:
                scope, key, fingerprint = idempotency
                row = db.execute("SELECT fingerprint, order_id FROM order_idempotency WHERE scope = ? AND key = ?",
                                 (scope, key)).fetchone()
                if row is not None:
                    if row[0] != fingerprint:
                        raise IdempotencyConflict(f"Idempotency-Key {key!r} was used for a different order "
                                                  f"({row[1]})")
                    first = self._order(db, row[1])
                    if first is None:
                        raise StoreError(f"order {row[1]} of Idempotency-Key {key!r} is missing")
                    return first, False
                db.execute("INSERT INTO order_idempotency (scope, key, fingerprint, order_id, created_at) "
                           "VALUES (?, ?, ?, ?, ?)", (scope, key, fingerprint, order.order_id, order.created_at))
            db.execute("INSERT INTO orders VALUES (?, ?, ?, ?, ?)",
                       (order.order_id, order.state.value, order.vehicle_id, order.version, encode_order(order)))
            self._log_order_events(db, order.order_id, order.history)
        return order, True

    def prune_idempotency_keys(self, before_ts: float) -> int:
        with self._transaction() as db:
            return db.execute("DELETE FROM order_idempotency WHERE created_at < ?", (before_ts,)).rowcount

    @staticmethod
    def _log_order_events(db: sqlite3.Connection, order_id: str, events: Sequence[OrderEvent]) -> None:
        db.executemany("INSERT INTO order_events (order_id, event) VALUES (?, ?)",
                       [(order_id, encode_order(e)) for e in events])

    @staticmethod
    def _order(db: sqlite3.Connection, order_id: str) -> Order | None:
        row = db.execute("SELECT doc FROM orders WHERE order_id = ?", (order_id,)).fetchone()
        return None if row is None else decode_order(row[0])

    def order(self, order_id: str) -> Order | None:
        return self._order(self._connection(), order_id)

    def orders(self, *, states: Collection[OrderState] | None = None, vehicle_id: str | None = None,
               before: str | None = None, limit: int = 100) -> list[Order]:
        where = _Where()
        if states is not None:
            where.add(f"state IN ({', '.join('?' * len(states))})", *(s.value for s in states))
        if vehicle_id is not None:
            where.add("vehicle_id = ?", vehicle_id)
        if before is not None:
            where.add("order_id < ?", before)
        rows = self._connection().execute(
            f"SELECT doc FROM orders WHERE {where} ORDER BY order_id DESC LIMIT ?", (*where.args, limit))
        return [decode_order(doc) for (doc,) in rows]

    def open_orders(self) -> list[Order]:
        return self.orders(states=OPEN_STATES, limit=-1)

    def replace_order(self, old: Order, new: Order) -> bool:
        with self._transaction() as db:
            changed = db.execute("UPDATE orders SET state = ?, vehicle_id = ?, version = ?, doc = ? WHERE "
                                 "order_id = ? AND version = ?",
                                 (new.state.value, new.vehicle_id, new.version, encode_order(new), old.order_id,
                                  old.version)).rowcount
            if changed:
                self._log_order_events(db, new.order_id, new.history[len(old.history):])
        return bool(changed)

    def order_events(self, *, after: int, limit: int) -> list[tuple[int, str, OrderEvent]]:
        rows = self._connection().execute(
            "SELECT seq, order_id, event FROM order_events WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit))
        return [(seq, oid, _decode_order_event(event)) for seq, oid, event in rows]

    # -- declared demand events ---------------------------------------------------------------------

    def add_demand_event(self, event: dict[str, Any]) -> None:
        with self._transaction() as db:
            db.execute("INSERT INTO demand_events VALUES (?, ?, ?, ?)",
                       (event["event_id"], event["start"], event["end"], encode_data(event)))

    def demand_events(self, *, ending_after: float, limit: int = 1000) -> list[dict[str, Any]]:
        rows = self._connection().execute(
            "SELECT doc FROM demand_events WHERE end_at > ? ORDER BY start, event_id LIMIT ?", (ending_after, limit))
        return [_decode_data(doc) for (doc,) in rows]

    # -- reposition moves ---------------------------------------------------------------------------

    def add_move(self, move: Move) -> None:
        with self._transaction() as db:
            db.execute("INSERT INTO reposition_moves VALUES (?, ?, ?, ?, ?)",
                       (move.move_id, int(not move.state.final), move.created_at, move.version, encode_move(move)))

    def replace_move(self, old: Move, new: Move) -> bool:
        with self._transaction() as db:
            return db.execute(
                "UPDATE reposition_moves SET open = ?, version = ?, doc = ? WHERE move_id = ? AND version = ?",
                (int(not new.state.final), new.version, encode_move(new), old.move_id, old.version)).rowcount > 0

    def moves(self, *, open_only: bool = False, since: float | None = None, limit: int = 1000) -> list[Move]:
        where = _Where()
        if open_only:
            where.add("open = 1")
        if since is not None:
            where.add("created_at >= ?", since)
        rows = self._connection().execute(
            f"SELECT doc FROM reposition_moves WHERE {where} ORDER BY created_at DESC, move_id DESC LIMIT ?",
            (*where.args, limit))
        return [decode_move(doc) for (doc,) in rows]

    # -- model registry -----------------------------------------------------------------------------

    def put_blob(self, sha256: str, data: bytes) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO blobs VALUES (?, ?)", (sha256, data))

    def blob(self, sha256: str) -> bytes | None:
        row = self._connection().execute("SELECT data FROM blobs WHERE sha256 = ?", (sha256,)).fetchone()
        return None if row is None else bytes(row[0])

    def add_model(self, record: dict[str, Any]) -> bool:
        with self._transaction() as db:
            return db.execute("INSERT OR IGNORE INTO models VALUES (?, ?, ?, ?)",
                              (record["name"], record["version"], record["uploaded_at"],
                               encode_data(record))).rowcount > 0

    def model(self, name: str, version: str) -> dict[str, Any] | None:
        row = self._connection().execute("SELECT doc FROM models WHERE name = ? AND version = ?",
                                         (name, version)).fetchone()
        return None if row is None else _decode_data(row[0])

    def models(self, name: str | None = None) -> list[dict[str, Any]]:
        where = _Where()
        if name is not None:
            where.add("name = ?", name)
        rows = self._connection().execute(f"SELECT doc FROM models WHERE {where} ORDER BY uploaded_at DESC",
                                          where.args)
        return [_decode_data(doc) for (doc,) in rows]

    def rollout(self, name: str) -> dict[str, Any] | None:
        row = self._connection().execute("SELECT doc FROM model_rollouts WHERE name = ?", (name,)).fetchone()
        return None if row is None else _decode_data(row[0])

    def rollouts(self) -> list[dict[str, Any]]:
        return [_decode_data(doc) for (doc,) in
                self._connection().execute("SELECT doc FROM model_rollouts ORDER BY name")]

    def replace_rollout(self, name: str, revision: int, new: dict[str, Any]) -> bool:
        with self._transaction() as db:
            if revision == 0:
                return db.execute("INSERT OR IGNORE INTO model_rollouts VALUES (?, ?, ?)",
                                  (name, new["revision"], encode_data(new))).rowcount > 0
            return db.execute("UPDATE model_rollouts SET revision = ?, doc = ? WHERE name = ? AND revision = ?",
                              (new["revision"], encode_data(new), name, revision)).rowcount > 0

    # -- leadership ---------------------------------------------------------------------------------

    def hold_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        now = time.time()
        with self._transaction() as db:
            return db.execute(
                "INSERT INTO leases VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                "until = excluded.until WHERE leases.holder = excluded.holder OR leases.until < ?",
                (name, holder, now + ttl_s, now)).rowcount > 0

    # -- API keys and audit -------------------------------------------------------------------------

    def add_api_key(self, key_id: str, name: str, role: str, secret_hash: bytes, created_at: float) -> None:
        with self._transaction() as db:
            db.execute("INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL)",
                       (key_id, name, role, secret_hash, created_at))

    def active_api_key(self, key_id: str) -> tuple[str, str, bytes] | None:
        row = self._connection().execute(
            "SELECT name, role, secret_hash FROM api_keys WHERE key_id = ? AND revoked_at IS NULL",
            (key_id,)).fetchone()
        return None if row is None else (row[0], row[1], bytes(row[2]))

    def api_keys(self) -> list[dict[str, Any]]:
        return [{"key_id": k, "name": n, "role": r, "created_at": c, "revoked_at": rv} for k, n, r, c, rv in
                self._connection().execute(
                    "SELECT key_id, name, role, created_at, revoked_at FROM api_keys ORDER BY created_at")]

    def revoke_api_key(self, key_id: str, at: float) -> bool:
        with self._transaction() as db:
            return db.execute("UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                              (at, key_id)).rowcount > 0

    def record_audit(self, *, at: float, key_id: str, key_name: str, role: str, method: str, path: str,
                     status: int, client: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT INTO audit_log (at, key_id, key_name, role, method, path, status, client)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (at, key_id, key_name, role, method, path, status, client))

    def audit(self, *, since: float | None, limit: int) -> list[dict[str, Any]]:
        rows = self._connection().execute(
            "SELECT at, key_id, key_name, role, method, path, status, client FROM audit_log WHERE at >= ?"
            " ORDER BY id DESC LIMIT ?", (since or 0.0, limit))
        names = ("at", "key_id", "key_name", "role", "method", "path", "status", "client")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def close(self) -> None:
        with self._write_lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()


def _migrate(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
    done = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
    for version, migration in enumerate(MIGRATIONS, start=1):
        if version not in done:
            migration(db)
            db.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, time.time()))
