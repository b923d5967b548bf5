"""The live stream the dashboard reads: snapshots of the fleet and the alerts, one fleet read shared by every
stream open at the time."""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from coordinator.api.app import create_app
from coordinator.auth import Role, create_key
from coordinator.ingest_counters import IngestCounters
from coordinator.store import FleetStore, Received
from protocols import RecordClass, TelemetryBatch, TelemetryRecord, VehicleStatus


def events(body: str) -> list[tuple[str, dict[str, object]]]:
    out = []
    for block in body.strip().split("\n\n"):
        kind, data = block.split("\n", 1)
        out.append((kind.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def test_streams_open_together_share_one_fleet_read_and_see_the_alerts(store: FleetStore) -> None:
    now = time.time()
    for n in range(3):
        vid = f"drone-{n}"
        store.ingest([Received(VehicleStatus(vehicle_id=vid, online=True, ts=now, kind="copter"), now),
                      Received(TelemetryBatch(vehicle_id=vid, records=[
                          TelemetryRecord(seq=1, ts=now, kind="position", data={"lat": 52.5 + n / 100, "lon": 13.4}),
                          TelemetryRecord(seq=2, ts=now, kind="battery", data={"remaining_pct": 80.0 - n})]), now)])
    store.ingest([Received(TelemetryBatch(vehicle_id="drone-1", records=[TelemetryRecord(
        seq=3, ts=now, kind="battery.low", cls=RecordClass.ALERT, data={"remaining_pct": 9.0})]), now)])
    app = create_app(store, IngestCounters(), rate_limit_per_s=0)
    key = create_key(store, Role.VIEWER, "wall")

    async def watch() -> list[tuple[str, dict[str, object]]]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://coordinator",
                                     headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            response = await client.get("/v1/stream", params={"interval_s": 1.0, "snapshots": 3})
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            return events(response.text)

    async def dashboards() -> list[list[tuple[str, dict[str, object]]]]:
        return list(await asyncio.gather(*(watch() for _ in range(4))))

    seen = asyncio.run(dashboards())
    for stream in seen:
        snapshots = [data for kind, data in stream if kind == "snapshot"]
        alerts = [data for kind, data in stream if kind == "alert"]
        assert len(snapshots) == 3 and [a["kind"] for a in alerts] == ["battery.low"]  # each alert once
        vehicles = {v["id"]: v for v in snapshots[-1]["vehicles"]}  # type: ignore[attr-defined]
        assert set(vehicles) == {"drone-0", "drone-1", "drone-2"} and vehicles["drone-2"]["battery"] == 78.0
    # Four dashboards, three snapshots each, taken together: the fleet was read about three times, not twelve.
    reads = app.state.fleet_snapshot.reads
    assert 3 <= reads <= 6, reads
    assert {s["ts"] for s in (d for kind, d in seen[0] if kind == "snapshot")} & \
        {s["ts"] for s in (d for kind, d in seen[1] if kind == "snapshot")}
