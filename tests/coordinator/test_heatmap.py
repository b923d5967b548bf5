"""Heatmap figures against hand-counted cells, its GeoJSON, imbalance alerts, and the REST routes."""

from __future__ import annotations

import time

import h3
import msgspec
import pytest
from fastapi.testclient import TestClient

from coordinator.api.app import create_app
from coordinator.auth import Role, create_key
from coordinator.config import CoordinatorSettings, SupplySettings
from coordinator.ingest_counters import IngestCounters
from coordinator.orders import Order, OrderEvent, OrderState, Place, new_order_id
from coordinator.store import FleetPosition, FleetStore, Received
from coordinator.supply.heatmap import Heatmap, ImbalanceWatch, build_heatmap
from coordinator.supply.heatmap_service import HeatmapService
from protocols import TelemetryBatch, TelemetryRecord, VehicleStatus
from sim_hw.city_demand import CITY, offset

NOW = 1_800_000_000.0
A = CITY                          # one res-8 cell...
B = offset(CITY, 3000, 3000)      # ...and another, 4 km away


def vehicle(vid: str, at: tuple[float, float], *, kind: str = "taxi") -> FleetPosition:
    return FleetPosition(vid, kind, at[0], at[1])


def order(oid: str, at: tuple[float, float], state: OrderState, *, created_at: float = NOW - 60,
          vehicle_id: str | None = None) -> Order:
    return Order(order_id=oid, pickup=Place(*at), dropoff=Place(*offset(at, 500, 0)), ready_at=created_at,
                 created_at=created_at, created_by="t", state=state, vehicle_id=vehicle_id,
                 history=(OrderEvent(state=state, at=created_at),))


def figures() -> Heatmap:
    vehicles = [vehicle("t1", A), vehicle("t2", offset(A, 30, 30)), vehicle("busy", A),
                vehicle("boat", A, kind="boat"), vehicle("t3", B)]
    orders = [order("o1", A, OrderState.PENDING), order("o2", B, OrderState.ASSIGNED, vehicle_id="t3"),
              order("o3", A, OrderState.ACCEPTED, vehicle_id="busy"),
              order("o4", B, OrderState.DELIVERED, created_at=NOW - 600),
              order("o5", B, OrderState.DELIVERED, created_at=NOW - 7200)]
    return build_heatmap(resolution=8, now=NOW, vehicles=vehicles, orders=orders, kinds=("taxi", "copter"),
                         recent_s=1800)


def test_cells_count_idle_vehicles_and_open_and_recent_orders() -> None:
    heatmap = figures()
    a, b = h3.latlng_to_cell(*A, 8), h3.latlng_to_cell(*B, 8)
    assert set(heatmap.cells) == {a, b}
    # A: t1 and t2 idle (busy holds o3, a boat is not dispatched); o1 open; o3, on its way, was
    # placed a minute ago: recent demand.
    assert (heatmap.cells[a].supply, heatmap.cells[a].open_orders, heatmap.cells[a].recent_orders) == (2, 1, 1)
    # B: t3 holds o2 (assigned: still open demand), o4 placed 10 min ago, o5 two hours ago.
    assert (heatmap.cells[b].supply, heatmap.cells[b].open_orders, heatmap.cells[b].recent_orders) == (0, 1, 1)
    assert heatmap.cells[a].ratio == 1.0 and heatmap.cells[b].ratio == 0.0


def test_geojson_has_closed_hexagons_in_lon_lat_and_the_layer_value() -> None:
    collection = figures().geojson("imbalance")
    assert collection["type"] == "FeatureCollection" and collection["properties"]["layer"] == "imbalance"
    by_cell = {f["id"]: f for f in collection["features"]}
    a = by_cell[h3.latlng_to_cell(*A, 8)]
    ring = a["geometry"]["coordinates"][0]
    assert a["geometry"]["type"] == "Polygon" and len(ring) == 7 and ring[0] == ring[-1]
    lng, lat = ring[0]
    assert abs(lng - A[1]) < 0.02 and abs(lat - A[0]) < 0.02, "GeoJSON is [longitude, latitude]"
    assert a["properties"]["value"] == 0.0 and a["properties"]["supply"] == 2 and a["properties"]["demand"] == 2
    assert by_cell[h3.latlng_to_cell(*B, 8)]["properties"]["value"] == -2.0
    assert {f["properties"]["value"] for f in figures().geojson("supply")["features"]} == {2.0, 0.0}


def test_coarser_resolutions_add_up_the_finer_cells() -> None:
    vehicles = [vehicle(f"t{i}", offset(A, 150 * i, 0)) for i in range(6)]
    fine = build_heatmap(resolution=9, now=NOW, vehicles=vehicles, orders=[], kinds=("taxi",), recent_s=60)
    coarse = build_heatmap(resolution=7, now=NOW, vehicles=vehicles, orders=[], kinds=("taxi",), recent_s=60)
    assert len(fine.cells) > len(coarse.cells)
    assert sum(c.supply for c in fine.cells.values()) == sum(c.supply for c in coarse.cells.values()) == 6
    for cell in fine.cells:
        assert h3.cell_to_parent(cell, 7) in coarse.cells


def test_an_imbalance_alerts_only_once_it_has_lasted_and_clears_when_it_ends() -> None:
    watch = ImbalanceWatch(SupplySettings(imbalance_alert_after_s=300, imbalance_min_demand=2))
    cell = h3.latlng_to_cell(*B, 8)

    def at(t: float, vehicles: int, orders: int) -> list[str]:
        heatmap = build_heatmap(resolution=8, now=NOW + t, kinds=("taxi",), recent_s=60,
                                vehicles=[vehicle(f"v{i}", B) for i in range(vehicles)],
                                orders=[order(f"o{i}", B, OrderState.PENDING) for i in range(orders)])
        return [f"{a.kind}:{a.cell}" for a in watch.update(heatmap)]

    assert at(0, 0, 4) == []            # a deficit starts
    assert at(200, 1, 4) == []          # still one (ratio 0.25), not yet long enough
    assert at(301, 1, 4) == [f"deficit:{cell}"]
    assert at(400, 4, 4) == []          # balanced again: cleared
    assert at(500, 0, 1) == []          # one order is not a trend
    assert at(600, 20, 2) == []         # a surplus starts
    assert at(901, 20, 2) == [f"surplus:{cell}"]


@pytest.fixture
def fleet_store(store: FleetStore) -> FleetStore:
    now = time.time()
    items = []
    for vid, at in (("taxi-1", A), ("taxi-2", A), ("taxi-3", B)):
        items += [Received(VehicleStatus(vehicle_id=vid, online=True, ts=now, kind="taxi"), now),
                  Received(TelemetryBatch(vehicle_id=vid, records=[TelemetryRecord(
                      seq=1, ts=now, kind="position", data={"lat": at[0], "lon": at[1]})]), now)]
    store.ingest(items)
    store.add_order(order("ord-1", B, OrderState.PENDING, created_at=now))
    return store


def test_heatmap_routes(fleet_store: FleetStore) -> None:
    service = HeatmapService(fleet_store, CoordinatorSettings())
    with TestClient(create_app(fleet_store, IngestCounters(), heatmaps=service)) as c:
        viewer = {"Authorization": f"Bearer {create_key(fleet_store, Role.VIEWER, 'map')}"}
        operator = {"Authorization": f"Bearer {create_key(fleet_store, Role.OPERATOR, 'desk')}"}
        supply = c.get("/v1/heatmap", params={"layer": "supply"}, headers=viewer)
        assert supply.status_code == 200 and supply.headers["content-type"] == "application/geo+json"
        values = {f["id"]: f["properties"]["value"] for f in supply.json()["features"]}
        assert values == {h3.latlng_to_cell(*A, 8): 2.0, h3.latlng_to_cell(*B, 8): 1.0}
        demand = c.get("/v1/heatmap", params={"layer": "demand", "res": 7}, headers=viewer).json()
        assert demand["properties"]["resolution"] == 7
        assert {f["id"]: f["properties"]["value"] for f in demand["features"]}[h3.latlng_to_cell(*B, 7)] == 1.0
        for params in ({"layer": "wind"}, {"res": 6}, {"res": 10}):
            bad = c.get("/v1/heatmap", params=params, headers=viewer)
            assert bad.status_code == 422 and next(iter(params)) in bad.text
        assert c.post("/v1/heatmap/refresh", headers=viewer).status_code == 403
        refreshed = c.post("/v1/heatmap/refresh", headers=operator).json()
        assert refreshed["cells"] == {"7": 2, "8": 2, "9": 2}
        assert c.get("/v1/heatmap/alerts", headers=viewer).json() == []


def test_the_forecast_layer_learns_the_week_and_declared_events(store: FleetStore) -> None:
    now = time.time()
    slot_start = now // 900 * 900
    # The same quarter hour of each of the past four weeks: 6 orders at A.
    for week in range(1, 5):
        for i in range(6):
            at = slot_start - week * 7 * 86400 + 60 * i
            store.add_order(order(new_order_id(at), A, OrderState.DELIVERED, created_at=at))
    service = HeatmapService(store, CoordinatorSettings())
    with TestClient(create_app(store, IngestCounters(), heatmaps=service)) as c:
        viewer = {"Authorization": f"Bearer {create_key(store, Role.VIEWER, 'map')}"}
        operator = {"Authorization": f"Bearer {create_key(store, Role.OPERATOR, 'desk')}"}
        forecast = c.get("/v1/heatmap", params={"layer": "forecast", "horizon": 15, "res": 8}, headers=viewer).json()
        assert forecast["properties"]["horizon_min"] == 15
        values = {f["id"]: f["properties"]["value"] for f in forecast["features"]}
        assert values[h3.latlng_to_cell(*A, 8)] == 6.0

        declared = c.post("/v1/events", json={"name": "cup final", "lat": B[0], "lon": B[1], "start": slot_start,
                                              "end": slot_start + 3600, "extra_orders": 800}, headers=operator)
        assert declared.status_code == 201, declared.text
        assert [e["name"] for e in c.get("/v1/events", headers=viewer).json()] == ["cup final"]
        c.post("/v1/heatmap/refresh", headers=operator)
        hour = c.get("/v1/heatmap", params={"layer": "forecast", "horizon": 60, "res": 8}, headers=viewer).json()
        by_cell = {f["id"]: f["properties"] for f in hour["features"]}
        near_b = by_cell[h3.latlng_to_cell(*B, 8)]
        assert 300 < near_b["value"] <= 800, "most of the event's orders, in its cell"
        assert near_b["forecast"]["15min"] == pytest.approx(near_b["value"] / 4, rel=0.01)
        for bad, words in (({"end": slot_start - 10}, "end"), ({"extra_orders": 0}, "extra_orders"),
                           ({"radius_m": 1}, "radius_m"),
                           ({"lat": 95}, "lat")):
            body = {"name": "x", "lat": B[0], "lon": B[1], "start": slot_start - 100, "end": slot_start + 600,
                    "extra_orders": 10, **bad}
            refused = c.post("/v1/events", json=body, headers=operator)
            assert refused.status_code == 422 and words in refused.text
        assert c.post("/v1/events", json={"name": "x", "lat": 1, "lon": 1, "start": now, "end": now + 60,
                                          "extra_orders": 1}, headers=viewer).status_code == 403


def test_suggestions_move_idle_taxis_toward_the_forecast(store: FleetStore) -> None:
    now = time.time()
    slot_start = now // 900 * 900
    for week in range(1, 5):
        for i in range(6):
            at = slot_start - week * 7 * 86400 + 60 * i
            store.add_order(order(new_order_id(at), A, OrderState.DELIVERED, created_at=at))
    near = offset(A, 1500, 0)
    store.ingest([m for i in range(3) for m in (
        Received(VehicleStatus(vehicle_id=f"taxi-{i}", online=True, ts=now, kind="taxi"), now),
        Received(TelemetryBatch(vehicle_id=f"taxi-{i}", records=[TelemetryRecord(
            seq=1, ts=now, kind="position", data={"lat": near[0], "lon": near[1]})]), now))])
    settings = msgspec.structs.replace(CoordinatorSettings(), supply=SupplySettings(reposition_max_share=1.0))
    service = HeatmapService(store, settings)
    with TestClient(create_app(store, IngestCounters(), heatmaps=service)) as c:
        viewer = {"Authorization": f"Bearer {create_key(store, Role.VIEWER, 'map')}"}
        plan = c.get("/v1/reposition/suggestions", headers=viewer).json()
    assert sorted(m["vehicle_id"] for m in plan["moves"]) == ["taxi-0", "taxi-1", "taxi-2"]
    assert {m["to_cell"] for m in plan["moves"]} == {h3.latlng_to_cell(*A, 8)}
    assert all(m["incentive"] > 0 and 0 < m["travel_s"] < 600 for m in plan["moves"])
    assert plan["deficit"] == {h3.latlng_to_cell(*A, 8): 6.0} and plan["value_s"] > 0


async def test_the_worker_process_computes_what_the_service_would_and_is_replaced_when_it_dies(
        fleet_store: FleetStore) -> None:
    import os
    import signal
    from concurrent.futures.process import BrokenProcessPool

    import psutil

    from coordinator.config import StoreSettings
    from coordinator.embedded_store import EmbeddedStore
    from coordinator.supply.heatmap_worker import HeatmapWorker

    if isinstance(fleet_store, EmbeddedStore):
        where = StoreSettings(path=str(fleet_store.path))
    else:
        where = StoreSettings(redis_url=fleet_store._url)  # type: ignore[attr-defined]
    settings = CoordinatorSettings(store=where)
    worker = HeatmapWorker(settings)

    def figures(maps: dict[int, Heatmap]) -> dict[int, dict[str, tuple[int, int, int]]]:
        return {r: {c: (f.supply, f.open_orders, f.recent_orders) for c, f in m.cells.items()} for r, m in maps.items()}

    try:
        now = time.time()
        there = await worker.compute(now)
        here = HeatmapService(fleet_store, settings).compute(now)
        assert figures(there.maps) == figures(here.maps)
        assert there.maps[8].cells[h3.latlng_to_cell(*A, 8)].supply == 2 and there.maps[8].computed_at == now
        # Its own process: not this one, and gone for good when killed; the next refresh starts another.
        children = [p for p in psutil.Process().children() if "multiprocessing" in " ".join(p.cmdline())
                    and "resource_tracker" not in " ".join(p.cmdline())]
        assert len(children) == 1
        os.kill(children[0].pid, signal.SIGKILL)
        children[0].wait(10)
        with pytest.raises(BrokenProcessPool):
            await worker.compute(now)
        assert figures((await worker.compute(now + 1)).maps) == figures(here.maps)
    finally:
        worker.close()
