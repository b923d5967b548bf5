"""How the coordinator starts its helper processes: the ingest, the heatmap worker, the dispatch solvers.

Always by spawning a fresh interpreter, never by forking one that already runs threads and holds sockets;
and a child leaves Ctrl-C to the coordinator, which stops its children itself (a terminal's interrupt
reaches the whole process group).
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

SPAWN = multiprocessing.get_context("spawn")


def ignore_interrupt() -> None:
    """In a child: SIGINT is the coordinator's to act on."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start(initializer: Callable[..., None] | None, initargs: tuple[Any, ...]) -> None:
    ignore_interrupt()
    if initializer is not None:
        initializer(*initargs)


def spawn_pool(workers: int, initializer: Callable[..., None] | None = None,
               initargs: tuple[Any, ...] = ()) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes, each running ``initializer(*initargs)`` first."""
    return ProcessPoolExecutor(workers, mp_context=SPAWN, initializer=_start, initargs=(initializer, initargs))
