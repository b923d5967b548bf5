"""``/v1/vehicles``: the fleet's vehicles, their latest state and telemetry history."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Literal

import h3
from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from coordinator.api.deps import StoreDep, ViewerKey, json_response, query_of, query_openapi, unix_seconds
from coordinator.api.models import TelemetryPage, TelemetryRecordOut, Vehicle, VehicleList

router = APIRouter(prefix="/v1/vehicles", tags=["vehicles"])


def _unknown(vehicle_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND,
                         f"no vehicle {vehicle_id!r} has reported; GET /v1/vehicles lists the known ones")


def _near(near: str | None, radius_m: float | None) -> tuple[float, float, float] | None:
    if near is None and radius_m is None:
        return None
    if near is None or radius_m is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "`near` and `radius_m` go together")
    try:
        lat_text, lng_text = near.split(",")
        lat, lng = float(lat_text), float(lng_text)
    except ValueError:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"`near` must be 'lat,lng' in degrees, got {near!r}") from None
    if not (-90 <= lat <= 90 and -180 <= lng <= 180) or not (math.isfinite(lat) and math.isfinite(lng)):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"`near` {near!r} is out of range: latitude -90..90, longitude -180..180")
    return lat, lng, radius_m


def _cells(cell: str | None, k: int) -> set[str] | None:
    if cell is None:
        return None
    if not h3.is_valid_cell(cell):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"`h3` {cell!r} is not a valid H3 cell index")
    return set(h3.grid_disk(cell, k))


class VehicleFilters(BaseModel):
    """Query parameters of the vehicle list; every filter given must hold."""

    model_config = ConfigDict(extra="forbid")
    kind: str | None = Field(None, max_length=16, description="copter, rover, taxi...")
    status: Literal["online", "offline"] | None = None
    near: str | None = Field(None, description="'lat,lng': with radius_m, vehicles within that distance")
    radius_m: float | None = Field(None, gt=0, le=100_000)
    h3: str | None = Field(None, max_length=20, description="vehicles in this H3 cell...")
    k: int = Field(0, ge=0, le=10, description="...or within k rings of it")
    limit: int = Field(100, ge=1, le=1000)
    cursor: str | None = Field(None, max_length=64, description="next_cursor of the previous page")


@router.get("", summary="List vehicles, filtered and paged by id", response_model=VehicleList,
            openapi_extra=query_openapi(VehicleFilters))
async def list_vehicles(request: Request, store: StoreDep, _key: ViewerKey) -> Response:
    q = query_of(VehicleFilters, request)
    online = None if q.status is None else q.status == "online"
    found = await store.find_vehicles_async(kind=q.kind, online=online, near=_near(q.near, q.radius_m),
                                            cells=_cells(q.h3, q.k), after=q.cursor, limit=q.limit + 1)
    more = len(found) > q.limit
    vehicles = found[:q.limit]
    return json_response({"count": len(vehicles), "vehicles": vehicles,
                          "next_cursor": vehicles[-1]["vehicle_id"] if more else None})


@router.get("/{vehicle_id}", summary="One vehicle's latest state", response_model=Vehicle,
            responses={404: {"description": "Unknown vehicle"}})
async def get_vehicle(vehicle_id: str, store: StoreDep, _key: ViewerKey) -> Response:
    found = await store.vehicle_async(vehicle_id)
    if found is None:
        raise _unknown(vehicle_id)
    return json_response(found)


@router.get("/{vehicle_id}/telemetry", summary="A vehicle's telemetry history, oldest first",
            responses={404: {"description": "Unknown vehicle"}})
def get_telemetry(
    vehicle_id: str,
    request: Request,
    store: StoreDep,
    _key: ViewerKey,
    since: Annotated[datetime | None,
                     Query(description="Inclusive start: Unix seconds or ISO 8601 (UTC if no zone)")] = None,
    until: Annotated[datetime | None, Query(description="Exclusive end: Unix seconds or ISO 8601")] = None,
    limit: Annotated[int | None, Query(ge=1, description="Most records to return; default 1000, at most "
                                                          "api.max_telemetry_page")] = None,
    kind: Annotated[str | None, Query(max_length=64, description="Only records of this kind")] = None,
) -> TelemetryPage:
    start, end = unix_seconds(since), unix_seconds(until)
    if start is not None and end is not None and end <= start:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "`until` must be later than `since`")
    cap: int = request.app.state.max_telemetry_page
    if limit is None:
        limit = min(1000, cap)
    elif limit > cap:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"`limit` must be at most {cap}; page with `since`")
    if store.vehicle(vehicle_id) is None:
        raise _unknown(vehicle_id)
    rows = store.telemetry(vehicle_id, since=start, until=end, limit=limit + 1, kind=kind)
    more = len(rows) > limit
    rows = rows[:limit]
    # Records sharing the boundary timestamp would repeat on the next page; the client drops by seq.
    return TelemetryPage(vehicle_id=vehicle_id, count=len(rows), records=[TelemetryRecordOut(**r) for r in rows],
                         next_since=rows[-1]["ts"] if more else None)
