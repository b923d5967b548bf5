"""Records per second into the edge outbox, against a raw sqlite3 executemany baseline in the same run.

Both sides store the same records (MessagePack-encoded position maps) in the same table layout, with
the same pragmas (WAL, the same synchronous level) and the same transaction size as the agent's group
commit. The outbox adds what the agent relies on: sequence numbering that survives restarts, the disk
cap check, counters and thread safety. Runs alternate and the best of each is kept, so a noisy neighbour
hurts both sides alike.

Last line: {"records_per_s", "baseline_records_per_s", "ratio", ...}.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_agent.outbox import PAGE_SIZE, Durability, TelemetryOutbox

GROUP = 2000  # the agent's default flush_records
CAP = 1024 * 1024 * 1024


def records(n: int) -> list[tuple[float, dict[str, float]]]:
    t0 = 1_800_000_000.0
    return [(t0 + i * 0.02, {"lat": 52.52 + i * 1e-7, "lon": 13.405 - i * 1e-7, "alt_m": 60.0 + (i % 50),
                             "speed_m_s": 12.0, "heading_deg": float(i % 360)}) for i in range(n)]


def run_outbox(data: list[tuple[float, dict[str, float]]], workdir: Path, durability: Durability) -> float:
    outbox = TelemetryOutbox.open(workdir / "outbox.db", cap_bytes=CAP, durability=durability)
    started = time.perf_counter()
    append, commit = outbox.append, outbox.commit
    for i, (ts, values) in enumerate(data, start=1):
        append("position", values, ts=ts)
        if i % GROUP == 0:
            commit()
    commit()
    elapsed = time.perf_counter() - started
    assert outbox.stats().records == len(data)
    outbox.close()
    return len(data) / elapsed


def run_baseline(data: list[tuple[float, dict[str, float]]], workdir: Path, durability: Durability) -> float:
    db = sqlite3.connect(workdir / "baseline.db", isolation_level=None)
    db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(f"PRAGMA synchronous = {durability.value.upper()}")
    db.execute("CREATE TABLE outbox (cls INTEGER NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL,"
               " kind TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (cls, seq)) WITHOUT ROWID")
    encode = msgspec.msgpack.Encoder().encode
    started = time.perf_counter()
    rows = []
    for seq, (ts, values) in enumerate(data, start=1):
        rows.append((2, seq, ts, "position", encode(values)))
        if seq % GROUP == 0:
            db.execute("BEGIN")
            db.executemany("INSERT INTO outbox VALUES (?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")
            rows = []
    if rows:
        db.execute("BEGIN")
        db.executemany("INSERT INTO outbox VALUES (?, ?, ?, ?, ?)", rows)
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return len(data) / elapsed


def measure(n: int, rounds: int, durability: Durability) -> dict[str, float]:
    data = records(n)
    ours, base = [], []
    for r in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            if r % 2:
                ours.append(run_outbox(data, workdir, durability))
                base.append(run_baseline(data, workdir, durability))
            else:
                base.append(run_baseline(data, workdir, durability))
                ours.append(run_outbox(data, workdir, durability))
        print(f"  {durability.value} round {r + 1}/{rounds}: outbox {ours[-1]:,.0f} rec/s, "
              f"baseline {base[-1]:,.0f} rec/s", flush=True)
    return {"records_per_s": round(max(ours)), "baseline_records_per_s": round(max(base)),
            "ratio": round(max(ours) / max(base), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000, help="records per round (default 200,000)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per side (default 5)")
    args = parser.parse_args()
    print(f"edge outbox vs raw sqlite3 executemany, {args.records:,} records, group commit of {GROUP}")
    full = measure(args.records, args.rounds, Durability.FULL)
    normal = measure(args.records, args.rounds, Durability.NORMAL)
    print(f"durability=full   (default): outbox {full['records_per_s']:,} rec/s, baseline "
          f"{full['baseline_records_per_s']:,} rec/s, ratio {full['ratio']}")
    print(f"durability=normal          : outbox {normal['records_per_s']:,} rec/s, baseline "
          f"{normal['baseline_records_per_s']:,} rec/s, ratio {normal['ratio']}")
    print(json.dumps({**full, "durability": "full", "normal": normal}))


if __name__ == "__main__":
    main()
