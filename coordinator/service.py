"""The coordinator process: embedded broker (unless an external one is set), ingest, dispatch, heatmaps,
repositioning and REST API, as named tasks of one task group."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import AsyncIterator, Iterator

import uvicorn

from coordinator import __version__
from coordinator.api.app import create_app
from coordinator.broker import embedded_broker
from coordinator.command_sender import CommandSender
from coordinator.config import CoordinatorSettings
from coordinator.dispatch.dispatcher import Dispatcher
from coordinator.ingest_process import IngestProcess
from coordinator.model_registry import ModelRegistry
from coordinator.model_rollout import ModelRollout
from coordinator.retention import prune_forever
from coordinator.store import open_store
from coordinator.supply.heatmap_service import HeatmapService
from coordinator.supply.heatmap_worker import HeatmapWorker
from coordinator.supply.repositioner import Repositioner

log = logging.getLogger(__name__)


class _StopRequested(Exception):
    pass


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: SIGINT/SIGTERM belong to whoever runs the coordinator (its own
    handlers, or the demo's, which must stop the simulated fleet first and the coordinator after)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def _broker_address(settings: CoordinatorSettings) -> AsyncIterator[tuple[str, int]]:
    b = settings.broker
    if b.url:
        yield b.address.host, b.address.port
        return
    async with embedded_broker(b.embedded_host, b.embedded_port) as port:
        yield b.embedded_host, port


async def run_coordinator(settings: CoordinatorSettings, stop: asyncio.Event | None = None,
                          started: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set, or SIGINT/SIGTERM when ``stop`` is None."""
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
    # The event loop hands work to worker threads (sync routes, the command sender's MQTT thread) and back;
    # a shorter GIL switch interval bounds how long a ready thread waits behind a busy one (tail latency).
    sys.setswitchinterval(0.0005)
    store = open_store(settings.store)
    try:
        async with _broker_address(settings) as (host, port):
            ingest = IngestProcess(settings, broker_host=host, broker_port=port)
            sender = CommandSender(settings.broker, broker_host=host, broker_port=port)
            dispatcher = Dispatcher(store, settings.dispatch, sender)
            heatmaps = HeatmapService(store, settings, worker=HeatmapWorker(settings))
            repositioner = Repositioner(store, settings, sender, heatmaps)
            registry = ModelRegistry(store, settings)
            rollout = ModelRollout(store, registry, settings.models, sender)
            app = create_app(store, ingest.counters, max_telemetry_page=settings.api.max_telemetry_page,
                             rate_limit_per_s=settings.api.rate_limit_per_s,
                             rate_limit_burst=settings.api.rate_limit_burst, command_sender=sender,
                             key_cache_s=settings.api.key_cache_s, dispatch_settings=settings.dispatch,
                             dispatcher=dispatcher, heatmaps=heatmaps, repositioner=repositioner,
                             registry=registry)
            # Everything built so far lives as long as the process: keep it out of the collector's scans,
            # whose full passes over it were the REST API's worst pauses.
            gc.collect()
            gc.freeze()
            server = _Server(uvicorn.Config(app, host=settings.api.host, port=settings.api.port,
                                                   log_level="warning", access_log=False, lifespan="off",
                                                   # The C parser, never h11's pure Python by accident.
                                                   http="httptools",
                                                   # A live stream (the dashboard) never holds a stop up.
                                                   timeout_graceful_shutdown=5))

            async def stop_when_asked() -> None:
                await stop.wait()
                raise _StopRequested

            async def serve() -> None:
                await server.serve()
                raise _StopRequested  # the REST API ended: the coordinator goes with it

            async def announce() -> None:
                while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for this
                    await asyncio.sleep(0.05)
                log.info("coordinator %s: REST API on http://%s:%d, broker %s:%d, store %s (event loop: %s)",
                         __version__, settings.api.host, settings.api.port, host, port,
                         "Redis" if settings.store.redis_url else settings.store.path,  # its URL may hold a password
                         type(asyncio.get_running_loop()).__module__.split(".")[0])
                # Ready means subscribed too: a broker keeps nothing for a session that does not exist yet.
                while not ingest.counters.connected:  # noqa: ASYNC110 - shared memory offers no event
                    await asyncio.sleep(0.05)
                if started is not None:
                    started.set()

            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(ingest.run(), name="ingest")
                    tg.create_task(sender.run(), name="command-sender")
                    tg.create_task(serve(), name="rest-api")
                    tg.create_task(dispatcher.run(), name="dispatch")
                    tg.create_task(heatmaps.run(), name="heatmap")
                    tg.create_task(repositioner.run(), name="reposition")
                    tg.create_task(rollout.run(), name="model-rollout")
                    tg.create_task(announce(), name="announce")
                    tg.create_task(prune_forever(store, settings.store.telemetry_retention_days,
                                                 settings.store.idempotency_key_hours),
                                   name="telemetry-retention")
                    tg.create_task(stop_when_asked(), name="stop-watch")
            except* _StopRequested:
                log.info("coordinator stopping")
    finally:
        await store.close_async()
        store.close()
