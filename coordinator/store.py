"""The coordinator's fleet store on SQLite: telemetry history, latest state per vehicle, ingest counters.

One writer (the ingest thread) and any number of readers (API threads), each with its own connection;
WAL lets readers run beside the writer. Each record is stored once under ``(vehicle_id, seq)``: a batch
re-sent after a lost PUBACK inserts nothing new and is counted as duplicates.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h3
import msgspec

from coordinator.errors import StoreError
from protocols import CommandAck, RecordClass, TelemetryBatch, TelemetryRecord, VehicleStatus, encode_data

_decode_data = msgspec.msgpack.Decoder(dict[str, Any]).decode


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


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migration_1, _migration_2, _migration_3, _migration_4]

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


EARTH_RADIUS_M = 6_371_008.8


def great_circle_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


# Topic-level rejects that name no valid vehicle are counted under this id.
UNATTRIBUTED = "(unattributed)"


@dataclass(frozen=True, slots=True)
class IngestResult:
    accepted: int
    duplicates: int


class FleetStore:
    """Fleet state in one SQLite file. Writes from one thread at a time; reads from any thread."""

    def __init__(self, path: str | Path, *, h3_resolution: int = 8) -> None:
        self._path = Path(path)
        self.h3_resolution = h3_resolution
        self._local = threading.local()
        self._write_lock = threading.Lock()
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            db = self.connection()
            db.execute("PRAGMA journal_mode = WAL")
            _migrate(db)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the store {self._path}: {exc}") from exc

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (each thread reads through its own)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=30)
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA busy_timeout = 30000")
            self._local.db = db
        return db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; writers are serialised."""
        db = self.connection()
        with self._write_lock:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # -- ingest (writer thread) -----------------------------------------------------------------

    def ingest_batch(self, db: sqlite3.Connection, batch: TelemetryBatch, received_at: float) -> IngestResult:
        """Store a telemetry batch inside the caller's transaction, once per ``(vehicle, seq)``."""
        vid = batch.vehicle_id
        self._touch(db, vid, received_at)
        bulk: list[tuple[tuple[Any, ...], TelemetryRecord]] = []
        special: list[tuple[tuple[Any, ...], TelemetryRecord]] = []
        for r in batch.records:
            row = (vid, r.seq, r.ts, r.kind, int(r.cls), encode_data(r.data), received_at)
            (special if r.kind.startswith("outbox.") else bulk).append((row, r))
        accepted = 0
        if bulk:
            accepted += db.executemany("INSERT OR IGNORE INTO telemetry VALUES (?, ?, ?, ?, ?, ?, ?)",
                                       [row for row, _ in bulk]).rowcount
        for row, record in special:
            # Edge bookkeeping must count once: act only if this record is new.
            if db.execute("INSERT OR IGNORE INTO telemetry VALUES (?, ?, ?, ?, ?, ?, ?)", row).rowcount:
                accepted += 1
                self._apply_edge_report(db, vid, record.kind, record.data, record.seq)
        newest: dict[str, Any] = {}
        for r in batch.records:
            if r.kind not in newest or r.seq > newest[r.kind].seq:
                newest[r.kind] = r
        db.executemany(
            "INSERT INTO latest VALUES (?, ?, ?, ?, ?) ON CONFLICT (vehicle_id, kind) DO UPDATE SET"
            " seq = excluded.seq, ts = excluded.ts, data = excluded.data WHERE excluded.seq > latest.seq",
            [(vid, r.kind, r.seq, r.ts, encode_data(r.data)) for r in newest.values()],
        )
        position = newest.get("position")
        if position is not None:
            self._place(db, vid, position)
        duplicates = len(batch.records) - accepted
        db.execute(
            "UPDATE vehicles SET accepted = accepted + ?, duplicates = duplicates + ?, max_seq = max(max_seq, ?)"
            " WHERE vehicle_id = ?",
            (accepted, duplicates, max(r.seq for r in batch.records), vid),
        )
        return IngestResult(accepted, duplicates)

    def _place(self, db: sqlite3.Connection, vid: str, record: TelemetryRecord) -> None:
        lat, lon = record.data.get("lat"), record.data.get("lon")
        if not isinstance(lat, int | float) or not isinstance(lon, int | float) or not (
                -90 <= lat <= 90 and -180 <= lon <= 180):
            return
        cell = h3.latlng_to_cell(lat, lon, self.h3_resolution)
        db.execute("UPDATE vehicles SET lat = ?, lon = ?, h3 = ?, position_seq = ? WHERE vehicle_id = ?"
                   " AND (position_seq IS NULL OR position_seq < ?)", (lat, lon, cell, record.seq, vid, record.seq))

    def _apply_edge_report(self, db: sqlite3.Connection, vid: str, kind: str, data: dict[str, Any], seq: int) -> None:
        if kind == "outbox.evicted":
            count = data.get("records")
            if isinstance(count, int) and count > 0:
                db.execute("UPDATE vehicles SET evicted_at_edge = evicted_at_edge + ? WHERE vehicle_id = ?", (count, vid))
        elif kind == "outbox.quarantined":
            resume = data.get("resume_seq")
            if isinstance(resume, int) and resume > 1:
                # Numbers below resume_seq that never arrived died with the edge's corrupt database.
                received = db.execute("SELECT count(*) FROM telemetry WHERE vehicle_id = ? AND seq < ?",
                                      (vid, resume)).fetchone()[0]
                evicted, lost = db.execute("SELECT evicted_at_edge, lost_at_edge FROM vehicles WHERE vehicle_id = ?",
                                           (vid,)).fetchone()
                newly_lost = max(0, resume - 1 - received - evicted - lost)
                db.execute("UPDATE vehicles SET lost_at_edge = lost_at_edge + ? WHERE vehicle_id = ?", (newly_lost, vid))

    def ingest_status(self, db: sqlite3.Connection, status: VehicleStatus, received_at: float) -> None:
        self._touch(db, status.vehicle_id, received_at)
        # Arrival order, not ``ts``, decides: the broker delivers one topic in order, and a Last Will
        # carries the time it was registered, which is older than the online status it overrides.
        db.execute(
            "UPDATE vehicles SET online = ?, status_ts = ?, agent_version = ?,"
            " kind = CASE WHEN ? = '' THEN kind ELSE ? END WHERE vehicle_id = ?",
            (int(status.online), status.ts, status.agent_version, status.kind, status.kind, status.vehicle_id),
        )

    def ingest_ack(self, db: sqlite3.Connection, ack: CommandAck, received_at: float) -> None:
        self._touch(db, ack.vehicle_id, received_at)
        db.execute("INSERT OR IGNORE INTO command_acks VALUES (?, ?, ?, ?, ?)",
                   (ack.vehicle_id, ack.command_id, ack.state.value, ack.ts, ack.reason))

    def count_reject(self, db: sqlite3.Connection, vehicle_id: str | None, reason: str, at: float) -> None:
        db.execute(
            "INSERT INTO rejects VALUES (?, 1, ?, ?) ON CONFLICT (vehicle_id) DO UPDATE SET"
            " count = count + 1, last_reason = excluded.last_reason, last_at = excluded.last_at",
            (vehicle_id or UNATTRIBUTED, reason[:500], at),
        )

    def _touch(self, db: sqlite3.Connection, vid: str, at: float) -> None:
        db.execute(
            "INSERT INTO vehicles (vehicle_id, first_seen, last_seen) VALUES (?, ?, ?)"
            " ON CONFLICT (vehicle_id) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen)",
            (vid, at, at),
        )

    # -- reads (API threads) --------------------------------------------------------------------

    def vehicle_ids(self) -> list[str]:
        return [r[0] for r in self.connection().execute("SELECT vehicle_id FROM vehicles ORDER BY vehicle_id")]

    def vehicle(self, vehicle_id: str) -> dict[str, Any] | None:
        db = self.connection()
        row = db.execute(
            "SELECT vehicle_id, first_seen, last_seen, online, status_ts, agent_version, max_seq, kind, lat, lon, h3"
            " FROM vehicles WHERE vehicle_id = ?", (vehicle_id,)).fetchone()
        if row is None:
            return None
        latest = {kind: {"seq": seq, "ts": ts, **_decode_data(data)} for kind, seq, ts, data in db.execute(
            "SELECT kind, seq, ts, data FROM latest WHERE vehicle_id = ?", (vehicle_id,))}
        return {
            "vehicle_id": row[0], "first_seen": row[1], "last_seen": row[2],
            "online": None if row[3] is None else bool(row[3]), "status_ts": row[4], "agent_version": row[5],
            "last_seq": row[6], "kind": row[7], "lat": row[8], "lon": row[9], "h3": row[10], "latest": latest,
        }

    def find_vehicles(self, *, kind: str | None = None, online: bool | None = None,
                      near: tuple[float, float, float] | None = None, cells: set[str] | None = None,
                      after: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Vehicles matching every filter given, by id, at most ``limit`` after the id ``after``.

        ``near`` is (lat, lon, radius_m): a bounding box in SQL, then the exact great-circle distance.
        """
        where = _Where()
        if kind is not None:
            where.add("kind = ?", kind)
        if online is not None:
            where.add("online = 1" if online else "(online IS NULL OR online = 0)")
        if cells is not None:
            where.add(f"h3 IN ({','.join('?' * len(cells))})", *sorted(cells))
        if near is not None:
            lat, lon, radius = near
            dlat = math.degrees(radius / EARTH_RADIUS_M)
            dlon = dlat / max(math.cos(math.radians(lat)), 1e-6)
            where.add("lat BETWEEN ? AND ? AND lon BETWEEN ? AND ?", lat - dlat, lat + dlat, lon - dlon, lon + dlon)
        if after is not None:
            where.add("vehicle_id > ?", after)
        ids = []
        rows = self.connection().execute(
            f"SELECT vehicle_id, lat, lon FROM vehicles WHERE {where} ORDER BY vehicle_id", where.args)
        for vid, vlat, vlon in rows:
            if near is not None and great_circle_m(near[0], near[1], vlat, vlon) > near[2]:
                continue
            ids.append(vid)
            if len(ids) == limit:
                break
        return [v for vid in ids if (v := self.vehicle(vid)) is not None]

    def online_count(self) -> int:
        return int(self.connection().execute("SELECT count(*) FROM vehicles WHERE online = 1").fetchone()[0])

    def vehicles(self) -> list[dict[str, Any]]:
        return [v for vid in self.vehicle_ids() if (v := self.vehicle(vid)) is not None]

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
        rows = self.connection().execute(
            f"SELECT seq, ts, kind, cls, data FROM telemetry WHERE {where} ORDER BY ts, seq LIMIT ?",
            (*where.args, limit),
        )
        return [{"seq": seq, "ts": ts, "kind": k, "cls": RecordClass(cls).name.lower(), "data": _decode_data(data)}
                for seq, ts, k, cls, data in rows]

    def alerts(self, *, vehicle_id: str | None, kind: str | None, since: float | None,
               limit: int) -> list[dict[str, Any]]:
        """Alerts raised at the edge (battery low, link lost, failsafe, GPS fix lost...), newest first."""
        where = _Where("cls = 0")
        where.add("ts >= ?", since or 0.0)
        if vehicle_id is not None:
            where.add("vehicle_id = ?", vehicle_id)
        if kind is not None:
            where.add("kind = ?", kind)
        rows = self.connection().execute(
            f"SELECT vehicle_id, seq, ts, kind, data FROM telemetry WHERE {where} ORDER BY ts DESC LIMIT ?",
            (*where.args, limit))
        return [{"vehicle_id": v, "seq": s, "ts": t, "kind": k, "data": _decode_data(d)} for v, s, t, k, d in rows]

    def stats(self) -> dict[str, dict[str, int]]:
        """Ingest counters per vehicle; ``gaps`` are numbers neither received nor accounted for by the edge."""
        db = self.connection()
        out: dict[str, dict[str, int]] = {}
        for vid, max_seq, accepted, dups, evicted, lost in db.execute(
                "SELECT vehicle_id, max_seq, accepted, duplicates, evicted_at_edge, lost_at_edge FROM vehicles"):
            out[vid] = {"accepted": accepted, "duplicates": dups, "rejected": 0, "max_seq": max_seq,
                        "gaps": max(0, max_seq - accepted - evicted - lost), "evicted_at_edge": evicted,
                        "lost_at_edge": lost}
        for vid, count in db.execute("SELECT vehicle_id, count FROM rejects"):
            out.setdefault(vid, {"accepted": 0, "duplicates": 0, "rejected": 0, "max_seq": 0, "gaps": 0,
                                 "evicted_at_edge": 0, "lost_at_edge": 0})["rejected"] = count
        return out

    def last_rejects(self) -> list[dict[str, Any]]:
        return [{"vehicle_id": v, "count": c, "last_reason": r, "last_at": t} for v, c, r, t in
                self.connection().execute("SELECT vehicle_id, count, last_reason, last_at FROM rejects")]

    def record_audit(self, *, at: float, key_id: str, key_name: str, role: str, method: str, path: str,
                     status: int, client: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO audit_log (at, key_id, key_name, role, method, path, status, client)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (at, key_id, key_name, role, method, path, status, client))

    def audit(self, *, since: float | None, limit: int) -> list[dict[str, Any]]:
        rows = self.connection().execute(
            "SELECT at, key_id, key_name, role, method, path, status, client FROM audit_log WHERE at >= ?"
            " ORDER BY id DESC LIMIT ?", (since or 0.0, limit))
        names = ("at", "key_id", "key_name", "role", "method", "path", "status", "client")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


def _migrate(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
    done = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
    for version, migration in enumerate(MIGRATIONS, start=1):
        if version not in done:
            migration(db)
            db.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, time.time()))
