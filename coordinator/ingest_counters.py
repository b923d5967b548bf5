"""Ingest figures in shared memory: the ingest process writes them, the API process reads them.

One writer; each figure is one aligned 8-byte double, so a reader never sees a torn value.
"""

from __future__ import annotations

import ctypes
from multiprocessing.sharedctypes import RawArray
from typing import Any

_FIELDS = ("messages", "records_accepted", "records_duplicate", "rejected", "commits", "connected", "last_lag_s")


class _Figure:
    def __init__(self, kind: type) -> None:
        self._kind = kind
        self._index = -1

    def __set_name__(self, owner: type, name: str) -> None:
        self._index = _FIELDS.index(name)

    def __get__(self, counters: Any, owner: Any = None) -> Any:
        return self._kind(counters._values[self._index])

    def __set__(self, counters: Any, value: float) -> None:
        counters._values[self._index] = float(value)


class IngestCounters:
    """Messages, records accepted and duplicate, rejects, commits, broker connection, lag of the last commit."""

    messages: int = _Figure(int)  # type: ignore[assignment]
    records_accepted: int = _Figure(int)  # type: ignore[assignment]
    records_duplicate: int = _Figure(int)  # type: ignore[assignment]
    rejected: int = _Figure(int)  # type: ignore[assignment]
    commits: int = _Figure(int)  # type: ignore[assignment]
    connected: bool = _Figure(bool)  # type: ignore[assignment]
    last_lag_s: float = _Figure(float)  # type: ignore[assignment]

    def __init__(self, **initial: float) -> None:
        unknown = set(initial) - set(_FIELDS)
        if unknown:
            raise TypeError(f"unknown ingest figures {sorted(unknown)}")
        # Created before the ingest process starts, which inherits it.
        self._values = RawArray(ctypes.c_double, len(_FIELDS))
        for name, value in initial.items():
            setattr(self, name, value)
