"""Worker processes that solve regions of a large matching round beside the dispatcher's own thread.

SciPy's assignment solver holds the interpreter's lock for all of its run, so threads cannot share it out:
a round split in regions (:class:`coordinator.dispatch.matcher.Matcher`, ``dispatch.split_above_orders``)
sends all regions but one to these processes and solves the last one itself meanwhile. The processes start
at the first split round (about a second: they import NumPy and SciPy) and again after one died; until
they are ready, rounds solve their regions themselves, so a dead or missing worker costs time, never an
answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from coordinator.child_process import spawn_pool

log = logging.getLogger(__name__)

T = TypeVar("T")


class SolverPool:
    """``processes`` worker processes (0: none; every region is solved by the caller)."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None
        self._ready: list[Future[int]] = []

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T] | None:
        """``fn(*args)`` in a worker process, or None when none is ready to take it (the first call starts
        them, and returns None: a round never waits for a process to start)."""
        if not self.processes:
            return None
        if self._pool is None:
            log.info("starting %d dispatch solver process(es)", self.processes)
            self._pool = spawn_pool(self.processes)
            self._ready = [self._pool.submit(int) for _ in range(self.processes)]
        if not all(f.done() for f in self._ready):
            return None
        try:
            return self._pool.submit(fn, *args)
        except BrokenProcessPool:
            self._broken()
        except RuntimeError:  # closed meanwhile: the coordinator is stopping
            pass
        return None

    def result(self, future: Future[T], fallback: Callable[[], T]) -> T:
        """The future's result; if its process died (or the pool was closed), ``fallback()`` here instead."""
        try:
            return future.result()
        except BrokenProcessPool:
            self._broken()
        except CancelledError:
            pass
        return fallback()

    def warm_up(self) -> None:
        """Start the processes now and wait until they are ready."""
        self.submit(int)
        for future in self._ready:
            self.result(future, int)

    def _broken(self) -> None:
        log.error("a dispatch solver process died; the round solves its regions itself, and new processes "
                  "start at the next split round")
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            self._ready = []
