"""The FastAPI application: built from its parts, never at import time."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from coordinator import __version__
from coordinator.api.audit import AuditMiddleware
from coordinator.api.metrics import ApiMetrics, LatencyMiddleware
from coordinator.api.rate_limit import KeyRateLimiter
from coordinator.api.routes import (
    admin,
    alerts,
    commands,
    dispatch,
    events,
    health,
    heatmap,
    metrics,
    models,
    orders,
    reposition,
    stats,
    stream,
    vehicles,
)
from coordinator.auth import KeyCache
from coordinator.command_sender import CommandSender
from coordinator.config import DispatchSettings
from coordinator.dispatch.admission import OrderAdmission
from coordinator.dispatch.dispatcher import Dispatcher
from coordinator.ingest_counters import IngestCounters
from coordinator.model_registry import ModelRegistry
from coordinator.store import FleetStore
from coordinator.supply.heatmap_service import HeatmapService
from coordinator.supply.repositioner import Repositioner

DASHBOARD = Path(__file__).resolve().parent.parent / "dashboard"


def create_app(store: FleetStore, ingest_counters: IngestCounters, *, max_telemetry_page: int = 10_000,
               rate_limit_per_s: float = 50.0, rate_limit_burst: int = 100,
               command_sender: CommandSender | None = None, key_cache_s: float = 5.0,
               dispatch_settings: DispatchSettings | None = None,
               dispatcher: Dispatcher | None = None, heatmaps: HeatmapService | None = None,
               repositioner: Repositioner | None = None, registry: ModelRegistry | None = None) -> FastAPI:
    """The REST API over ``store``. Every route but ``/healthz`` needs an API key, within its rate limit."""
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await store.close_async()

    app = FastAPI(title="FleetEdge coordinator", version=__version__, lifespan=lifespan,
                  description="Live fleet state, telemetry, commands and orders. Authenticate with "
                              "`Authorization: Bearer <key>`.")
    app.state.store = store
    app.state.ingest_counters = ingest_counters
    app.state.command_sender = command_sender
    app.state.dispatcher = dispatcher
    app.state.heatmaps = heatmaps
    app.state.repositioner = repositioner
    app.state.registry = registry
    app.state.order_admission = OrderAdmission(dispatch_settings or DispatchSettings())
    app.state.max_telemetry_page = max_telemetry_page
    app.state.rate_limiter = KeyRateLimiter(rate_limit_per_s, rate_limit_burst)
    app.state.metrics = ApiMetrics(ingest_counters, store, dispatcher)
    app.state.keys = KeyCache(store, ttl_s=key_cache_s)
    app.state.fleet_snapshot = stream.SharedSnapshot()
    app.add_middleware(AuditMiddleware, store=store)
    app.add_middleware(LatencyMiddleware, metrics=app.state.metrics)
    for module in (health, vehicles, commands, orders, dispatch, heatmap, reposition, events, alerts, stats, metrics,
                   models, stream, admin):
        app.include_router(module.router)
    # The dashboard: static files only (it needs a key for every call it makes), all served from here.
    app.mount("/dashboard", StaticFiles(directory=DASHBOARD, html=True), name="dashboard")

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    return app
