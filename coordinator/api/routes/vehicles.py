"""``/v1/vehicles``: the fleet's vehicles, their latest state and telemetry history."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status

from coordinator.api.deps import StoreDep, ViewerKey
from coordinator.api.models import TelemetryPage, TelemetryRecordOut, Vehicle, VehicleList

router = APIRouter(prefix="/v1/vehicles", tags=["vehicles"])


def _unknown(vehicle_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND,
                         f"no vehicle {vehicle_id!r} has reported; GET /v1/vehicles lists the known ones")


def _unix(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


@router.get("", summary="List vehicles")
def list_vehicles(store: StoreDep, _key: ViewerKey) -> VehicleList:
    vehicles = [Vehicle(**v) for v in store.vehicles()]
    return VehicleList(count=len(vehicles), vehicles=vehicles)


@router.get("/{vehicle_id}", summary="One vehicle's latest state", responses={404: {"description": "Unknown vehicle"}})
def get_vehicle(vehicle_id: str, store: StoreDep, _key: ViewerKey) -> Vehicle:
    found = store.vehicle(vehicle_id)
    if found is None:
        raise _unknown(vehicle_id)
    return Vehicle(**found)


@router.get("/{vehicle_id}/telemetry", summary="A vehicle's telemetry history, oldest first",
            responses={404: {"description": "Unknown vehicle"}})
def get_telemetry(
    vehicle_id: str,
    request: Request,
    store: StoreDep,
    _key: ViewerKey,
    since: Annotated[datetime | None, Query(description="Inclusive start: Unix seconds or ISO 8601 (UTC if no zone)")] = None,
    until: Annotated[datetime | None, Query(description="Exclusive end: Unix seconds or ISO 8601")] = None,
    limit: Annotated[int | None, Query(ge=1, description="Most records to return; default 1000, at most "
                                                          "api.max_telemetry_page")] = None,
    kind: Annotated[str | None, Query(max_length=64, description="Only records of this kind")] = None,
) -> TelemetryPage:
    start, end = _unix(since), _unix(until)
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
