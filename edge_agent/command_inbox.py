"""The command inbox: every command the vehicle was sent, stored before it is acknowledged or run.

A command is admitted once. Its id is committed (``synchronous = FULL``) before the agent says
``received``, so a command delivered again (a QoS 1 redelivery, a coordinator retry, a replay) is
recognised after any crash and never runs twice. A command past its ``expires_at`` never runs: it is
rejected as expired on arrival, and checked again just before it starts.

Each state a command reaches is kept with an "ack pending" mark until the broker has the matching
``CommandAck``: acks lost with the link are sent when it returns, even after a restart. Ids are kept a day
past their expiry; a replay older than that is rejected as expired all the same.
"""

from __future__ import annotations

import enum
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge_agent.errors import InboxError
from protocols import AckState, Command, CommandAck, encode_data

KEEP_AFTER_EXPIRY_S = 86_400.0


class Admission(enum.Enum):
    NEW = "new"              # stored as received: run it
    DUPLICATE = "duplicate"  # seen before: its current state is acknowledged again, nothing runs
    EXPIRED = "expired"      # arrived too late: stored as rejected, never runs


@dataclass(frozen=True, slots=True)
class PendingAck:
    command_id: str
    state: AckState
    reason: str
    at: float


class CommandInbox:
    """Received commands in one SQLite file; every method is safe to call from any thread."""

    def __init__(self, path: str | Path, vehicle_id: str) -> None:
        self.path = Path(path)
        self._vehicle_id = vehicle_id
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode = WAL")
            # A command's admission must survive power loss: it is what stops a second run.
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("""
                CREATE TABLE IF NOT EXISTS commands (
                    command_id TEXT PRIMARY KEY,
                    kind TEXT NOT NULL,
                    params BLOB NOT NULL,
                    issued_at REAL NOT NULL,
                    expires_at REAL NOT NULL,
                    received_at REAL NOT NULL,
                    state TEXT NOT NULL,
                    reason TEXT NOT NULL,
                    updated_at REAL NOT NULL,
                    ack_pending INTEGER NOT NULL
                )""")
        except sqlite3.Error as exc:
            raise InboxError(f"cannot open the command inbox {self.path}: {exc}") from exc

    def admit(self, command: Command, now: float) -> Admission:
        """Store a newly delivered command, or recognise one seen before."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._db.execute("SELECT 1 FROM commands WHERE command_id = ?",
                                    (command.command_id,)).fetchone():
                    self._db.execute("UPDATE commands SET ack_pending = 1 WHERE command_id = ?", (command.command_id,))
                    admission = Admission.DUPLICATE
                else:
                    expired = command.expires_at <= now
                    state = AckState.REJECTED if expired else AckState.RECEIVED
                    reason = (f"expired {now - command.expires_at:.1f} s before it arrived; it never runs"
                              if expired else "")
                    self._db.execute("INSERT INTO commands VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
                                     (command.command_id, command.kind, encode_data(command.params), command.issued_at,
                                      command.expires_at, now, state.value, reason, now))
                    admission = Admission.EXPIRED if expired else Admission.NEW
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return admission

    def update(self, command_id: str, state: AckState, reason: str = "") -> None:
        """Record the state a command reached; its ack goes out with the next ack round."""
        with self._lock:
            self._db.execute("UPDATE commands SET state = ?, reason = ?, updated_at = ?, ack_pending = 1"
                             " WHERE command_id = ?", (state.value, reason[:500], time.time(), command_id))

    def state(self, command_id: str) -> tuple[AckState, str] | None:
        row = self._db.execute("SELECT state, reason FROM commands WHERE command_id = ?", (command_id,)).fetchone()
        return None if row is None else (AckState(row[0]), row[1])

    def pending_acks(self, limit: int = 100) -> list[PendingAck]:
        with self._lock:
            rows = self._db.execute("SELECT command_id, state, reason, updated_at FROM commands WHERE ack_pending = 1"
                                    " ORDER BY updated_at LIMIT ?", (limit,)).fetchall()
        return [PendingAck(cid, AckState(state), reason, at) for cid, state, reason, at in rows]

    def ack_for(self, pending: PendingAck) -> CommandAck:
        return CommandAck(command_id=pending.command_id, vehicle_id=self._vehicle_id, state=pending.state,
                          ts=pending.at, reason=pending.reason)

    def acknowledged(self, pending: PendingAck) -> None:
        """The broker has this ack; unless the command moved on meanwhile, nothing is left to send."""
        with self._lock:
            self._db.execute("UPDATE commands SET ack_pending = 0"
                             " WHERE command_id = ? AND state = ? AND updated_at = ?",
                             (pending.command_id, pending.state.value, pending.at))

    def fail_unfinished(self, reason: str) -> list[str]:
        """At start-up: commands a previous run left received or running are failed, never resumed blind."""
        with self._lock:
            ids = [r[0] for r in self._db.execute(
                "SELECT command_id FROM commands WHERE state IN (?, ?)",
                (AckState.RECEIVED.value, AckState.ACCEPTED.value))]
            self._db.executemany("UPDATE commands SET state = ?, reason = ?, updated_at = ?, ack_pending = 1"
                                 " WHERE command_id = ?", [(AckState.FAILED.value, reason, time.time(), cid)
                                                           for cid in ids])
        return ids

    def prune(self, now: float) -> int:
        """Forget commands a day past their expiry whose last ack was delivered."""
        with self._lock:
            return self._db.execute("DELETE FROM commands WHERE expires_at < ? AND ack_pending = 0",
                                    (now - KEEP_AFTER_EXPIRY_S,)).rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()
