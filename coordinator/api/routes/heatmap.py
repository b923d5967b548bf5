"""``/v1/heatmap``: supply, demand, forecast and imbalance per H3 cell, as GeoJSON; imbalance alerts."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from pydantic import BaseModel

from coordinator.api.deps import OperatorKey, ViewerKey
from coordinator.supply.heatmap import HORIZONS_MIN, Layer
from coordinator.supply.heatmap_service import HeatmapService

router = APIRouter(prefix="/v1/heatmap", tags=["supply"])
_json = msgspec.json.Encoder()


class ImbalanceAlertOut(BaseModel):
    cell: str
    kind: str
    ratio: float | None
    since: float


def heatmap_service(request: Request) -> HeatmapService:
    service: HeatmapService | None = request.app.state.heatmaps
    if service is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "this coordinator keeps no heatmap")
    return service


@router.get("", summary="Supply, demand, forecast or imbalance per H3 cell as a GeoJSON FeatureCollection",
            responses={200: {"content": {"application/geo+json": {}}}})
def heatmap(request: Request, _key: ViewerKey,
            res: Annotated[int | None, Query(ge=7, le=9, description="H3 resolution 7, 8 or 9; default "
                                                                     "supply.heatmap_resolution")] = None,
            layer: Annotated[Layer, Query(description="supply (idle vehicles), demand (open + recent orders), "
                                                      "forecast, or imbalance (supply - demand)")] = "imbalance",
            horizon: Annotated[int, Query(description="minutes ahead, for the forecast: 15, 30 or 60")] = 30,
            ) -> Response:
    if horizon not in HORIZONS_MIN:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"horizon: must be 15, 30 or 60, not {horizon}")
    service = heatmap_service(request)
    found = service.heatmap(res if res is not None else service.settings.heatmap_resolution)
    body: dict[str, Any] = found.geojson(layer, horizon)
    return Response(_json.encode(body), media_type="application/geo+json")


@router.post("/refresh", status_code=status.HTTP_200_OK, summary="Recompute the heatmaps now")
async def refresh(request: Request, _key: OperatorKey) -> dict[str, Any]:
    maps = await heatmap_service(request).refresh_async()
    return {"computed_at": next(iter(maps.values())).computed_at, "cells": {str(r): len(m.cells)
                                                                             for r, m in maps.items()}}


@router.get("/alerts", summary="Cells whose supply/demand ratio has stayed out of bounds long enough")
def alerts(request: Request, _key: ViewerKey) -> list[ImbalanceAlertOut]:
    return [ImbalanceAlertOut(cell=a.cell, kind=a.kind, ratio=None if a.ratio == float("inf") else a.ratio,
                              since=a.since) for a in heatmap_service(request).alerts]
