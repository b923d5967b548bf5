"""The vehicle's durable telemetry outbox: a capped SQLite (WAL) file that is the source of truth for delivery.

A record's life:

1. ``append`` puts it in memory. Cheap, never blocks on the disk.
2. ``commit`` (a *group commit*, run by the agent every few tens of ms or every N records) gives every
   pending record the vehicle's next sequence number and writes them in one transaction. From then on
   the record is *kept* (see :class:`Durability` for exactly against what).
3. ``claim`` hands committed records to the uplink, most precious class first (alerts, events, then
   telemetry, each oldest first). A claimed record stays on disk.
4. ``acknowledge`` is called on the broker's PUBACK; the next commit deletes the records. After a lost
   link, ``release_unacknowledged`` makes every unacknowledged claim eligible again: it is re-sent, and the
   coordinator drops the duplicate by ``(vehicle, seq)``.

The file never outgrows ``cap_bytes`` (database + WAL + shared memory): the data pages are capped with
``max_page_count``, the WAL by checkpoint size and transaction size, and before it fills up the oldest
unclaimed records are evicted, bulk telemetry first, events next, alerts last. Every eviction is counted
and itself recorded as an ``outbox.evicted`` event, so the coordinator learns what the edge dropped.

Sequence numbers survive restarts (stored in the database) and even a corrupt database: a sidecar file
``<db>.seq`` holds a reserved ceiling, so a fresh database after quarantine continues above every number
ever handed out and the coordinator never mistakes new records for old ones.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.errors import OutboxError
from protocols import RecordClass, encode_data

log = logging.getLogger(__name__)

PAGE_SIZE = 4096
MIN_CAP_BYTES = 1024 * 1024
# Estimated B-tree bytes of one row beyond its data and kind: key, cell header, slot.
ROW_OVERHEAD = 32
# The -shm file is 32 KiB for any WAL that fits our budget; keep twice that aside.
SHM_RESERVE = 64 * 1024
SEQ_RESERVATION_BLOCK = 100_000
EVICTION_REPORT_INTERVAL_S = 10.0
EVICT_HIGH_WATER = 0.90
EVICT_LOW_WATER = 0.75
UPLOAD_ORDER = (RecordClass.ALERT, RecordClass.EVENT, RecordClass.TELEMETRY)
EVICTION_ORDER = (RecordClass.TELEMETRY, RecordClass.EVENT, RecordClass.ALERT)


class Durability(enum.StrEnum):
    """When a committed record counts as kept.

    FULL: ``synchronous=FULL``. Each group commit fsyncs the WAL before it returns; a committed record
    survives a process crash and a power cut.
    NORMAL: ``synchronous=NORMAL``. A committed record survives a process crash; on a power cut the
    commits since the last checkpoint (at most the WAL budget, about a second of heavy recording) may be
    lost. Fewer fsyncs, kinder to SD cards.
    In both modes, records appended but not yet group-committed (at most ``flush_interval_ms`` or
    ``flush_records`` of them) are lost if the process dies.
    """

    FULL = "full"
    NORMAL = "normal"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    ts: float
    kind: str
    cls: RecordClass
    data: bytes


@dataclass(frozen=True, slots=True)
class Claim:
    """Committed records of one class, oldest first, handed to the uplink as one batch."""

    cls: RecordClass
    rows: list[OutboxRow]

    @property
    def first_seq(self) -> int:
        return self.rows[0].seq

    @property
    def last_seq(self) -> int:
        return self.rows[-1].seq

    @property
    def nbytes(self) -> int:
        return sum(len(r.data) + len(r.kind) + 24 for r in self.rows)


@dataclass(frozen=True, slots=True)
class OutboxStats:
    records: int
    pending: int
    next_seq: int
    disk_bytes: int
    cap_bytes: int
    delivered: int
    evicted: dict[str, int]
    quarantined: int


@dataclass(slots=True)
class _Pending:
    ts: float
    kind: str
    cls: RecordClass
    data: bytes


@dataclass(slots=True)
class _Budget:
    wal_bytes: int
    data_pages: int
    txn_bytes: int
    high_water_bytes: int = field(init=False)
    low_water_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.high_water_bytes = int(self.data_pages * PAGE_SIZE * EVICT_HIGH_WATER)
        self.low_water_bytes = int(self.data_pages * PAGE_SIZE * EVICT_LOW_WATER)


def _budget_for(cap_bytes: int) -> _Budget:
    if cap_bytes < MIN_CAP_BYTES:
        raise OutboxError(f"outbox cap of {cap_bytes} bytes is too small: use at least {MIN_CAP_BYTES}")
    wal = min(max(cap_bytes // 8, 128 * 1024), 8 * 1024 * 1024)
    data_pages = (cap_bytes - wal - SHM_RESERVE) // PAGE_SIZE
    # The WAL holds at most the checkpoint threshold (a quarter of its budget) plus one transaction, whose
    # inserts and evictions are each held to a quarter: pages are not packed full, so that leaves headroom.
    return _Budget(wal_bytes=wal, data_pages=data_pages, txn_bytes=wal // 4)


def _migration_1(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE outbox (cls INTEGER NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL,"
        " kind TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (cls, seq)) WITHOUT ROWID"
    )
    db.execute("CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migration_1]


class TelemetryOutbox:
    """A capped, durable, ordered store of a vehicle's outgoing records. Thread-safe.

    Use :meth:`open`; it quarantines a database that cannot be read rather than refusing to start.
    """

    def __init__(self, db: sqlite3.Connection, path: Path, cap_bytes: int, quarantined: int,
                 max_pending: int = 500_000) -> None:
        self._db = db
        self._path = path
        self._cap_bytes = cap_bytes
        self._budget = _budget_for(cap_bytes)
        self._lock = threading.RLock()
        self._pending_lock = threading.Lock()
        # Separate from _lock: the uplink acknowledges from the event loop while a commit may be fsyncing.
        self._acked_lock = threading.Lock()
        self._pending: list[_Pending] = []
        self._acked: list[tuple[int, int, int]] = []
        self._acks_in_txn: list[tuple[int, int, int]] = []
        self._cursor = dict.fromkeys(RecordClass, 0)
        self._counters = dict(db.execute("SELECT name, value FROM counters"))
        self._records = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        self._seq_ceiling = _read_seq_ceiling(path)
        self._quarantined = quarantined
        self._flush_threshold = 0
        self._max_pending = max_pending
        self._dropped_pending = 0
        self._on_threshold: Callable[[], object] | None = None
        self._counters.setdefault("next_seq", 1)
        self._dropped_to_report = 0
        self._last_eviction_report = 0.0
        self.last_commit_urgent = False
        # An upper bound of the bytes in use, so the page-count pragmas are read only near the cap.
        self._used_bound = self._used_bytes()
        """Whether the last commit wrote an alert or an event (the uplink sends those without lingering)."""

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, *, cap_bytes: int, durability: Durability = Durability.FULL,
             max_pending: int = 500_000) -> TelemetryOutbox:
        """Open (or create) the outbox at ``path``.

        A database that SQLite cannot read is renamed to ``<name>.corrupt-<unix time>`` (with its WAL),
        logged, and replaced by a fresh one whose sequence continues above every number handed out, and
        an ``outbox.quarantined`` alert is queued for the coordinator.

        Raises:
            OutboxError: the cap is too small or the directory cannot be written.

        ``max_pending`` bounds the records held in memory while commits fail (a dying disk): past it the
        oldest pending telemetry is dropped, counted, and reported as ``outbox.dropped`` once a commit works.
        """
        path = Path(path)
        budget = _budget_for(cap_bytes)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(f"cannot create the outbox directory {path.parent}: {exc.strerror}") from None
        reason = None
        try:
            db = _connect(path, budget, durability)
        except sqlite3.DatabaseError as exc:
            reason = str(exc)
            quarantined_to = _quarantine(path)
            log.error("outbox %s is unreadable (%s); moved it to %s and started a fresh one",
                      path, reason, quarantined_to)
            db = _connect(path, budget, durability)
        outbox = cls(db, path, cap_bytes, quarantined=1 if reason else 0, max_pending=max_pending)
        if reason is not None:
            outbox._resume_after_quarantine(reason)
        return outbox

    def _resume_after_quarantine(self, reason: str) -> None:
        # The lost database's numbers are unknown; the sidecar ceiling is above all of them.
        resume = self._seq_ceiling or int(time.time() * 1000)
        self._counters["next_seq"] = resume
        with self._transaction():
            self._store_counters()
        self.append("outbox.quarantined", {"reason": reason[:200], "resume_seq": resume}, cls=RecordClass.ALERT)

    # -- writing -------------------------------------------------------------------------------

    def append(self, kind: str, data: dict[str, Any], *, cls: RecordClass = RecordClass.TELEMETRY,
               ts: float | None = None) -> None:
        """Queue one record for the next group commit."""
        self.append_encoded(kind, encode_data(data), cls=cls, ts=ts)

    def append_encoded(self, kind: str, data: bytes, *, cls: RecordClass = RecordClass.TELEMETRY,
                       ts: float | None = None) -> None:
        """Queue one record whose ``data`` map is already MessagePack."""
        item = _Pending(time.time() if ts is None else ts, kind, cls, data)
        with self._pending_lock:
            if len(self._pending) >= self._max_pending:
                self._drop_one_pending(item)
            self._pending.append(item)
            crossed = len(self._pending) == self._flush_threshold
        if crossed and self._on_threshold is not None:
            self._on_threshold()

    def _drop_one_pending(self, incoming: _Pending) -> None:
        # Only while commits keep failing. Telemetry goes first; events and alerts are kept if at all possible.
        victim = next((i for i, p in enumerate(self._pending) if p.cls == RecordClass.TELEMETRY), 0)
        del self._pending[victim]
        self._dropped_pending += 1
        if self._dropped_pending == 1 or self._dropped_pending % 10_000 == 0:
            log.error("outbox commits are failing: %d records dropped from memory so far", self._dropped_pending)

    def notify_when_pending(self, threshold: int, callback: Callable[[], object]) -> None:
        """Call ``callback`` (from the appending thread) when ``threshold`` records are pending."""
        self._flush_threshold = threshold
        self._on_threshold = callback

    @property
    def pending(self) -> int:
        """Records appended and not yet committed."""
        return len(self._pending)

    def commit(self) -> int:
        """Write every pending record and apply acknowledgements, evicting first if the cap needs it.

        Returns:
            The number of records written.

        Raises:
            OutboxError: the disk failed; the records stay pending and the next commit retries them.
        """
        with self._lock:
            with self._pending_lock:
                pending, self._pending = self._pending, []
                self._dropped_to_report += self._dropped_pending
                self._dropped_pending = 0
            written = 0
            self.last_commit_urgent = any(p.cls != RecordClass.TELEMETRY for p in pending)
            try:
                for chunk in self._chunks(pending):
                    self._commit_chunk(chunk)
                    written += len(chunk)
                if not pending and (self._acked or self._unreported_evictions()):
                    self._commit_chunk([])
            except sqlite3.Error as exc:
                with self._pending_lock:
                    self._pending[:0] = pending[written:]
                raise OutboxError(f"outbox commit failed at {self._path}: {exc}") from exc
            return written

    def _chunks(self, pending: list[_Pending]) -> Iterator[list[_Pending]]:
        start, size = 0, 0
        for i, item in enumerate(pending):
            size += len(item.data) + len(item.kind) + ROW_OVERHEAD
            if size >= self._budget.txn_bytes:
                yield pending[start : i + 1]
                start, size = i + 1, 0
        if start < len(pending):
            yield pending[start:]

    def _commit_chunk(self, chunk: list[_Pending]) -> None:
        incoming = sum(len(p.data) + len(p.kind) + ROW_OVERHEAD for p in chunk)
        extra_need = 0
        for _attempt in range(8):
            if extra_need or self._used_bound + incoming > self._budget.high_water_bytes * 0.8:
                # Evicting dirties many pages: start it on an empty WAL so the file stays inside its budget.
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            try:
                with self._transaction():
                    self._apply_acks()
                    evictions = self._make_room(incoming, extra_need)
                    first = self._counters["next_seq"]
                    rows = [(p.cls, first + i, p.ts, p.kind, p.data) for i, p in enumerate(chunk)]
                    next_seq = first + len(rows)
                    if self._dropped_to_report:
                        dropped = {"records": self._dropped_to_report, "reason": "commits failed; memory bound reached"}
                        rows.append((RecordClass.ALERT, next_seq, time.time(), "outbox.dropped", encode_data(dropped)))
                        next_seq += 1
                    for report in self._eviction_reports(evictions):
                        rows.append((RecordClass.EVENT, next_seq, time.time(), "outbox.evicted", encode_data(report)))
                        next_seq += 1
                    self._reserve_seq(next_seq)
                    self._db.executemany("INSERT INTO outbox VALUES (?, ?, ?, ?, ?)", rows)
                    self._counters["next_seq"] = next_seq
                    self._counters["dropped_pending"] = (self._counters.get("dropped_pending", 0)
                                                         + self._dropped_to_report)
                    self._store_counters()
                self._records += len(rows)
                self._dropped_to_report = 0
                return
            except sqlite3.OperationalError as exc:
                if "full" not in str(exc):
                    raise
                # The estimate was short of what the pages really hold: free more and try again.
                self._reload_counters()
                extra_need = max(extra_need * 2, incoming, self._budget.wal_bytes)
        raise sqlite3.OperationalError("outbox is full and nothing more can be evicted")

    def _unreported_evictions(self) -> bool:
        return any(self._counters.get(f"unreported_{c.name.lower()}", 0) for c in RecordClass)

    def _eviction_reports(self, evictions: list[tuple[RecordClass, int, int, int]]) -> list[dict[str, int]]:
        """Fold this transaction's evictions into the unreported tally; return the reports that are due.

        During a long outage the cap evicts at every commit; one report per class every
        ``EVICTION_REPORT_INTERVAL_S`` (and when eviction stops) keeps the reports themselves from crowding
        the cap. The tally lives in the counters table, so a crash before the report loses nothing.
        """
        c = self._counters
        for cls, first, last, count in evictions:
            name = cls.name.lower()
            if not c.get(f"unreported_{name}", 0):
                c[f"unreported_{name}_first"] = first
            c[f"unreported_{name}"] = c.get(f"unreported_{name}", 0) + count
            c[f"unreported_{name}_last"] = last
        now = time.monotonic()
        if not self._unreported_evictions() or (evictions and now - self._last_eviction_report
                                                < EVICTION_REPORT_INTERVAL_S):
            return []
        self._last_eviction_report = now
        reports = []
        for cls in RecordClass:
            name = cls.name.lower()
            count = c.get(f"unreported_{name}", 0)
            if count:
                reports.append({"cls": int(cls), "first_seq": c[f"unreported_{name}_first"],
                                "last_seq": c[f"unreported_{name}_last"], "records": count})
                log.warning("outbox cap reached: evicted %d %s records (seq %d..%d) since the last report",
                            count, name, c[f"unreported_{name}_first"], c[f"unreported_{name}_last"])
                c[f"unreported_{name}"] = 0
        return reports

    def _make_room(self, incoming: int, extra_need: int) -> list[tuple[RecordClass, int, int, int]]:
        if not extra_need and self._used_bound + incoming <= self._budget.high_water_bytes * 0.8:
            self._used_bound += incoming
            return []
        used = self._used_bytes()
        self._used_bound = used + incoming
        if used + incoming + extra_need <= self._budget.high_water_bytes:
            return []
        # At most a quarter of the WAL budget per transaction; the next commit evicts more if needed.
        need = min(used + incoming + extra_need - self._budget.low_water_bytes, self._budget.txn_bytes)
        evictions = []
        for cls in EVICTION_ORDER:
            while need > 0:
                rows = self._db.execute(
                    "SELECT seq, length(data) + length(kind) FROM outbox WHERE cls = ? AND seq > ?"
                    " ORDER BY seq LIMIT 4096",
                    (cls, self._cursor[cls]),
                ).fetchall()
                if not rows:
                    break
                freed, last = 0, rows[0][0]
                for seq, size in rows:
                    freed += size + ROW_OVERHEAD
                    last = seq
                    if freed >= need:
                        break
                deleted = self._db.execute(
                    "DELETE FROM outbox WHERE cls = ? AND seq BETWEEN ? AND ?", (cls, rows[0][0], last)
                ).rowcount
                self._records -= deleted
                counter = f"evicted_{cls.name.lower()}"
                self._counters[counter] = self._counters.get(counter, 0) + deleted
                evictions.append((cls, rows[0][0], last, deleted))
                need -= freed
            if need <= 0:
                break
        return evictions

    def _used_bytes(self) -> int:
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * PAGE_SIZE)

    def _reserve_seq(self, next_seq: int) -> None:
        if next_seq <= self._seq_ceiling:
            return
        ceiling = next_seq + SEQ_RESERVATION_BLOCK
        _write_seq_ceiling(self._path, ceiling)
        self._seq_ceiling = ceiling

    # -- reading for the uplink ----------------------------------------------------------------

    def claim(self, *, max_records: int, max_bytes: int) -> Claim | None:
        """Take the next batch of committed, unclaimed records: alerts, then events, then telemetry.

        Returns:
            A claim of at least one record, or None when everything committed is already claimed.
        """
        with self._lock:
            for cls in UPLOAD_ORDER:
                fetched = self._db.execute(
                    "SELECT seq, ts, kind, data FROM outbox WHERE cls = ? AND seq > ? ORDER BY seq LIMIT ?",
                    (cls, self._cursor[cls], max_records),
                ).fetchall()
                if not fetched:
                    continue
                rows: list[OutboxRow] = []
                size = 0
                for seq, ts, kind, data in fetched:
                    size += len(data) + len(kind) + 24
                    if rows and size > max_bytes:
                        break
                    rows.append(OutboxRow(seq, ts, kind, cls, data))
                self._cursor[cls] = rows[-1].seq
                return Claim(cls, rows)
            return None

    def acknowledge(self, claim: Claim) -> None:
        """The broker has the claim's records: delete them at the next commit."""
        with self._acked_lock:
            self._acked.append((claim.cls, claim.first_seq, claim.last_seq))

    @property
    def acknowledged(self) -> int:
        """Claims acknowledged and not yet deleted."""
        return len(self._acked)

    def release_unacknowledged(self) -> None:
        """Make every claimed but unacknowledged record eligible for ``claim`` again (after a lost link)."""
        with self._lock:
            if self._acked:
                with self._transaction():
                    self._apply_acks()
                    self._store_counters()
            self._cursor = dict.fromkeys(RecordClass, 0)

    def _apply_acks(self) -> None:
        with self._acked_lock:
            acked, self._acked = self._acked, []
        self._acks_in_txn += acked
        for cls, first, last in acked:
            deleted = self._db.execute(
                "DELETE FROM outbox WHERE cls = ? AND seq BETWEEN ? AND ?", (cls, first, last)
            ).rowcount
            self._records -= deleted
            self._counters["delivered"] = self._counters.get("delivered", 0) + deleted

    # -- state ---------------------------------------------------------------------------------

    def stats(self) -> OutboxStats:
        with self._lock:
            return OutboxStats(
                records=self._records,
                pending=len(self._pending),
                next_seq=self._counters["next_seq"],
                disk_bytes=self.disk_bytes(),
                cap_bytes=self._cap_bytes,
                delivered=self._counters.get("delivered", 0),
                evicted={c.name.lower(): self._counters.get(f"evicted_{c.name.lower()}", 0) for c in RecordClass},
                quarantined=self._quarantined,
            )

    def disk_bytes(self) -> int:
        """Bytes the outbox takes on disk: database, WAL and shared-memory files."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(f"{self._path}{suffix}").st_size
        return total

    def close(self) -> None:
        """Commit what is pending and close the database."""
        with self._lock:
            with contextlib.suppress(OutboxError):
                self.commit()
            self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            # Undo what the transaction did in memory: its acknowledgements wait for the next commit.
            with self._acked_lock:
                self._acked[:0] = self._acks_in_txn
            self._acks_in_txn = []
            self._reload_counters()
            raise
        self._db.execute("COMMIT")
        self._acks_in_txn = []

    def _store_counters(self) -> None:
        self._db.executemany("INSERT OR REPLACE INTO counters VALUES (?, ?)", self._counters.items())

    def _reload_counters(self) -> None:
        self._counters = dict(self._db.execute("SELECT name, value FROM counters"))
        self._counters.setdefault("next_seq", 1)
        self._records = self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]


def _connect(path: Path, budget: _Budget, durability: Durability) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {durability.value.upper()}")
        db.execute(f"PRAGMA max_page_count = {budget.data_pages}")
        db.execute(f"PRAGMA wal_autocheckpoint = {max(budget.wal_bytes // 4 // PAGE_SIZE, 8)}")
        db.execute(f"PRAGMA journal_size_limit = {budget.wal_bytes // 4}")
        _migrate(db)
        # Touch what every later call reads, so a damaged file is caught here, not mid-flight.
        db.execute("SELECT count(*), max(seq) FROM outbox").fetchone()
        db.execute("SELECT name, value FROM counters").fetchall()
    except sqlite3.DatabaseError:
        db.close()
        raise
    return db


def _migrate(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
    done = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
    for version, migration in enumerate(MIGRATIONS, start=1):
        if version in done:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            migration(db)
            db.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, time.time()))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def _quarantine(path: Path) -> Path:
    target = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}{suffix}", f"{target}{suffix}")
    return target


def _seq_file(path: Path) -> Path:
    return path.with_name(path.name + ".seq")


def _read_seq_ceiling(path: Path) -> int:
    try:
        return int(_seq_file(path).read_text().strip())
    except (FileNotFoundError, ValueError):
        return 0


def _write_seq_ceiling(path: Path, ceiling: int) -> None:
    target = _seq_file(path)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(f"{ceiling}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
