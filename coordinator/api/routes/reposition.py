"""``/v1/reposition``: where idle vehicles should wait (the plan), the moves sent and what they achieved."""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel

from coordinator.api.deps import OperatorKey, StoreDep, ViewerKey
from coordinator.api.routes.heatmap import heatmap_service
from coordinator.supply.move_stats import move_stats
from coordinator.supply.moves import MoveState
from coordinator.supply.repositioner import Repositioner

router = APIRouter(prefix="/v1/reposition", tags=["supply"])


class MoveOut(BaseModel):
    vehicle_id: str
    kind: str
    from_cell: str
    to_cell: str
    lat: float
    lon: float
    travel_s: float
    incentive: float


class SuggestionsOut(BaseModel):
    moves: list[MoveOut]
    surplus: dict[str, float]
    deficit: dict[str, float]
    value_s: float


def _repositioner(request: Request) -> Repositioner:
    found: Repositioner | None = request.app.state.repositioner
    if found is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "this coordinator sends no reposition moves")
    return found


@router.get("/suggestions", summary="Where idle vehicles should wait: moves from surplus to deficit cells toward "
                                    "the next 30 minutes' forecast (not sent)")
def suggestions(request: Request, _key: ViewerKey) -> SuggestionsOut:
    plan = heatmap_service(request).suggestions()
    return SuggestionsOut(moves=[MoveOut(vehicle_id=m.vehicle_id, kind=m.kind, from_cell=m.from_cell,
                                         to_cell=m.to_cell, lat=m.lat, lon=m.lon, travel_s=round(m.travel_s, 1),
                                         incentive=m.incentive) for m in plan.moves],
                          surplus=plan.surplus, deficit=plan.deficit, value_s=round(plan.value_s, 1))


@router.post("/run", summary="Plan and send moves now (besides the schedule); returns the moves sent",
             responses={409: {"description": "Another coordinator sharing the store runs repositioning"}})
def run(request: Request, _key: OperatorKey) -> list[dict[str, Any]]:
    repositioner = _repositioner(request)
    # Only the lease holder plans: a second planner would offer the same idle vehicles other moves.
    repositioner.counters.leader = repositioner.lease.hold()
    if not repositioner.counters.leader:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            "another coordinator sharing this store runs repositioning now (it holds the "
                            f"'{repositioner.lease.name}' lease): send this to that one, or wait for its next "
                            "scheduled plan")
    created = repositioner.round(plan=True)
    return [msgspec.to_builtins(m) for m in created]


@router.get("/moves", summary="Reposition moves, newest first, with every offer and its answer")
def moves(store: StoreDep, _key: ViewerKey,
          state: Annotated[MoveState | None, Query(description="only moves in this state")] = None,
          since: Annotated[float | None, Query(ge=0, description="created at or after (Unix time)")] = None,
          limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
    if state is not None and not state.final:
        found = store.moves(open_only=True, since=since, limit=1 << 30)
    else:
        found = store.moves(since=since, limit=1 << 30 if state is not None else limit)
    return [msgspec.to_builtins(m) for m in found if state is None or m.state is state][:limit]


@router.get("/stats", summary="Offers, acceptance, arrival within the SLA, incentive spent and empty km of the "
                              "moves created in a window")
def stats(request: Request, store: StoreDep, _key: ViewerKey,
          hours: Annotated[float, Query(gt=0, le=24 * 31, description="window ending now")] = 24.0,
          ) -> dict[str, Any]:
    now = time.time()
    found = store.moves(since=now - hours * 3600, limit=1 << 30)
    repositioner: Repositioner | None = request.app.state.repositioner
    currency = repositioner.supply.currency if repositioner is not None else "EUR"
    out = {"window_hours": hours, **move_stats(found, currency=currency)}
    if repositioner is not None:
        out["budget_per_hour"] = repositioner.supply.incentive_budget_per_hour
        out["committed_last_hour"] = round(repositioner.committed(now), 2)
    return out
