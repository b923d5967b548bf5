"""The repositioning plan against brute force on small instances, and each of its limits."""

from __future__ import annotations

import itertools
import math

import h3
import pytest

from coordinator.config import DispatchSettings, SupplySettings
from coordinator.supply.reposition import IdleVehicle, incentive, plan_moves
from protocols._geo import great_circle_m
from sim_hw.city_demand import CITY, offset

RES = 8
DISPATCH = DispatchSettings()


def cell_at(north: float, east: float) -> str:
    return str(h3.latlng_to_cell(*offset(CITY, north, east), RES))


def vehicles_at(cell: str, n: int, kind: str = "rover", prefix: str = "v") -> list[IdleVehicle]:
    lat, lon = h3.cell_to_latlng(cell)
    return [IdleVehicle(f"{prefix}-{cell[-6:]}-{i}", kind, lat, lon) for i in range(n)]


def brute_force(sources: dict[str, int], sinks: dict[str, int], settings: SupplySettings, kind: str,
                chance: dict[str, float]) -> float:
    """The best total gain over every way of sending whole vehicles from sources to sinks, a vehicle into
    ``sink`` being worth ``chance[sink]`` of the value."""
    profile = DISPATCH.kinds[kind]
    units = [s for s, n in sources.items() for _ in range(n)]
    options = [None, *sinks]
    best = 0.0
    max_moves = int(settings.reposition_max_share * sum(sources.values()))
    for choice in itertools.product(options, repeat=len(units)):
        if sum(c is not None for c in choice) > max_moves:
            continue
        if any(sum(c == sink for c in choice) > need for sink, need in sinks.items()):
            continue
        total = 0.0
        for src, dst in zip(units, choice, strict=True):
            if dst is None:
                continue
            travel = great_circle_m(*h3.cell_to_latlng(src), *h3.cell_to_latlng(dst)) * profile.detour_factor / (
                profile.speed_m_s)
            gain = settings.reposition_value_s * chance[dst] - travel
            if travel > settings.reposition_max_travel_s or gain <= 0:
                total = -1e18
                break
            total += gain
        best = max(best, total)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_the_plan_is_as_good_as_brute_force(seed: int) -> None:
    import random

    rng = random.Random(seed)
    settings = SupplySettings(reposition_max_share=rng.choice((0.3, 0.6, 1.0)), reposition_value_s=1500,
                              reposition_max_travel_s=1500)
    cells = [cell_at(rng.uniform(-1500, 1500), rng.uniform(-1500, 1500)) for _ in range(4)]
    cells = list(dict.fromkeys(cells))
    while len(cells) < 4:
        cells.append(h3.grid_ring(cells[0], len(cells))[0])
    src_a, src_b, dst_a, dst_b = cells
    sources = {src_a: rng.randint(1, 3), src_b: rng.randint(0, 2)}
    sinks = {dst_a: rng.randint(1, 2), dst_b: rng.randint(1, 2)}
    vehicles = [v for cell, n in sources.items() for v in vehicles_at(cell, n)]
    plan = plan_moves(vehicles, {c: float(n) for c, n in sinks.items()}, settings, DISPATCH, RES)
    # The cells' targets: their share of the idle fleet by expected orders, at least one vehicle per order.
    scale = max(1.0, len(vehicles) / sum(sinks.values()))
    wanted = {c: round(scale * n) for c, n in sinks.items()}
    assert plan.deficit == {c: float(n) for c, n in wanted.items()}
    # No vehicle waits in a sink: the next one there is used unless no order comes, P = 1 - exp(-expected).
    chance = {c: 1 - math.exp(-scale * n) for c, n in sinks.items()}
    assert plan.value_s == pytest.approx(brute_force({c: n for c, n in sources.items() if n}, wanted, settings,
                                                     "rover", chance), abs=1.0)
    assert len({m.vehicle_id for m in plan.moves}) == len(plan.moves)


def test_balanced_cells_stay_and_limits_hold() -> None:
    here, there, far = cell_at(0, 0), cell_at(1500, 0), cell_at(12000, 0)
    assert plan_moves(vehicles_at(here, 2), {here: 2.0}, SupplySettings(), DISPATCH, RES).moves == []
    # Too far for reposition_max_travel_s at taxi speed: nobody goes.
    assert plan_moves(vehicles_at(here, 3, "taxi"), {far: 3.0}, SupplySettings(), DISPATCH, RES).moves == []
    # Ten idle where no orders are expected, three orders expected elsewhere: all ten belong there, but at
    # most 20 % of the idle fleet moves in one plan.
    plan = plan_moves(vehicles_at(here, 10, "taxi"), {there: 3.0}, SupplySettings(reposition_max_share=0.2),
                      DISPATCH, RES)
    assert len(plan.moves) == 2 and all(m.to_cell == there and m.from_cell == here for m in plan.moves)
    assert all(m.incentive > 0 for m in plan.moves) and plan.deficit == {there: 10.0}


def test_incentives_stay_within_the_budget_and_only_drivers_get_them() -> None:
    here, there = cell_at(0, 0), cell_at(2000, 0)
    settings = SupplySettings(incentive_budget_per_hour=150.0, reposition_interval_s=300.0, reposition_max_share=1)
    per_plan = 150.0 * 300 / 3600
    plan = plan_moves(vehicles_at(here, 6, "taxi"), {there: 6.0}, settings, DISPATCH, RES)
    one = plan.moves[0].incentive
    assert one == incentive(settings, plan.moves[0].travel_s, 6.0) > 0
    assert len(plan.moves) == int(per_plan // one) and sum(m.incentive for m in plan.moves) <= per_plan
    robots = plan_moves(vehicles_at(here, 6, "copter"), {there: 6.0}, settings, DISPATCH, RES)
    assert len(robots.moves) == 6 and all(m.incentive == 0 for m in robots.moves)


def test_the_next_vehicle_goes_where_it_is_surest_to_get_an_order() -> None:
    here, far, near, quiet = cell_at(0, 0), cell_at(2000, 0), cell_at(1200, 0), cell_at(-1200, 0)
    centre = h3.cell_to_latlng(here)
    far_m, near_m, quiet_m = (great_circle_m(*centre, *h3.cell_to_latlng(c)) for c in (far, near, quiet))
    assert near_m < quiet_m < far_m
    settings = SupplySettings(reposition_max_share=1.0)
    # One taxi idle where nothing is expected; each cell wants one.
    plan = plan_moves(vehicles_at(here, 1, "taxi"), {far: 1.0, quiet: 1.0}, settings, DISPATCH, RES)
    assert [m.to_cell for m in plan.moves] == [quiet]  # alike but for the distance: the nearer
    # The far cell expects 4 orders (a taxi there gets one with P = 0.98), the quiet one 1 (P = 0.63).
    plan = plan_moves(vehicles_at(here, 1, "taxi"), {far: 4.0, quiet: 1.0}, settings, DISPATCH, RES)
    assert [m.to_cell for m in plan.moves] == [far]
    # With three taxis waiting there already, a busy cell needs a fourth (P = 0.57) less than the quiet one
    # needs its first, although the busy one is a little nearer.
    crowded = vehicles_at(near, 3, "taxi", prefix="there")
    plan = plan_moves([*vehicles_at(here, 1, "taxi"), *crowded], {near: 4.0, quiet: 1.0}, settings, DISPATCH,
                      RES)
    assert [m.to_cell for m in plan.moves] == [quiet]
