"""The outbox against real SQLite files: numbering, group commit, claim order, the cap, quarantine."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import msgspec
import pytest

from edge_agent.errors import OutboxError
from edge_agent.outbox import MIN_CAP_BYTES, TelemetryOutbox
from protocols import RecordClass

CAP = 2 * 1024 * 1024


def open_outbox(tmp_path: Path, cap: int = CAP) -> TelemetryOutbox:
    return TelemetryOutbox.open(tmp_path / "outbox.db", cap_bytes=cap)


def drain(outbox: TelemetryOutbox) -> list[tuple[int, str, RecordClass]]:
    out = []
    while (claim := outbox.claim(max_records=500, max_bytes=1 << 20)) is not None:
        out += [(r.seq, r.kind, r.cls) for r in claim.rows]
        outbox.acknowledge(claim)
    outbox.commit()
    return out


def test_sequence_numbers_are_given_at_commit_and_survive_restart(tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path)
    for i in range(10):
        outbox.append("position", {"i": i})
    assert outbox.claim(max_records=100, max_bytes=1 << 20) is None, "uncommitted records must not be sent"
    assert outbox.commit() == 10
    assert [s for s, _, _ in drain(outbox)] == list(range(1, 11))
    outbox.close()

    reopened = open_outbox(tmp_path)
    reopened.append("position", {"i": 10})
    reopened.commit()
    assert [s for s, _, _ in drain(reopened)] == [11], "numbers continue after a restart even when all were delivered"


def test_claims_send_alerts_then_events_then_telemetry_each_oldest_first(tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path)
    outbox.append("position", {})
    outbox.append("mode.changed", {}, cls=RecordClass.EVENT)
    outbox.append("position", {})
    outbox.append("battery.low", {}, cls=RecordClass.ALERT)
    outbox.append("mode.changed", {}, cls=RecordClass.EVENT)
    outbox.commit()
    assert drain(outbox) == [(4, "battery.low", RecordClass.ALERT), (2, "mode.changed", RecordClass.EVENT),
                             (5, "mode.changed", RecordClass.EVENT), (1, "position", RecordClass.TELEMETRY),
                             (3, "position", RecordClass.TELEMETRY)]


def test_records_leave_only_after_acknowledgement_and_released_claims_are_sent_again(tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path)
    for i in range(100):
        outbox.append("position", {"i": i})
    outbox.commit()
    first = outbox.claim(max_records=40, max_bytes=1 << 20)
    second = outbox.claim(max_records=40, max_bytes=1 << 20)
    assert first is not None and second is not None
    assert (first.first_seq, first.last_seq, second.first_seq) == (1, 40, 41)
    outbox.acknowledge(first)
    outbox.commit()
    assert outbox.stats().records == 60
    outbox.release_unacknowledged()  # the link dropped before `second` was acknowledged
    again = outbox.claim(max_records=40, max_bytes=1 << 20)
    assert again is not None and again.first_seq == 41
    assert outbox.stats().delivered == 40


def test_byte_limit_splits_batches(tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path)
    for _ in range(50):
        outbox.append("blob", {"x": "y" * 1000})
    outbox.commit()
    claim = outbox.claim(max_records=1000, max_bytes=10_000)
    assert claim is not None and 5 <= len(claim.rows) <= 10


def _files_size(path: Path) -> int:
    return sum(os.stat(f"{path}{s}").st_size for s in ("", "-wal", "-shm") if os.path.exists(f"{path}{s}"))


def _telemetry_indexes(tmp_path: Path) -> list[int]:
    with sqlite3.connect(tmp_path / "outbox.db") as db:
        rows = db.execute("SELECT data FROM outbox WHERE kind = 'position' ORDER BY seq").fetchall()
    return [msgspec.msgpack.decode(r[0])["i"] for r in rows]


def test_cap_is_never_exceeded_and_evicts_oldest_telemetry_first_keeping_events(tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path)
    peak = 0
    for i in range(60_000):
        outbox.append("position", {"lat": 52.0 + i * 1e-6, "lon": 13.0, "alt_m": 60.0, "i": i})
        if i % 500 == 0:
            outbox.append("mode.changed", {"i": i}, cls=RecordClass.EVENT)
        if i % 1000 == 0:
            outbox.append("battery.low", {"i": i}, cls=RecordClass.ALERT)
        if i % 250 == 0:
            outbox.commit()
            peak = max(peak, _files_size(tmp_path / "outbox.db"))
    outbox.commit()
    peak = max(peak, _files_size(tmp_path / "outbox.db"))
    stats = outbox.stats()
    survivors = _telemetry_indexes(tmp_path)
    assert survivors == list(range(60_000 - len(survivors), 60_000)), "the oldest telemetry goes first"

    assert peak <= CAP, f"outbox reached {peak} bytes, cap {CAP}"
    assert stats.evicted["telemetry"] > 0
    assert stats.evicted["event"] == 0 and stats.evicted["alert"] == 0
    records = drain(outbox)
    kinds = [k for _, k, _ in records]
    assert kinds.count("mode.changed") == 120 and kinds.count("battery.low") == 60, "no event or alert was evicted"
    assert len([k for k in kinds if k == "position"]) == stats.records - 180 - kinds.count("outbox.evicted")
    reports = [s for s, k, _ in records if k == "outbox.evicted"]
    assert reports, "every eviction is itself recorded for the coordinator"
    assert stats.records + stats.evicted["telemetry"] == stats.next_seq - 1


def test_eviction_reports_account_for_every_evicted_record(tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path)
    for i in range(40_000):
        outbox.append("position", {"i": i, "pad": "x" * 40})
        if i % 1000 == 0:
            outbox.commit()
    outbox.commit()
    outbox.commit()  # eviction has stopped: the remaining tally is reported now
    reported = 0
    while (claim := outbox.claim(max_records=500, max_bytes=1 << 20)) is not None:
        for row in claim.rows:
            if row.kind == "outbox.evicted":
                reported += msgspec.msgpack.decode(row.data)["records"]
        outbox.acknowledge(claim)
    assert reported == outbox.stats().evicted["telemetry"] > 0


def test_a_corrupt_database_is_quarantined_and_numbering_continues_above_all_used(tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path)
    for i in range(1000):
        outbox.append("position", {"i": i})
    outbox.commit()
    outbox.close()
    (tmp_path / "outbox.db").write_bytes(b"this is not a database" * 500)

    fresh = open_outbox(tmp_path)
    assert fresh.stats().quarantined == 1
    assert list(tmp_path.glob("outbox.db.corrupt-*")), "the damaged file is kept for inspection"
    fresh.append("position", {"i": 0})
    fresh.commit()
    records = drain(fresh)
    assert records[0][1] == "outbox.quarantined" and records[0][2] is RecordClass.ALERT
    assert min(s for s, _, _ in records) > 1000, "new numbers must not collide with ones already sent"


def test_a_cap_below_the_minimum_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OutboxError, match="too small"):
        open_outbox(tmp_path, cap=MIN_CAP_BYTES - 1)


def test_committed_rows_are_in_the_file_for_another_reader(tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path)
    outbox.append("position", {"i": 1})
    outbox.commit()
    with sqlite3.connect(tmp_path / "outbox.db") as other:
        assert other.execute("SELECT count(*) FROM outbox").fetchone()[0] == 1


def test_while_commits_fail_memory_stays_bounded_and_the_loss_is_reported(tmp_path: Path) -> None:
    outbox = TelemetryOutbox.open(tmp_path / "outbox.db", cap_bytes=CAP, max_pending=100)
    blocker = sqlite3.connect(tmp_path / "outbox.db", timeout=0)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock: every commit fails
    outbox._db.execute("PRAGMA busy_timeout = 0")
    outbox.append("battery.low", {}, cls=RecordClass.ALERT)
    for i in range(250):
        outbox.append("position", {"i": i})
    with pytest.raises(OutboxError):
        outbox.commit()
    assert outbox.pending == 100, "pending records are bounded"
    blocker.execute("ROLLBACK")
    blocker.close()
    outbox.commit()
    kinds = [k for _, k, _ in drain(outbox)]
    assert kinds[:2] == ["battery.low", "outbox.dropped"] or kinds[:2] == ["outbox.dropped", "battery.low"]
    assert kinds.count("position") == 99 and outbox.stats().records == 0


def test_a_failed_commit_keeps_acknowledgements_for_the_next(tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path)
    for i in range(10):
        outbox.append("position", {"i": i})
    outbox.commit()
    claim = outbox.claim(max_records=10, max_bytes=1 << 20)
    assert claim is not None
    outbox.acknowledge(claim)
    blocker = sqlite3.connect(tmp_path / "outbox.db", timeout=0)
    blocker.execute("BEGIN IMMEDIATE")
    outbox._db.execute("PRAGMA busy_timeout = 0")
    outbox.append("position", {"i": 10})
    with pytest.raises(OutboxError):
        outbox.commit()
    blocker.execute("ROLLBACK")
    blocker.close()
    outbox.commit()
    assert outbox.stats().records == 1 and outbox.stats().delivered == 10
