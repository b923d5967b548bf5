"""The ingest runs in a process of its own, supervised by the coordinator.

Decoding and storing 10,000 records a second is CPU work; in the API's process it would hold the GIL
while requests wait. As a separate process it has its own interpreter (and core): REST latency stays flat
under ingest load. It opens the same store (SQLite in WAL mode and Redis both serve several processes)
and publishes its figures through shared memory (:class:`~coordinator.ingest_counters.IngestCounters`).
A crashed ingest process is restarted with backoff; its unacknowledged messages wait in the broker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from multiprocessing.synchronize import Event as ProcessEvent

from coordinator.child_process import SPAWN, ignore_interrupt
from coordinator.config import CoordinatorSettings
from coordinator.ingest import TelemetryIngest
from coordinator.ingest_counters import IngestCounters
from coordinator.log_format import configure_logging
from coordinator.store import open_store

log = logging.getLogger(__name__)

def _ingest_main(settings: CoordinatorSettings, host: str, port: int, counters: IngestCounters,
                 stop: ProcessEvent, log_level: str) -> None:
    # The parent decides when to stop: a terminal's Ctrl-C or the unit's SIGTERM reaches both processes.
    ignore_interrupt()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    configure_logging(log_level, settings.log_format)
    threading.Thread(target=_stop_when_orphaned, args=(os.getppid(), stop), name="parent-watch", daemon=True).start()
    store = open_store(settings.store)
    try:
        TelemetryIngest(settings, store, broker_host=host, broker_port=port, counters=counters).run_blocking(stop)
    finally:
        store.close()


def _stop_when_orphaned(parent: int, stop: ProcessEvent) -> None:
    # A coordinator killed outright cannot stop its ingest; a second ingest under the same client id
    # would fight the next coordinator's for the broker session.
    while not stop.wait(1.0):
        if os.getppid() != parent:
            stop.set()


class IngestProcess:
    """Starts, watches and stops the ingest process; :meth:`run` is the coordinator's ``ingest`` task."""

    def __init__(self, settings: CoordinatorSettings, *, broker_host: str, broker_port: int) -> None:
        self._settings = settings
        self._host = broker_host
        self._port = broker_port
        self.counters = IngestCounters()
        self.restarts = 0

    async def run(self) -> None:
        backoff = 1.0
        while True:
            stop = SPAWN.Event()
            process = SPAWN.Process(target=_ingest_main, name="fleetedge-ingest", daemon=True,
                                     args=(self._settings, self._host, self._port, self.counters, stop,
                                           logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()))
            process.start()
            started = asyncio.get_running_loop().time()
            try:
                while process.is_alive():  # noqa: ASYNC110 - a process offers no awaitable exit
                    await asyncio.sleep(0.5)
            except asyncio.CancelledError:
                stop.set()
                await asyncio.to_thread(process.join, 15)
                if process.is_alive():
                    log.error("the ingest process did not stop within 15 s; killing it")
                    process.kill()
                    await asyncio.to_thread(process.join)
                raise
            self.counters.connected = False
            self.restarts += 1
            if asyncio.get_running_loop().time() - started > 60:
                backoff = 1.0  # it had been healthy: this is a new failure, not the same one again
            log.error("the ingest process exited with code %s; restarting in %.0f s (unacknowledged messages wait "
                      "in the broker)", process.exitcode, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
