"""Vehicle filters: kind, status, radius, H3 cell and rings, pagination, and the errors of each."""

from __future__ import annotations

from collections.abc import Iterator

import h3
import pytest
from fastapi.testclient import TestClient

from coordinator.api.app import create_app
from coordinator.auth import Role, create_key
from coordinator.ingest_counters import IngestCounters
from coordinator.store import FleetStore, Received
from protocols import TelemetryBatch, TelemetryRecord, VehicleStatus, great_circle_m
from sim_hw.geo import offset

CENTRE = (52.52, 13.405)
# id, kind, online, metres north and east of the centre
FLEET = [("copter-1", "copter", True, 300, 0), ("copter-2", "copter", False, 0, 1800),
         ("taxi-1", "taxi", True, -900, -200), ("taxi-2", "taxi", True, 5000, 5000), ("rover-1", "rover", True, 0, 0)]


def place(store: FleetStore, vid: str, seq: int, lat: float, lon: float) -> None:
    store.ingest([Received(TelemetryBatch(vehicle_id=vid, records=[
        TelemetryRecord(seq=seq, ts=1_800_000_000.0 + seq, kind="position", data={"lat": lat, "lon": lon})]), 1.0)])


@pytest.fixture
def client(store: FleetStore) -> Iterator[TestClient]:
    for vid, kind, online, north, east in FLEET:
        place(store, vid, 10, *offset(*CENTRE, north, east))
        store.ingest([Received(VehicleStatus(vehicle_id=vid, online=online, ts=1.0, kind=kind), 1.0)])
    place(store, "rover-1", 5, 10.0, 10.0)  # an older position arriving late moves nothing
    with TestClient(create_app(store, IngestCounters())) as c:
        c.headers["Authorization"] = f"Bearer {create_key(store, Role.VIEWER, 'q')}"
        yield c


def ids(response: object) -> list[str]:
    return [v["vehicle_id"] for v in response.json()["vehicles"]]  # type: ignore[attr-defined]


def test_filters_by_kind_and_status(client: TestClient) -> None:
    assert ids(client.get("/v1/vehicles", params={"kind": "taxi"})) == ["taxi-1", "taxi-2"]
    assert ids(client.get("/v1/vehicles", params={"status": "offline"})) == ["copter-2"]
    assert ids(client.get("/v1/vehicles", params={"kind": "copter", "status": "online"})) == ["copter-1"]


def test_radius_query_is_exact_not_just_a_box(client: TestClient) -> None:
    near = f"{CENTRE[0]},{CENTRE[1]}"
    assert ids(client.get("/v1/vehicles", params={"near": near, "radius_m": 1000})) == ["copter-1", "rover-1",
                                                                                          "taxi-1"]
    # copter-2 is 1.8 km east of the centre
    assert "copter-2" not in ids(client.get("/v1/vehicles", params={"near": near, "radius_m": 1700}))
    assert "copter-2" in ids(client.get("/v1/vehicles", params={"near": near, "radius_m": 1900}))
    rover = client.get("/v1/vehicles/rover-1").json()
    assert great_circle_m(rover["lat"], rover["lon"], *CENTRE) < 1, "the late, older position was ignored"


def test_h3_cell_and_rings(client: TestClient) -> None:
    cell = h3.latlng_to_cell(*CENTRE, 8)
    rover = client.get("/v1/vehicles/rover-1").json()
    assert rover["h3"] == cell
    in_cell = ids(client.get("/v1/vehicles", params={"h3": cell}))
    assert "rover-1" in in_cell and "taxi-2" not in in_cell
    ring = ids(client.get("/v1/vehicles", params={"h3": cell, "k": 3}))
    assert set(in_cell) < set(ring) and "taxi-2" not in ring


def test_pages_follow_the_cursor(client: TestClient) -> None:
    first = client.get("/v1/vehicles", params={"limit": 2}).json()
    assert [v["vehicle_id"] for v in first["vehicles"]] == ["copter-1", "copter-2"] and first["next_cursor"]
    second = client.get("/v1/vehicles", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    third = client.get("/v1/vehicles", params={"limit": 2, "cursor": second["next_cursor"]}).json()
    assert [v["vehicle_id"] for v in second["vehicles"] + third["vehicles"]] == ["rover-1", "taxi-1", "taxi-2"]
    assert third["next_cursor"] is None


@pytest.mark.parametrize(("params", "says"), [
    ({"near": "52.5,13.4"}, "go together"),
    ({"near": "north", "radius_m": 10}, "'lat,lng'"),
    ({"near": "95,13.4", "radius_m": 10}, "out of range"),
    ({"near": "52.5,13.4", "radius_m": 0}, "radius_m"),
    ({"h3": "not-a-cell"}, "not a valid H3 cell"),
    ({"status": "asleep"}, "status"),
    ({"limit": 0}, "limit"),
])
def test_bad_filters_are_422_naming_the_problem(client: TestClient, params: dict[str, object], says: str) -> None:
    response = client.get("/v1/vehicles", params=params)
    assert response.status_code == 422 and says in response.text
