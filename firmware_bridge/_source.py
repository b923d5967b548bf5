"""What every telemetry device looks like to the agent."""

from __future__ import annotations

import abc
from typing import Any, Protocol

from protocols import RecordClass


class RecordSink(Protocol):
    """Where a source puts its records: the agent's outbox."""

    def append(self, kind: str, data: dict[str, Any], *, cls: RecordClass = ..., ts: float | None = ...) -> None: ...


class TelemetrySource(abc.ABC):
    """A device that produces telemetry records and events for one vehicle.

    Real drivers live in ``firmware_bridge``; simulated ones in ``sim_hw`` implement the same class.
    """

    @abc.abstractmethod
    async def run(self, sink: RecordSink) -> None:
        """Produce records into ``sink`` until cancelled. Link trouble is retried inside, never raised."""
