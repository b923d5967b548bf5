"""``/healthz``: liveness for load balancers and orchestrators; needs no key and reveals nothing."""

from __future__ import annotations

from fastapi import APIRouter

from coordinator.api.deps import IngestCountersDep
from coordinator.api.models import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness and broker connection")
async def healthz(counters: IngestCountersDep) -> Health:
    return Health(status="ok", broker_connected=counters.connected)
