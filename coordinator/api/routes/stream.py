"""``/v1/stream``: the fleet live, as server-sent events, for the dashboard (and anything that reads SSE).

Every ``interval_s`` a ``snapshot`` event: every vehicle (position, kind, online, battery, mode), the open
orders with their places, and the KPIs; between snapshots an ``alert`` event for each alert the vehicles
raised since the stream began. Browsers read it with ``fetch`` (an ``EventSource`` cannot send the API key).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from coordinator.api.deps import ViewerKey
from coordinator.store import FleetStore

router = APIRouter(tags=["dashboard"])
MAX_VEHICLES = 5000


def _battery(latest: dict[str, Any]) -> float | None:
    for kind in ("battery", "sys_status"):
        pct = latest.get(kind, {}).get("remaining_pct")
        if isinstance(pct, int | float):
            return float(pct)
    return None


SHOWN_KINDS = ("battery", "sys_status", "status")
"""The newest records a snapshot reads of each vehicle: its battery and its mode."""


def snapshot(store: FleetStore, request: Request) -> dict[str, Any]:
    vehicles = store.summaries(SHOWN_KINDS)
    shown = [{"id": v.vehicle_id, "kind": v.kind, "lat": v.lat, "lon": v.lon, "online": v.online,
              "battery": _battery(v.latest), "mode": v.latest.get("status", {}).get("mode"),
              "last_seen": v.last_seen} for v in vehicles[:MAX_VEHICLES]]
    orders = store.open_orders()
    by_state: dict[str, int] = {}
    for o in orders:
        by_state[o.state.value] = by_state.get(o.state.value, 0) + 1
    kpis: dict[str, Any] = {
        "vehicles": len(vehicles), "online": sum(1 for v in vehicles if v.online),
        "orders_open": len(orders), "orders_by_state": by_state}
    dispatcher = request.app.state.dispatcher
    if dispatcher is not None:
        c = dispatcher.counters
        kpis["dispatch"] = {"assigned": c.assigned, "delivered": c.delivered, "failed": c.failed,
                            "expired": c.expired, "returned_to_pool": c.returned_to_pool}
    return {"ts": time.time(), "vehicles": shown, "shown": len(shown), "kpis": kpis,
            "orders": [{"id": o.order_id, "state": o.state.value, "vehicle_id": o.vehicle_id,
                        "pickup": [o.pickup.lat, o.pickup.lon], "dropoff": [o.dropoff.lat, o.dropoff.lon]}
                       for o in orders][:MAX_VEHICLES]}


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class SharedSnapshot:
    """The latest snapshot event, read and encoded once for every stream that asks within its age limit: with
    ten dashboards open the fleet is still read about once a second (a read of 10,000 vehicles is a few
    hundred milliseconds of work in the process that serves the REST API)."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._event = b""
        self._at = -float("inf")
        self.reads = 0

    async def get(self, store: FleetStore, request: Request, max_age_s: float) -> bytes:
        async with self._lock:  # one read at a time: the others wait for it rather than read again
            if time.monotonic() - self._at > max_age_s:
                data = await asyncio.to_thread(snapshot, store, request)
                self._event = await asyncio.to_thread(_event, "snapshot", data)
                self._at = time.monotonic()
                self.reads += 1
            return self._event


@router.get("/v1/stream", summary="The fleet live as server-sent events: snapshots and alerts",
            responses={200: {"content": {"text/event-stream": {}}}})
async def stream(request: Request, _key: ViewerKey,
                 interval_s: Annotated[float, Query(ge=0.2, le=60)] = 1.0,
                 snapshots: Annotated[int | None, Query(ge=1, description="end after this many snapshots "
                                                                          "(default: until the client leaves)")] = None,
                 ) -> StreamingResponse:
    store: FleetStore = request.app.state.store
    shared: SharedSnapshot = request.app.state.fleet_snapshot

    async def events() -> AsyncIterator[bytes]:
        alerts_since = time.time() - 3600
        seen: set[tuple[str, int]] = set()
        sent = 0
        while not await request.is_disconnected() and (snapshots is None or sent < snapshots):
            found = await asyncio.to_thread(store.alerts, vehicle_id=None, kind=None, since=alerts_since, limit=50)
            for alert in reversed(found):
                key = (alert["vehicle_id"], alert["seq"])
                if key not in seen:
                    seen.add(key)
                    yield _event("alert", alert)
            if found:
                alerts_since = max(a["ts"] for a in found) - 5.0
            # At most half an interval old: each client still sees the fleet move at its own pace.
            yield await shared.get(store, request, interval_s / 2)
            sent += 1
            if snapshots is None or sent < snapshots:
                await asyncio.sleep(interval_s)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
