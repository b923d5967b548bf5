"""The simulated city's trips and the taxi fleet simulation that bench/reposition.py runs."""

from __future__ import annotations

import random

import numpy as np
import pytest

from coordinator.config import DispatchSettings, SupplySettings
from protocols._geo import great_circle_m
from sim_hw.demand_history import EPOCH, SLOTS_PER_DAY, SLOTS_PER_WEEK, DemandCity
from sim_hw.fleet_sim import FleetSimulation

MONDAY_8AM = EPOCH + 8 * 3600
MONDAY_8PM = EPOCH + 20 * 3600


def nearest_m(point: tuple[float, float], places: list[tuple[float, float]]) -> float:
    return min(great_circle_m(*point, *p) for p in places)


def test_commuters_go_to_work_in_the_morning_and_home_in_the_evening() -> None:
    city = DemandCity(3, commute_share=1.0)
    work = [(p.lat, p.lon) for p in city.work]
    homes = [(p.lat, p.lon) for p in city.morning]
    rng = random.Random(1)
    start = (52.45, 13.30)  # far from the centre, where the workplaces are
    morning = [city.trip_end(MONDAY_8AM, start, rng) for _ in range(400)]
    evening = [city.trip_end(MONDAY_8PM, start, rng) for _ in range(400)]
    # Within three spreads (1 km for a workplace, 0.9 km for a home) of one of them.
    assert np.mean([nearest_m(p, work) < 3000 for p in morning]) > 0.97
    assert np.mean([nearest_m(p, homes) < 2700 for p in evening]) > 0.97
    assert np.mean([nearest_m(p, work) < 1000 for p in evening]) < np.mean([nearest_m(p, work) < 1000
                                                                            for p in morning]) / 2


def test_other_trips_end_one_to_five_km_away_in_any_direction() -> None:
    city = DemandCity(3, commute_share=0.0)
    rng = random.Random(2)
    start = (52.52, 13.405)
    ends = [city.trip_end(MONDAY_8AM, start, rng) for _ in range(500)]
    distances = [great_circle_m(*start, *e) for e in ends]
    assert min(distances) > 999 and max(distances) < 5001
    assert sum(e[0] > start[0] for e in ends) == pytest.approx(250, abs=50)  # north as often as south


def test_where_trips_go_leaves_the_order_history_as_it_was() -> None:
    # The forecasts are trained and measured on the history: the trips' ends must not change it.
    a = DemandCity(5, orders_per_day=20_000, commute_share=0.0).history(SLOTS_PER_DAY)
    b = DemandCity(5, orders_per_day=20_000, commute_share=0.9).history(SLOTS_PER_DAY)
    assert (a == b).all() and a.sum() > 10_000


def morning(vehicles: int, *, perfect_forecast: bool, seed: int = 4) -> dict[str, float]:
    city = DemandCity(seed, orders_per_day=20_000)
    start = SLOTS_PER_WEEK + 24  # a Monday, 06:00

    def forecast(slot: int) -> dict[str, float]:
        expected = city.expected(slot) + city.expected(slot + 1)
        return {c: float(v) for c, v in zip(city.cells, expected, strict=True) if v > 0}

    sim = FleetSimulation(city, vehicles=vehicles, seed=seed, start_slot=start, slots=16,
                          forecast=forecast if perfect_forecast else None,
                          supply=SupplySettings(incentive_budget_per_hour=8.0 * vehicles),
                          dispatch=DispatchSettings(max_pickup_s=600))
    return sim.run().summary()


def test_the_same_seed_gives_the_same_morning() -> None:
    first = morning(150, perfect_forecast=True)
    assert first == morning(150, perfect_forecast=True)
    assert first["orders"] > 1000 and first["offers"] > 0 and first["incentive_spent"] > 0


def test_repositioning_toward_the_demand_serves_more_orders_sooner() -> None:
    without = morning(400, perfect_forecast=False)
    with_moves = morning(400, perfect_forecast=True)
    assert without["offers"] == 0 and with_moves["accepted"] > 0
    assert with_moves["orders"] == without["orders"]  # the same orders
    assert with_moves["served_share"] > without["served_share"] + 0.025
    assert with_moves["mean_pickup_s"] < without["mean_pickup_s"] * 0.95
    assert with_moves["empty_km_share"] > without["empty_km_share"]  # moving costs empty driving
