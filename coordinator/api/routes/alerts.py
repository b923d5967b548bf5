"""``/v1/alerts``: what the vehicles flagged as alerts (low battery, link lost, failsafe, GPS fix lost...)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from coordinator.api.deps import StoreDep, ViewerKey, unix_seconds

router = APIRouter(prefix="/v1", tags=["alerts"])


class Alert(BaseModel):
    vehicle_id: str
    seq: int
    ts: float
    kind: str
    data: dict[str, Any]


@router.get("/alerts", summary="Alerts raised by vehicles, newest first")
def get_alerts(
    store: StoreDep,
    _key: ViewerKey,
    vehicle_id: Annotated[str | None, Query(max_length=64)] = None,
    kind: Annotated[str | None, Query(max_length=64, description="battery.low, link.lost, failsafe, gps.fix_lost...")]
    = None,
    since: Annotated[datetime | None, Query(description="Unix seconds or ISO 8601")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[Alert]:
    return [Alert(**a) for a in store.alerts(vehicle_id=vehicle_id, kind=kind, since=unix_seconds(since), limit=limit)]
