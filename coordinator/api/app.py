"""The FastAPI application: built from its parts, never at import time."""

from __future__ import annotations

from fastapi import FastAPI

from coordinator import __version__
from coordinator.api.audit import audit_middleware
from coordinator.api.metrics import ApiMetrics
from coordinator.api.rate_limit import KeyRateLimiter
from coordinator.api.routes import admin, alerts, commands, health, metrics, stats, vehicles
from coordinator.command_sender import CommandSender
from coordinator.ingest import IngestCounters
from coordinator.store import FleetStore


def create_app(store: FleetStore, ingest_counters: IngestCounters, *, max_telemetry_page: int = 10_000,
               rate_limit_per_s: float = 50.0, rate_limit_burst: int = 100,
               command_sender: CommandSender | None = None) -> FastAPI:
    """The REST API over ``store``. Every route but ``/healthz`` needs an API key, within its rate limit."""
    app = FastAPI(title="FleetEdge coordinator", version=__version__,
                  description="Live fleet state and telemetry. Authenticate with `Authorization: Bearer <key>`.")
    app.state.store = store
    app.state.ingest_counters = ingest_counters
    app.state.command_sender = command_sender
    app.state.max_telemetry_page = max_telemetry_page
    app.state.rate_limiter = KeyRateLimiter(rate_limit_per_s, rate_limit_burst)
    app.state.metrics = ApiMetrics(ingest_counters, store)
    app.middleware("http")(audit_middleware(store))
    app.middleware("http")(app.state.metrics.middleware)
    for module in (health, vehicles, commands, alerts, stats, metrics, admin):
        app.include_router(module.router)
    return app
