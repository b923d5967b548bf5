"""Heatmap refreshes in a process of their own.

A refresh reads the whole fleet and every recent order and builds a heatmap at three resolutions: some
100 ms of Python every ``supply.heatmap_refresh_s`` with 10,000 vehicles. In a thread of the process serving
the REST API it held the interpreter's lock against the event loop, and each refresh showed in the API's
tail (``bench/api.py``, Redis store: radius p99 19 ms with refreshes held off, 60-150 ms with them). The
worker opens its own connection to the store, keeps the forecast's order history, and hands back only the
maps and forecasts (:class:`~coordinator.supply.heatmap_service.HeatmapUpdate`).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from coordinator.child_process import spawn_pool
from coordinator.config import CoordinatorSettings
from coordinator.log_format import configure_logging
from coordinator.store import open_store
from coordinator.supply.heatmap_service import HeatmapService, HeatmapUpdate

log = logging.getLogger(__name__)

_service: HeatmapService | None = None
"""The worker process's own service (None in the coordinator's process)."""


def _start(settings: CoordinatorSettings, log_level: str) -> None:
    global _service
    configure_logging(log_level, settings.log_format)
    _service = HeatmapService(open_store(settings.store), settings)


def _compute(now: float, forecast_again: bool) -> HeatmapUpdate:
    assert _service is not None, "runs in the worker process only"
    if forecast_again:
        _service.invalidate_forecast()
    return _service.compute(now)


class HeatmapWorker:
    """The worker process, started at the first refresh and again after it died."""

    def __init__(self, settings: CoordinatorSettings) -> None:
        self.settings = settings
        self._pool: ProcessPoolExecutor | None = None

    async def compute(self, now: float, *, forecast_again: bool = False) -> HeatmapUpdate:
        """:meth:`HeatmapService.compute` in the worker (``forecast_again``: an event was declared)."""
        if self._pool is None:
            level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
            self._pool = spawn_pool(1, _start, (self.settings, level))
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, _compute, now, forecast_again)
        except BrokenProcessPool:
            # Died, or failed to start: replaced at the next refresh (a new process, a new store connection).
            log.error("the heatmap worker process died; starting another at the next refresh")
            self.close()
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
