"""``/v1/stats``: ingest counters per vehicle and overall."""

from __future__ import annotations

from fastapi import APIRouter

from coordinator.api.deps import IngestCountersDep, StoreDep, ViewerKey
from coordinator.api.models import IngestStats, Stats, VehicleStats

router = APIRouter(prefix="/v1", tags=["stats"])


@router.get("/stats", summary="Ingest counters: accepted, duplicates, rejected, gaps, evicted at the edge")
def get_stats(store: StoreDep, counters: IngestCountersDep, _key: ViewerKey) -> Stats:
    per_vehicle = {vid: VehicleStats(**s) for vid, s in store.stats().items()}
    totals = VehicleStats(**{f: sum(getattr(s, f) for s in per_vehicle.values()) for f in VehicleStats.model_fields})
    ingest = IngestStats(connected=counters.connected, messages=counters.messages,
                         records_accepted=counters.records_accepted, records_duplicate=counters.records_duplicate,
                         rejected=counters.rejected, lag_s=counters.last_lag_s)
    return Stats(vehicles=per_vehicle, totals=totals, ingest=ingest)
