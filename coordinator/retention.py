"""Telemetry retention: history older than ``store.telemetry_retention_days`` is deleted, a little at a time."""

from __future__ import annotations

import asyncio
import logging
import time

from coordinator.errors import StoreError
from coordinator.store import FleetStore

log = logging.getLogger(__name__)

CHUNK_RECORDS = 20_000
"""Records deleted per store call: small enough that ingest never waits long behind a prune."""


async def prune_forever(store: FleetStore, retention_days: float, *, interval_s: float = 600.0) -> None:
    """Every ``interval_s``, delete history older than ``retention_days`` (0 keeps everything)."""
    if retention_days <= 0:
        return
    while True:
        cutoff = time.time() - retention_days * 86_400
        removed = 0
        try:
            while (n := await asyncio.to_thread(store.prune_telemetry, cutoff, max_records=CHUNK_RECORDS)) > 0:
                removed += n
                await asyncio.sleep(0.05)  # let ingest and the API in between chunks
        except StoreError as exc:
            log.error("telemetry retention failed (%s); trying again in %.0f s", exc, interval_s)
        if removed:
            log.info("telemetry retention: deleted %d records older than %.1f days", removed, retention_days)
        await asyncio.sleep(interval_s)
