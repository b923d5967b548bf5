"""``GET /v1/alerts``: only alert-class records, filtered, newest first."""

from __future__ import annotations

from fastapi.testclient import TestClient

from coordinator.api.app import create_app
from coordinator.auth import Role, create_key
from coordinator.ingest_counters import IngestCounters
from coordinator.store import FleetStore, Received
from protocols import RecordClass, TelemetryBatch, TelemetryRecord


def test_alerts_are_listed_newest_first_and_filtered(store: FleetStore) -> None:
    records = {
        "drone-1": [("position", RecordClass.TELEMETRY), ("battery.low", RecordClass.ALERT),
                    ("mode.changed", RecordClass.EVENT), ("failsafe", RecordClass.ALERT)],
        "drone-2": [("gps.fix_lost", RecordClass.ALERT), ("position", RecordClass.TELEMETRY)],
    }
    t = 1_800_000_000.0
    for vid, kinds in records.items():
        batch = []
        for seq, (kind, cls) in enumerate(kinds, start=1):
            t += 1
            batch.append(TelemetryRecord(seq=seq, ts=t, kind=kind, cls=cls, data={"n": seq}))
        store.ingest([Received(TelemetryBatch(vehicle_id=vid, records=batch), 1.0)])
    with TestClient(create_app(store, IngestCounters())) as client:
        assert client.get("/v1/alerts").status_code == 401
        client.headers["Authorization"] = f"Bearer {create_key(store, Role.VIEWER, 'ops')}"
        every = client.get("/v1/alerts").json()
        assert [(a["vehicle_id"], a["kind"]) for a in every] == [
            ("drone-2", "gps.fix_lost"), ("drone-1", "failsafe"), ("drone-1", "battery.low")]
        mine = client.get("/v1/alerts", params={"vehicle_id": "drone-1", "kind": "battery.low"}).json()
        assert len(mine) == 1 and mine[0]["data"] == {"n": 2}
        recent = client.get("/v1/alerts", params={"since": every[1]["ts"]}).json()
        assert [a["kind"] for a in recent] == ["gps.fix_lost", "failsafe"]
        assert client.get("/v1/alerts", params={"limit": 0}).status_code == 422
