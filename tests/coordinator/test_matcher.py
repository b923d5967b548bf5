"""The dispatch matcher against exact assignments, and every feasibility rule on its own."""

from __future__ import annotations

import dataclasses
import math
import os
import random
import signal

import msgspec
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from coordinator.config import DispatchSettings, NoFlyZone
from coordinator.dispatch import matcher as matcher_module
from coordinator.dispatch.matcher import (
    OUTBID,
    UNASSIGNED_REASONS,
    DispatchOrder,
    DispatchVehicle,
    Infeasible,
    Matcher,
    MatchResult,
    _Round,
)
from coordinator.dispatch.plane import LocalPlane, PlanePolygon
from sim_hw.city_demand import CITY, city_instance, offset

NOW = 1_800_000_000.0


def _exact_cost(matcher: Matcher, orders: list[DispatchOrder], vehicles: list[DispatchVehicle]) -> float:
    """The optimum over every pair (dense), unassigned orders at their cost."""
    costs = matcher.dense_costs(orders, vehicles, NOW)
    n = len(orders)
    unassigned = np.full((n, n), np.inf)
    np.fill_diagonal(unassigned, [matcher.settings.unassigned_cost_s * (1 + o.priority) for o in orders])
    full = np.hstack((costs, unassigned))
    rows, cols = linear_sum_assignment(full)
    return float(full[rows, cols].sum())


def _cost_of(matcher: Matcher, orders: list[DispatchOrder], vehicles: list[DispatchVehicle],
             result_assignments: list[tuple[str, str]], unassigned: list[str]) -> float:
    costs = matcher.dense_costs(orders, vehicles, NOW)
    o_index = {o.order_id: i for i, o in enumerate(orders)}
    v_index = {v.vehicle_id: i for i, v in enumerate(vehicles)}
    total = sum(costs[o_index[o], v_index[v]] for o, v in result_assignments)
    return float(total + sum(matcher.settings.unassigned_cost_s * (1 + orders[o_index[o]].priority)
                             for o in unassigned))


def _as_round(seed: int, n: int, *, supply: str = "balanced", per_order: float = 1.5
              ) -> tuple[list[DispatchOrder], list[DispatchVehicle]]:
    inst = city_instance(n, seed=seed, supply=supply, vehicles_per_order=per_order)  # type: ignore[arg-type]
    rng = random.Random(seed)
    orders = [DispatchOrder(o.order_id, o.pickup, o.dropoff, o.payload_kg, o.passengers,
                            priority=rng.choice((0, 0, 1, 3)), kinds=o.kinds) for o in inst.orders]
    vehicles = [DispatchVehicle(v.vehicle_id, v.kind, v.lat, v.lon, v.battery_pct) for v in inst.vehicles]
    return orders, vehicles


@pytest.mark.parametrize(("seed", "n", "supply"), [(1, 30, "balanced"), (2, 45, "short"), (3, 60, "balanced"),
                                                   (4, 80, "short"), (5, 25, "short")])
def test_exact_when_every_vehicle_is_a_candidate(seed: int, n: int, supply: str) -> None:
    orders, vehicles = _as_round(seed, n, supply=supply)
    matcher = Matcher(DispatchSettings(candidates_per_kind=64))
    result = matcher.match(orders, vehicles, NOW)
    got = _cost_of(matcher, orders, vehicles, [(a.order_id, a.vehicle_id) for a in result.assignments],
                   list(result.unassigned))
    # The solver works in whole seconds: each pair may be off by half of one.
    assert got == pytest.approx(_exact_cost(matcher, orders, vehicles), abs=0.5 * n)
    assert len({a.vehicle_id for a in result.assignments}) == len(result.assignments)
    assert {a.order_id for a in result.assignments} | set(result.unassigned) == {o.order_id for o in orders}


def test_sparse_candidates_stay_near_the_optimum() -> None:
    orders, vehicles = _as_round(11, 600)
    matcher = Matcher(DispatchSettings())
    result = matcher.match(orders, vehicles, NOW)
    got = _cost_of(matcher, orders, vehicles, [(a.order_id, a.vehicle_id) for a in result.assignments],
                   list(result.unassigned))
    best = _exact_cost(matcher, orders, vehicles)
    assert best <= got <= best * 1.03
    assert result.edges < len(orders) * len(vehicles) / 10


def test_the_candidate_graph_holds_each_pair_once() -> None:
    """Nearest vehicles per order, nearest orders per vehicle and current assignments overlap; a pair
    named twice would count its cost twice in the solver's matrix."""
    orders, vehicles = _as_round(12, 400)
    rng = random.Random(12)
    orders = [dataclasses.replace(o, assigned_to=rng.choice(vehicles).vehicle_id) if rng.random() < 0.3 else o
              for o in orders]
    matcher = Matcher(DispatchSettings(candidates_per_kind=5))
    r = _Round(matcher, orders, vehicles, NOW)
    rows, cols = r.first_pairs(5, 4)
    got = list(zip(rows.tolist(), cols.tolist(), strict=True))
    assert len(got) == len(set(got))

    kind_of = [v.kind for v in vehicles]
    xy = {i: (r.vx[i], r.vy[i]) for i in range(len(vehicles))}
    expected: set[tuple[int, int]] = set()
    for i, o in enumerate(orders):
        for kind in {v.kind for v in vehicles}:
            if o.kinds is None or kind in o.kinds:
                same = sorted((math.dist(xy[j], (r.px[i], r.py[i])), j) for j in xy if kind_of[j] == kind)
                expected |= {(i, j) for _, j in same[:5]}
    for j, kind in enumerate(kind_of):
        allowing = [i for i, o in enumerate(orders) if o.kinds is None or kind in o.kinds]
        near = sorted((math.dist(xy[j], (r.px[i], r.py[i])), i) for i in allowing)
        expected |= {(i, j) for _, i in near[:4]}
    index_of = {v.vehicle_id: j for j, v in enumerate(vehicles)}
    expected |= {(i, index_of[o.assigned_to]) for i, o in enumerate(orders) if o.assigned_to}
    assert set(got) == expected


def _point(north_m: float, east_m: float) -> tuple[float, float]:
    return offset(CITY, north_m, east_m)


def _order(oid: str = "o1", pickup: tuple[float, float] = (0, 0), dropoff: tuple[float, float] = (0, 1000),
           **kw: object) -> DispatchOrder:
    return DispatchOrder(oid, _point(*pickup), _point(*dropoff), **kw)  # type: ignore[arg-type]


def _vehicle(vid: str, kind: str, at: tuple[float, float], battery: float | None = 90.0) -> DispatchVehicle:
    lat, lon = _point(*at)
    return DispatchVehicle(vid, kind, lat, lon, battery)


def test_nearest_fast_vehicle_wins_and_eta_is_reported() -> None:
    result = Matcher(DispatchSettings()).match(
        [_order(payload_kg=1.0)],
        [_vehicle("taxi-far", "taxi", (3000, 0)), _vehicle("copter-near", "copter", (1200, 0)),
         _vehicle("rover-nearest", "rover", (600, 0))], NOW)
    [a] = result.assignments
    assert a.vehicle_id == "copter-near"  # 100 s at 12 m/s beats the rover's 467 s and the taxi's 506 s
    assert a.pickup_eta_s == pytest.approx(1200 / 12.0, rel=0.01)


@pytest.mark.parametrize(("order_kw", "vehicles", "reason"), [
    ({"kinds": frozenset({"taxi"})}, [("c", "copter", (100, 0), 90.0)], Infeasible.NO_VEHICLE),
    ({"payload_kg": 5.0, "kinds": frozenset({"copter"})}, [("c", "copter", (100, 0), 90.0)], Infeasible.CAPACITY),
    ({"passengers": 5}, [("t", "taxi", (100, 0), None)], Infeasible.CAPACITY),
    ({"deadline": NOW + 60}, [("t", "taxi", (2000, 0), None)], Infeasible.DEADLINE),
    # 4 km out + 1 km trip + ~4.1 km back is more than 15 km x (30 % - 20 % reserve)
    ({"payload_kg": 1.0}, [("c", "copter", (4000, 0), 30.0)], Infeasible.BATTERY),
    ({"payload_kg": 1.0}, [("c", "copter", (4000, 0), None)], Infeasible.BATTERY),
])
def test_infeasible_pairs_are_never_assigned_and_say_why(order_kw: dict[str, object],
                                                          vehicles: list[tuple[str, str, tuple[float, float],
                                                                               float | None]],
                                                          reason: Infeasible) -> None:
    result = Matcher(DispatchSettings()).match([_order(**order_kw)],
                                               [_vehicle(v, k, at, b) for v, k, at, b in vehicles], NOW)
    assert result.assignments == []
    assert result.unassigned == {"o1": UNASSIGNED_REASONS[reason]}


def test_no_fly_zone_blocks_drones_but_not_taxis() -> None:
    # A zone across the way between the copter (2 km north) and the pickup.
    zone = NoFlyZone(name="stadium", polygon=[_point(800, -300), _point(800, 300), _point(1200, 300),
                                             _point(1200, -300)])
    settings = DispatchSettings(no_fly_zones=[zone])
    copter = _vehicle("c", "copter", (2000, 0))
    result = Matcher(settings).match([_order(payload_kg=1.0)], [copter], NOW)
    assert result.unassigned == {"o1": UNASSIGNED_REASONS[Infeasible.NO_FLY]}
    result = Matcher(settings).match([_order(payload_kg=1.0)], [copter, _vehicle("t", "taxi", (3000, 0))], NOW)
    assert [(a.order_id, a.vehicle_id) for a in result.assignments] == [("o1", "t")]
    # Flying around is fine: the same copter, off to the side of the zone.
    result = Matcher(settings).match([_order(payload_kg=1.0)], [_vehicle("c2", "copter", (2000, 2000))], NOW)
    assert [a.vehicle_id for a in result.assignments] == ["c2"]
    assert Matcher(settings).zones_hit([_point(1000, 0), _point(0, 0)]) == ["stadium", None]


def test_an_unaccepted_assignment_moves_only_for_the_configured_gain() -> None:
    settings = DispatchSettings(reassign_gain_s=60.0)
    order = _order(kinds=frozenset({"taxi"}), assigned_to="held")
    held = _vehicle("held", "taxi", (2000, 0))                 # ~338 s away
    slightly_better = _vehicle("closer", "taxi", (1800, 0))    # ~304 s: saves 34 s
    much_better = _vehicle("closest", "taxi", (500, 0))        # ~84 s: saves 254 s
    assert [a.vehicle_id for a in Matcher(settings).match([order], [held, slightly_better], NOW).assignments] == [
        "held"]
    assert [a.vehicle_id for a in Matcher(settings).match([order], [held, much_better], NOW).assignments] == [
        "closest"]


def test_priority_wins_the_last_vehicle_and_the_other_is_outbid() -> None:
    orders = [_order("low", (0, 0), kinds=frozenset({"taxi"})),
              _order("high", (0, 200), kinds=frozenset({"taxi"}), priority=2)]
    result = Matcher(DispatchSettings()).match(orders, [_vehicle("t", "taxi", (50, 0))], NOW)
    assert [a.order_id for a in result.assignments] == ["high"]
    assert result.unassigned == {"low": OUTBID}


def test_unknown_kinds_and_empty_rounds() -> None:
    matcher = Matcher(DispatchSettings())
    assert matcher.match([], [_vehicle("t", "taxi", (0, 0))], NOW).assignments == []
    result = matcher.match([_order()], [_vehicle("b", "boat", (0, 0))], NOW)
    assert result.unassigned == {"o1": UNASSIGNED_REASONS[Infeasible.NO_VEHICLE]}
    assert matcher.match([_order()], [], NOW).unassigned == {"o1": UNASSIGNED_REASONS[Infeasible.NO_VEHICLE]}


@pytest.mark.parametrize(("seed", "n"), [(21, 300), (22, 400)])
def test_short_supply_rounds_are_solved_exactly_or_close(seed: int, n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Vehicles short: the optimum chains far vehicles into the crowd, beyond every nearest-candidate list.
    A round of at most ALL_PAIRS pairs gets it exactly; a larger one (here: the limit set to none) comes
    near it by looking further and letting the vehicles still free reach out."""
    orders, vehicles = _as_round(seed, n, supply="short", per_order=1.0)
    matcher = Matcher(DispatchSettings())
    best = _exact_cost(matcher, orders, vehicles)

    def cost() -> tuple[float, int]:
        result = matcher.match(orders, vehicles, NOW)
        assert len({a.vehicle_id for a in result.assignments}) == len(result.assignments)
        return _cost_of(matcher, orders, vehicles, [(a.order_id, a.vehicle_id) for a in result.assignments],
                        list(result.unassigned)), len(result.unassigned)

    exact, unserved = cost()
    assert exact == pytest.approx(best, abs=0.5 * n)
    assert unserved > 0  # the instance is short of vehicles indeed
    monkeypatch.setattr(matcher_module, "ALL_PAIRS", 0)
    near, _ = cost()
    assert best - 0.5 * n <= near <= best * 1.05
    monkeypatch.setattr(matcher_module, "FREE_REACH", 0)
    assert cost()[0] > near  # 7-8 % above the optimum without the free vehicles reaching out


def test_search_threads_change_the_speed_not_the_answer() -> None:
    orders, vehicles = _as_round(24, 300)
    one = Matcher(DispatchSettings(search_threads=1)).match(orders, vehicles, NOW)
    every_core = Matcher(DispatchSettings(search_threads=0)).match(orders, vehicles, NOW)
    assert one.assignments and one.assignments == every_core.assignments
    assert one.unassigned == every_core.unassigned


def test_an_order_no_vehicle_can_serve_does_not_send_the_round_to_every_pair() -> None:
    orders, vehicles = _as_round(23, 60)
    matcher = Matcher(DispatchSettings())
    plain = matcher.match(orders, vehicles, NOW)
    assert not plain.unassigned
    heavy = _order("heavy", (0, 0), payload_kg=500.0)
    result = matcher.match([*orders, heavy], vehicles, NOW)
    assert result.unassigned == {"heavy": UNASSIGNED_REASONS[Infeasible.CAPACITY]}
    assert result.edges == plain.edges  # the first graph's pairs only
    assert [a[:2] for a in result.assignments] == [a[:2] for a in plain.assignments]


def test_a_large_round_split_in_regions_stays_within_a_tenth_of_a_percent_of_one_solve() -> None:
    orders, vehicles = _as_round(13, 1500)
    whole = Matcher(DispatchSettings(split_above_orders=0)).match(orders, vehicles, NOW)
    matcher = Matcher(DispatchSettings(split_above_orders=400, solver_processes=1))
    try:
        matcher.solver_pool.warm_up()
        split = matcher.match(orders, vehicles, NOW)
    finally:
        matcher.close()
    assert whole.parts == 1 and split.parts == 4  # 1,500 -> 750 -> 375 orders
    # The solver process changes where regions are solved, never the answer.
    alone = Matcher(DispatchSettings(split_above_orders=400, solver_processes=0)).match(orders, vehicles, NOW)
    assert alone.assignments == split.assignments

    def objective(result: MatchResult) -> float:
        priority = {o.order_id: o.priority for o in orders}
        return sum(a.pickup_eta_s for a in result.assignments) + sum(
            DispatchSettings().unassigned_cost_s * (1 + priority[o]) for o in result.unassigned)

    assert objective(whole) <= objective(split) <= objective(whole) * 1.001
    assert len({a.vehicle_id for a in split.assignments}) == len(split.assignments)
    costs = Matcher(DispatchSettings()).dense_costs(orders, vehicles, NOW)
    o_index = {o.order_id: i for i, o in enumerate(orders)}
    v_index = {v.vehicle_id: i for i, v in enumerate(vehicles)}
    assert all(np.isfinite(costs[o_index[a.order_id], v_index[a.vehicle_id]]) for a in split.assignments)


def test_a_dead_solver_process_costs_time_not_the_answer() -> None:
    orders, vehicles = _as_round(14, 900)
    settings = DispatchSettings(split_above_orders=300, solver_processes=1)
    expected = Matcher(msgspec.structs.replace(settings, solver_processes=0)).match(orders, vehicles, NOW)
    matcher = Matcher(settings)
    try:
        matcher.solver_pool.warm_up()
        pool = matcher.solver_pool._pool
        assert pool is not None
        (worker,) = pool._processes.values()
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(10)
        assert matcher.match(orders, vehicles, NOW).assignments == expected.assignments
        # The next split round starts a new process (and, not waiting for it, solves every region itself).
        assert matcher.match(orders, vehicles, NOW).assignments == expected.assignments
        assert matcher.solver_pool._pool is not None and matcher.solver_pool._pool is not pool
        (again,) = matcher.solver_pool._pool._processes.values()
        assert again.pid != worker.pid and again.is_alive()
        matcher.solver_pool.warm_up()
        assert matcher.solver_pool.submit(int) is not None
        assert matcher.match(orders, vehicles, NOW).assignments == expected.assignments
    finally:
        matcher.close()


def test_the_border_of_a_split_round_is_solved_again() -> None:
    """Cut between the two pickups: alone, the west order could only have the far west taxi; across the
    cut, the east side's spare taxi is nearer."""
    taxi = frozenset({"taxi"})
    orders = [_order("west", (0, 0), kinds=taxi), _order("east", (0, 1000), kinds=taxi)]
    vehicles = [_vehicle("far-west", "taxi", (0, -2500)), _vehicle("middle", "taxi", (0, 600)),
                _vehicle("east", "taxi", (0, 1050))]
    result = Matcher(DispatchSettings(split_above_orders=1, candidates_per_kind=3)).match(orders, vehicles, NOW)
    assert result.parts == 2
    assert {a.order_id: a.vehicle_id for a in result.assignments} == {"west": "middle", "east": "east"}


def test_plane_polygon_contains_and_crossings() -> None:
    plane = LocalPlane(*CITY)
    square = PlanePolygon(plane, [_point(0, 0), _point(0, 100), _point(100, 100), _point(100, 0)])
    pts = plane.xy(*map(np.array, zip(*[_point(50, 50), _point(150, 50), _point(-1, 50)], strict=True)))
    assert square.contains(pts).tolist() == [True, False, False]
    p = plane.xy(*map(np.array, zip(*[_point(50, -100), _point(200, -100), _point(50, 50)], strict=True)))
    q = plane.xy(*map(np.array, zip(*[_point(50, 200), _point(200, 200), _point(60, 60)], strict=True)))
    assert square.touched_by(p, q).tolist() == [True, False, True]
    assert math.isclose(float(np.hypot(*plane.xy(np.array([_point(0, 1000)[0]]),
                                                 np.array([_point(0, 1000)[1]]))[0])), 1000, rel_tol=1e-3)


def test_a_vehicle_that_declined_is_never_offered_the_order_again() -> None:
    vehicles = [_vehicle("near", "taxi", (100, 0)), _vehicle("far", "taxi", (1500, 0))]
    result = Matcher(DispatchSettings()).match([_order(excluded=frozenset({"near"}))], vehicles, NOW)
    assert [a.vehicle_id for a in result.assignments] == ["far"]
    result = Matcher(DispatchSettings()).match([_order(excluded=frozenset({"near", "far"}))], vehicles, NOW)
    assert result.unassigned == {"o1": UNASSIGNED_REASONS[Infeasible.DECLINED]}
