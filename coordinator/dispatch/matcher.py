"""Who serves each order: one batched, optimal assignment on a sparse candidate graph.

A round takes the open orders and the vehicles free to take them and returns the assignment of least
total cost, where

- the **candidates** of an order are the ``candidates_per_kind`` nearest vehicles of each kind it allows,
  and each vehicle also offers itself to its nearest orders (k-d trees per kind), so a round's work grows
  with orders x candidates, not orders x fleet; every feasible candidate pair goes to the solver;
- a pair's **cost** is the predicted pickup time: from the ONNX model ``dispatch.eta_model`` when one is
  configured (:mod:`coordinator.dispatch.eta_model`), else straight-line distance x the kind's detour
  factor / its speed; an assignment not yet accepted is discounted by ``reassign_gain_s``, so it only moves
  for a real gain; leaving an order unassigned costs ``unassigned_cost_s x (1 + priority)``;
- a pair is **feasible** only if the vehicle's kind is allowed, it carries the payload and the passengers,
  it can be at the pickup within ``max_pickup_s`` and at the drop-off by the deadline, its battery covers
  pickup + delivery + the way back plus the reserve (kinds with a range), and a flying vehicle's legs stay
  out of every no-fly zone.

The assignment is a minimum-weight perfect matching (SciPy's LAPJVsp) that lets any order go unassigned at
its cost, exact on the candidate graph; a round of more than ``dispatch.split_above_orders`` orders is
solved as two halves of the city and their border (:class:`_SplitSolver`), within about 0.1 % of that.
Where vehicles are short, the first solve leaves orders over, and the best answer sends far vehicles
into crowded places through chains of reassignments the nearest-candidate graph lacks: such a round is solved
again on every pair when it is small enough (``ALL_PAIRS``), exactly; a larger one is solved again with
its left-over orders looking further and then with the vehicles still free offering themselves to their
nearest orders, and its orders still left over are matched against the vehicles still free on every pair.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_array
from scipy.sparse.csgraph import min_weight_full_bipartite_matching
from scipy.spatial import cKDTree

from coordinator.config import DispatchSettings
from coordinator.dispatch.eta_model import OnnxEtaModel, features
from coordinator.dispatch.plane import Floats, LocalPlane, PlanePolygon
from coordinator.dispatch.solver_pool import SolverPool

Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class DispatchVehicle:
    """A vehicle free to take an order (or holding one it has not accepted yet)."""

    vehicle_id: str
    kind: str
    lat: float
    lon: float
    battery_pct: float | None = None


@dataclass(frozen=True, slots=True)
class DispatchOrder:
    """An order waiting for a vehicle, as a matching round sees it."""

    order_id: str
    pickup: tuple[float, float]
    dropoff: tuple[float, float]
    payload_kg: float = 0.0
    passengers: int = 0
    priority: int = 0
    kinds: frozenset[str] | None = None
    """Vehicle kinds allowed; None: any kind dispatch knows."""
    deadline: float = math.inf
    """Unix time by which the drop-off must be reached."""
    assigned_to: str | None = None
    """The vehicle it is assigned to and that has not accepted yet, if any."""
    excluded: frozenset[str] = frozenset()
    """Vehicles never to offer it to again (they declined it, never answered, or failed it)."""


class Assignment(NamedTuple):
    # A tuple: a round makes thousands, and a frozen dataclass costs five times as much to build.
    order_id: str
    vehicle_id: str
    pickup_eta_s: float


class Infeasible(enum.IntEnum):
    """Why a vehicle cannot serve an order, most basic first (an unassigned order reports its best)."""

    NO_VEHICLE = 0
    CAPACITY = 1
    TOO_FAR = 2
    DEADLINE = 3
    BATTERY = 4
    NO_FLY = 5
    DECLINED = 6


UNASSIGNED_REASONS = {
    Infeasible.NO_VEHICLE: "no free vehicle of an allowed kind",
    Infeasible.CAPACITY: "no free vehicle of an allowed kind carries the payload and passengers",
    Infeasible.TOO_FAR: "no free vehicle can be there within dispatch.max_pickup_s",
    Infeasible.DEADLINE: "no free vehicle can reach the drop-off before the deadline",
    Infeasible.BATTERY: "no free vehicle has the battery for pickup, delivery and return with the reserve",
    Infeasible.NO_FLY: "every free drone would have to cross a no-fly zone",
    Infeasible.DECLINED: "every free vehicle that could serve it has declined it, not answered, or failed it",
}
OUTBID = "every vehicle that could serve it is better used for other orders this round"


@dataclass(slots=True)
class MatchResult:
    assignments: list[Assignment] = field(default_factory=list)
    unassigned: dict[str, str] = field(default_factory=dict)
    """Order id -> why no vehicle was assigned this round."""
    edges: int = 0
    """Feasible order-vehicle pairs the solver weighed."""
    parts: int = 1
    """Regions the round was solved in (1: one exact solve; see ``dispatch.split_above_orders``)."""


EDGES_PER_KIND = 2
"""An order that looks further (``WIDEN``) keeps its cheapest ``WIDEN x EDGES_PER_KIND x candidates_per_kind``
feasible pairs for the second solve."""
NEAREST_ORDERS = 6
"""Nearest orders each vehicle offers itself to, beside each order's nearest vehicles: where vehicles are
short, an order's best vehicle may be one no nearer order can use."""
WIDEN = 4
"""How much further than its first candidates an order left over by the first solve looks."""
ALL_PAIRS = 1_000_000
"""Most order-vehicle pairs solved on every pair (priced in some 70 ms, solved on the feasible ones in some
100 ms). A round whose first solve leaves orders over is solved again on every pair if it has no more;
otherwise the orders still left over at the end and the vehicles still free are, if they make no more."""
FREE_REACH = 60
"""Nearest orders each vehicle the first solve left free offers itself to in the third."""
MAX_ORDERS = 1 << 20
MAX_VEHICLES = 1 << 23


def _sparse_assignment(n: int, m: int, rows: Ints, cols: Ints, cost: Floats, dummy: Floats, *,
                       order_rank: Ints | None = None, vehicle_rank: Ints | None = None) -> Ints:
    """For each of ``n`` orders the vehicle it gets (of ``m``), or -1, at least total cost.

    ``(rows, cols)`` name each candidate pair once. Solved as a square perfect matching: orders and one
    spare row per vehicle against vehicles and one "unassigned" column per order; each candidate pair
    (i, j) also links vehicle j's spare row to order i's unassigned column at no cost, so that whatever
    orders and vehicles stay unpaired can pair off with each other. SciPy's LAPJVsp runs its fast greedy
    initialisation only on square problems; on this one it leaves few rows for the costly augmenting-path
    phase. ``order_rank`` / ``vehicle_rank`` (positions along a space-filling curve) number rows and
    columns so that neighbours in the city are neighbours in memory: the augmenting paths stay local, and
    the solve is about a quarter faster.
    """
    row_at = np.argsort(order_rank, kind="stable") if order_rank is not None else np.arange(n)
    col_at = np.argsort(vehicle_rank, kind="stable") if vehicle_rank is not None else np.arange(m)
    row_no = np.empty(n, dtype=np.int64)
    row_no[row_at] = np.arange(n)
    col_no = np.empty(m, dtype=np.int64)
    col_no[col_at] = np.arange(m)
    rows, cols, dummy = row_no[rows], col_no[cols], dummy[row_at]
    # Whole seconds: the solver is faster with ties, and nobody plans pickups in fractions of one.
    weights = np.concatenate((np.round(cost), np.round(dummy), np.zeros(len(rows) + m)))
    # Every perfect matching has n + m edges, so a constant added to all of them changes nothing; it keeps
    # the weights non-zero, which LAPJVsp requires.
    weights += 1.0 - min(0.0, float(weights.min()))
    spare = n + np.arange(m)
    # csr_array sorts each row's columns. Keep it: with the columns of a row left in the order they came,
    # the same solves took 10 to 400 times as long (measured).
    graph = csr_array((weights, (np.concatenate((rows, np.arange(n), n + cols, spare)),
                                 np.concatenate((cols, m + np.arange(n), m + rows, np.arange(m))))),
                      shape=(n + m, n + m))
    row_of, col_of = min_weight_full_bipartite_matching(graph)
    vehicle_of = np.full(n, -1, dtype=np.int64)
    real = (row_of < n) & (col_of < m)
    vehicle_of[row_at[row_of[real]]] = col_at[col_of[real]]
    return vehicle_of


def _distance(x1: Floats, y1: Floats, x2: Floats, y2: Floats) -> Floats:
    """Euclidean distances in the plane (metres: no overflow to guard against, which makes np.hypot slower)."""
    dx = x1 - x2
    dy = y1 - y2
    dx *= dx
    dy *= dy
    dx += dy
    out: Floats = np.sqrt(dx, out=dx)
    return out


def _morton(x: Floats, y: Floats, origin: tuple[float, float], cell_m: float = 250.0) -> Ints:
    """Positions along a Z-order curve over ``cell_m`` squares (up to 2**16 cells a side)."""
    xi = np.clip((x - origin[0]) / cell_m, 0, (1 << 16) - 1).astype(np.int64)
    yi = np.clip((y - origin[1]) / cell_m, 0, (1 << 16) - 1).astype(np.int64)
    code = np.zeros(len(x), dtype=np.int64)
    for bit in range(16):
        code |= ((xi >> bit) & 1) << (2 * bit) | ((yi >> bit) & 1) << (2 * bit + 1)
    return code


def _cheapest_per_order(rows: Ints, cols: Ints, cost: Floats, k: int) -> tuple[Ints, Ints, Floats]:
    """Each order's ``k`` cheapest pairs, each pair once (both candidate directions may name it).

    One sort of packed 63-bit keys (order < MAX_ORDERS, cost in tenths of a second above the round's
    cheapest, vehicle < MAX_VEHICLES)
    does it all: a pair found twice lands beside itself, and ranks within an order follow. Costs come back
    to the tenth of a second, finer than the solver's whole seconds.
    """
    if not len(rows):
        return rows, cols, cost
    tenths = np.round((cost - cost.min()) * 10).astype(np.int64)
    keys = (rows << 43) | (np.minimum(tenths, (1 << 20) - 1) << 23) | cols
    keys.sort()
    keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
    r = keys >> 43
    c = keys & ((1 << 23) - 1)
    starts = np.flatnonzero(np.concatenate(([True], r[1:] != r[:-1])))
    rank = np.arange(len(r)) - np.repeat(starts, np.diff(np.append(starts, len(r))))
    keep = rank < k
    kept_cost: Floats = cost.min() + ((keys[keep] >> 23) & ((1 << 20) - 1)) / 10.0
    return r[keep], c[keep], kept_cost


def _solve_region(n: int, m: int, rows: Ints, cols: Ints, cost: Floats, dummy: Floats, order_rank: Ints,
                  vehicle_rank: Ints) -> Ints:
    """:func:`_sparse_assignment` with positional arguments, for a solver process."""
    return _sparse_assignment(n, m, rows, cols, cost, dummy, order_rank=order_rank, vehicle_rank=vehicle_rank)


class _Region(NamedTuple):
    orders: Ints
    vehicles: Ints
    pairs: Ints


class _Cut(NamedTuple):
    """A region cut in two (its halves solved), whose border is then solved again."""

    region: _Region
    left_order: Bools
    left_vehicle: Bools


class _SplitSolver:
    """The least-cost assignment on a candidate graph, a large round as two halves and their border.

    LAPJVsp's time grows faster than the round: every augmenting path it still has to find after its
    greedy start resets an array as long as the graph. A round of more than ``split_above`` orders is cut
    at the median pickup along its longer side (each vehicle goes with the side it stands on), and each
    half the same way while it is still too large. The regions are solved on the pairs inside them, all but
    one in the solver processes (:mod:`coordinator.dispatch.solver_pool`) while this thread solves the
    last; then, from the smallest cut up, each cut's **border** is solved again exactly: the orders with a
    candidate across it, the orders sharing a candidate vehicle with those, the vehicles they hold and the
    free vehicles they reach. The halves' answer is one the border solve may keep, so it can only improve;
    what it cannot redo is a chain of moves reaching deeper than the border.
    """

    def __init__(self, rows: Ints, cols: Ints, cost: Floats, dummy: Floats, r: _Round, split_above: int,
                 pool: SolverPool) -> None:
        self.rows, self.cols, self.cost, self.dummy = rows, cols, cost, dummy
        self.px, self.py, self.vx, self.vy = r.px, r.py, r.vx, r.vy
        self.split_above = split_above
        self.pool = pool
        self.order_rank, self.vehicle_rank = r.order_rank, r.vehicle_rank
        self.n, self.m = len(r.px), r.m
        self.vehicle_of = np.full(self.n, -1, dtype=np.int64)
        self.regions: list[_Region] = []
        self.cuts: list[_Cut] = []

    def solve(self) -> Ints:
        self._plan(_Region(np.arange(self.n), np.arange(self.m), np.arange(len(self.rows))))
        *sent, here = [(region, self._problem(region)) for region in self.regions]
        futures = [(region, problem, self.pool.submit(_solve_region, *problem)) for region, problem in sent]
        self._take(here[0], _solve_region(*here[1]))
        for region, problem, future in futures:
            got = (_solve_region(*problem) if future is None
                   else self.pool.result(future, partial(_solve_region, *problem)))
            self._take(region, got)
        for cut in self.cuts:
            self._border(cut)
        return self.vehicle_of

    def _plan(self, region: _Region) -> None:
        """Cuts ``region`` while it is too large: its regions to solve, its cuts in the order to mend them."""
        o, v, e = region
        if not self.split_above or len(o) <= self.split_above or not len(v):
            self.regions.append(region)
            return
        wide = np.ptp(self.px[o]) >= np.ptp(self.py[o])
        at_o, at_v = (self.px, self.vx) if wide else (self.py, self.vy)
        cut = float(np.median(at_o[o]))
        left_o = np.zeros(self.n, dtype=bool)
        left_o[o] = at_o[o] < cut
        if left_o[o].all() or not left_o[o].any():  # every pickup on the cut: nothing to split
            self.regions.append(region)
            return
        left_v = np.zeros(self.m, dtype=bool)
        left_v[v] = at_v[v] < cut
        er, ec = self.rows[e], self.cols[e]
        self._plan(_Region(o[left_o[o]], v[left_v[v]], e[left_o[er] & left_v[ec]]))
        self._plan(_Region(o[~left_o[o]], v[~left_v[v]], e[~left_o[er] & ~left_v[ec]]))
        self.cuts.append(_Cut(region, left_o, left_v))

    def _problem(self, region: _Region) -> tuple[int, int, Ints, Ints, Floats, Floats, Ints, Ints]:
        """The region as :func:`_solve_region`'s arguments, numbered from 0."""
        o, v, e = region
        o_at = np.full(self.n, -1, dtype=np.int64)
        o_at[o] = np.arange(len(o))
        v_at = np.full(self.m, -1, dtype=np.int64)
        v_at[v] = np.arange(len(v))
        return (len(o), len(v), o_at[self.rows[e]], v_at[self.cols[e]], self.cost[e], self.dummy[o],
                self.order_rank[o], self.vehicle_rank[v])

    def _take(self, region: _Region, got: Ints) -> None:
        vehicle_of = np.full(len(got), -1, dtype=np.int64)
        vehicle_of[got >= 0] = region.vehicles[got[got >= 0]]
        self.vehicle_of[region.orders] = vehicle_of

    def _border(self, cut: _Cut) -> None:
        (o, v, e), left_o, left_v = cut
        er, ec = self.rows[e], self.cols[e]
        border = np.zeros(self.n, dtype=bool)
        border[er[left_o[er] != left_v[ec]]] = True
        # Orders competing for the same vehicles join, so that one can give way to the other.
        reached = np.zeros(self.m, dtype=bool)
        reached[ec[border[er]]] = True
        border[er[reached[ec]]] = True
        bo = o[border[o]]
        reached[:] = False
        reached[ec[border[er]]] = True
        taken = np.zeros(self.m, dtype=bool)
        held = self.vehicle_of[o]
        taken[held[held >= 0]] = True
        held = self.vehicle_of[bo]
        in_border = reached & ~taken
        in_border[held[held >= 0]] = True
        region = _Region(bo, v[in_border[v]], e[border[er] & in_border[ec]])
        if len(region.orders) and len(region.vehicles):
            self._take(region, _solve_region(*self._problem(region)))


class Matcher:
    """Builds and solves one matching round; holds only the settings, so one instance serves every round."""

    def __init__(self, settings: DispatchSettings, eta_model: OnnxEtaModel | None = None) -> None:
        self.settings = settings
        self.eta_model = eta_model
        self.kind_names = list(settings.kinds)
        profiles = [settings.kinds[k] for k in self.kind_names]
        self._speed = np.array([p.speed_m_s for p in profiles])
        self._detour = np.array([p.detour_factor for p in profiles])
        self._range = np.array([p.range_m for p in profiles])
        self._payload = np.array([p.payload_kg for p in profiles])
        self._seats = np.array([p.passengers for p in profiles])
        self._flies = np.array([p.flies for p in profiles], dtype=bool)
        self.solver_pool = SolverPool(settings.solver_processes if settings.split_above_orders else 0)

    def close(self) -> None:
        """Stops the solver processes, if any started (a later split round starts them again)."""
        self.solver_pool.close()

    # -- the round ------------------------------------------------------------------------------------

    def match(self, orders: Sequence[DispatchOrder], vehicles: Sequence[DispatchVehicle],
              now: float) -> MatchResult:
        """The least-cost assignment of ``orders`` to ``vehicles`` (each vehicle serves at most one)."""
        result = MatchResult()
        if not orders:
            return result
        if len(orders) >= MAX_ORDERS or len(vehicles) >= MAX_VEHICLES:
            raise ValueError(f"a round takes fewer than {MAX_ORDERS:,} orders and {MAX_VEHICLES:,} vehicles")
        r = _Round(self, orders, vehicles, now)
        n, m = len(orders), r.m
        k = self.settings.candidates_per_kind
        dummy = self.settings.unassigned_cost_s * (1.0 + r.priority)
        rows, cols = r.first_pairs(k, NEAREST_ORDERS)
        cost, why = r.pair_costs(rows, cols)
        ok = why < 0
        fr, fc, fcost = rows[ok], cols[ok], cost[ok]
        result.edges = len(fr)
        split_above = self.settings.split_above_orders
        solver = _SplitSolver(fr, fc, fcost, dummy, r, split_above, self.solver_pool)
        vehicle_of = solver.solve()
        result.parts = len(solver.regions)

        left = np.flatnonzero(vehicle_of < 0)
        tried_rows, tried_why = [rows], [why]
        if len(left) and n * m <= ALL_PAIRS:
            # Where vehicles are short, the best answer chains far vehicles into crowded places, which no
            # nearest-candidate graph holds: a round this small is solved again on every pair, exactly, if
            # some vehicle could serve an order left over at all (often none can: too heavy, too far).
            lrows, lcols = np.repeat(left, m), np.tile(np.arange(m), len(left))
            _, lwhy = r.pair_costs(lrows, lcols)
            tried_rows.append(lrows)
            tried_why.append(lwhy)
            if (lwhy < 0).any():
                vehicle_of, dense_rows, dense_why = r.dense_assignment(np.arange(n), np.arange(m), dummy)
                result.edges = int(np.count_nonzero(dense_why < 0))
                result.parts = 1
        elif len(left) and m > k:
            # Orders left over look WIDEN times further, and the round is solved again, so a far vehicle can
            # come for one while the order it leaves takes another (a chain the first graph lacked); then the
            # vehicles the first solve left free offer themselves to their FREE_REACH nearest orders, served
            # or not, and it is solved once more (a served order may take a far free vehicle and leave its
            # own to one left over). Those free after the second solve instead: 5.5 / 3.4 % above the optimum
            # in the tests' rounds, against 3.5 / 2.1 %.
            wrows, wcols = r.candidates(left, WIDEN * k)
            free = np.setdiff1d(np.arange(m), vehicle_of[vehicle_of >= 0])
            xrows, xcols = r.orders_near(free, FREE_REACH)
            for extra_rows, extra_cols in ((wrows, wcols), (xrows, xcols)):
                extra_cost, extra_why = r.pair_costs(extra_rows, extra_cols)
                tried_rows.append(extra_rows)
                tried_why.append(extra_why)
                good = extra_why < 0
                fr, fc, fcost = _cheapest_per_order(
                    np.concatenate((fr, extra_rows[good])), np.concatenate((fc, extra_cols[good])),
                    np.concatenate((fcost, extra_cost[good])), WIDEN * EDGES_PER_KIND * k + FREE_REACH)
                result.edges = len(fr)
                solver = _SplitSolver(fr, fc, fcost, dummy, r, split_above, self.solver_pool)
                vehicle_of = solver.solve()
                result.parts = len(solver.regions)
                if (vehicle_of >= 0).all():
                    break

            # Orders still left over and the vehicles still free are matched again, on every pair.
            left = np.flatnonzero(vehicle_of < 0)
            free = np.setdiff1d(np.arange(m), vehicle_of[vehicle_of >= 0]) if len(left) else left
            if len(left) and len(free) and len(left) * len(free) <= ALL_PAIRS:
                got, dense_rows, dense_why = r.dense_assignment(left, free, dummy)
                tried_rows.append(dense_rows)
                tried_why.append(dense_why)
                vehicle_of[left] = got
                result.edges += int(np.count_nonzero(dense_why < 0))

        served = np.flatnonzero(vehicle_of >= 0)
        etas = r.eta_of(served, vehicle_of[served])
        result.assignments = list(map(Assignment, [orders[o].order_id for o in served.tolist()],
                                      [vehicles[c].vehicle_id for c in vehicle_of[served].tolist()], etas.tolist()))
        unserved = np.flatnonzero(vehicle_of < 0)
        if len(unserved):
            all_rows, all_why = np.concatenate(tried_rows), np.concatenate(tried_why)
            best = np.full(n, int(Infeasible.NO_VEHICLE), dtype=np.int64)
            np.maximum.at(best, all_rows, np.where(all_why < 0, len(Infeasible), all_why))
            for o in unserved.tolist():
                result.unassigned[orders[o].order_id] = (OUTBID if best[o] == len(Infeasible)
                                                         else UNASSIGNED_REASONS[Infeasible(best[o])])
        return result

    def dense_costs(self, orders: Sequence[DispatchOrder], vehicles: Sequence[DispatchVehicle],
                    now: float) -> Floats:
        """Every pair's cost as an (orders, vehicles) matrix, ``inf`` where infeasible (for exact baselines)."""
        r = _Round(self, orders, vehicles, now)
        rows = np.repeat(np.arange(len(orders)), r.m)
        cols = np.tile(np.arange(r.m), len(orders))
        cost, why = r.pair_costs(rows, cols)
        cost[why >= 0] = np.inf
        out: Floats = cost.reshape(len(orders), r.m)
        return out

    def zones_hit(self, points: Sequence[tuple[float, float]]) -> list[str | None]:
        """For each ``(lat, lon)``: the name of the no-fly zone it lies in, or None."""
        if not points:
            return []
        lats, lons = np.array([p[0] for p in points]), np.array([p[1] for p in points])
        plane = LocalPlane.around(lats, lons)
        xy = plane.xy(lats, lons)
        out: list[str | None] = [None] * len(points)
        for zone in self.settings.no_fly_zones:
            inside = PlanePolygon(plane, zone.polygon).contains(xy)
            for i in np.flatnonzero(inside).tolist():
                out[i] = out[i] or zone.name
        return out


class _KindMasks(dict[frozenset[str] | None, int]):
    """An order's allowed kinds as a bit mask over the kind codes (None: every kind), worked out once."""

    def __init__(self, code_of: dict[str, int]) -> None:
        super().__init__()
        self.code_of = code_of

    def __missing__(self, kinds: frozenset[str] | None) -> int:
        mask = ((1 << len(self.code_of)) - 1 if kinds is None
                else sum(1 << self.code_of[k] for k in kinds if k in self.code_of))
        self[kinds] = mask
        return mask


class _Round:
    """One round's orders and vehicles as arrays in one local plane."""

    def __init__(self, matcher: Matcher, orders: Sequence[DispatchOrder], vehicles: Sequence[DispatchVehicle],
                 now: float) -> None:
        self.mt = matcher
        self.now = now
        self.m = len(vehicles)
        code_of = {name: i for i, name in enumerate(matcher.kind_names)}
        m, n = len(vehicles), len(orders)

        # One pass over each list (a round of 5,000 orders is 40,000 attribute reads before any arithmetic),
        # as one flat stream into fromiter: a third of the time of np.array over a list of tuples.
        nan = math.nan
        v = np.fromiter(chain.from_iterable(
            (code_of.get(x.kind, -1), x.lat, x.lon, nan if x.battery_pct is None else x.battery_pct)
            for x in vehicles), dtype=np.float64, count=4 * m).reshape(m, 4)
        masks = _KindMasks(code_of)
        o = np.fromiter(chain.from_iterable(
            (*x.pickup, *x.dropoff, x.payload_kg, x.passengers, x.priority, x.deadline, masks[x.kinds],
             1.0 if x.assigned_to or x.excluded else 0.0)
            for x in orders), dtype=np.float64, count=10 * n).reshape(n, 10)
        self.v_code = v[:, 0].astype(np.int64)
        self.v_battery = v[:, 3]
        self.plane = LocalPlane.around(o[:, 0], o[:, 1])
        self.P = self.plane.xy(o[:, 0], o[:, 1])
        self.D = self.plane.xy(o[:, 2], o[:, 3])
        self.V = self.plane.xy(v[:, 1], v[:, 2])
        # Contiguous coordinates for the per-pair distances (the round's hottest arithmetic).
        self.px, self.py = self.P[:, 0].copy(), self.P[:, 1].copy()
        self.dx, self.dy = self.D[:, 0].copy(), self.D[:, 1].copy()
        self.vx, self.vy = self.V[:, 0].copy(), self.V[:, 1].copy()
        self.trip = np.hypot(self.dx - self.px, self.dy - self.py)
        # Positions along a Z-order curve: the solver numbers its rows and columns by them.
        origin = (min(self.px.min(initial=np.inf), self.vx.min(initial=np.inf)),
                  min(self.py.min(initial=np.inf), self.vy.min(initial=np.inf)))
        self.order_rank = _morton(self.px, self.py, origin)
        self.vehicle_rank = _morton(self.vx, self.vy, origin)
        self.payload = o[:, 4]
        self.seats = o[:, 5]
        self.priority = o[:, 6]
        self.deadline = o[:, 7]
        self.allowed = o[:, 8].astype(np.int64)
        self.current = np.full(n, -1, dtype=np.int64)
        excluded: list[tuple[int, int]] = []
        if o[:, 9].any():
            index_of = {v.vehicle_id: i for i, v in enumerate(vehicles)}
            self.current[:] = [index_of.get(x.assigned_to, -1) if x.assigned_to else -1 for x in orders]
            excluded = [(i, index_of[vid]) for i, x in enumerate(orders) for vid in x.excluded if vid in index_of]
        self.excluded_pairs = np.array([i * (self.m + 1) + j for i, j in excluded], dtype=np.int64)
        self.zones = [PlanePolygon(self.plane, z.polygon) for z in matcher.settings.no_fly_zones]
        # An order whose own leg crosses a zone can go by no flying vehicle, whoever serves it.
        self.trip_no_fly = np.zeros(len(orders), dtype=bool)
        for zone in self.zones:
            self.trip_no_fly |= zone.touched_by(self.P, self.D)
        self._trees: dict[int, tuple[cKDTree, Ints]] = {}
        for code in range(len(matcher.kind_names)):
            idx = np.flatnonzero(self.v_code == code)
            if len(idx):
                self._trees[code] = (cKDTree(self.V[idx]), idx)

    def candidates(self, order_idx: Ints, k: int) -> tuple[Ints, Ints]:
        """``(rows, cols)``: the ``k`` nearest vehicles of each allowed kind, plus each current assignment."""
        rows: list[Ints] = []
        cols: list[Ints] = []
        for code, (tree, idx) in self._trees.items():
            mine = order_idx[(self.allowed[order_idx] >> code) & 1 == 1]
            if not len(mine):
                continue
            kk = min(k, len(idx))
            nearest = self._query(tree, self.P[mine], kk)
            rows.append(np.repeat(mine, kk))
            cols.append(idx[nearest.ravel()])
        held = order_idx[self.current[order_idx] >= 0]
        rows.append(held)
        cols.append(self.current[held])
        return np.concatenate(rows), np.concatenate(cols)

    def first_pairs(self, k: int, per_vehicle: int) -> tuple[Ints, Ints]:
        """``(rows, cols)``, each pair once: every order's ``k`` nearest vehicles of each kind it allows,
        every vehicle's ``per_vehicle`` nearest orders among those that allow its kind, and every current
        assignment.

        Most of a vehicle's nearest orders already have it among their own nearest vehicles; those pairs
        are found by comparing with each order's row of candidates, without sorting the round's pairs.
        """
        n = len(self.P)
        rows: list[Ints] = []
        cols: list[Ints] = []
        # Per kind: each order's row in that kind's (orders, k) candidate matrix, and the matrix.
        found: dict[int, tuple[Ints, Ints]] = {}
        reverse: dict[int, tuple[Ints, Ints]] = {}
        for code, (tree, idx) in self._trees.items():
            mine = np.flatnonzero((self.allowed >> code) & 1 == 1)
            if not len(mine):
                continue
            kk = min(k, len(idx))
            nearest = idx[self._query(tree, self.P[mine], kk)]
            at = np.full(n, -1, dtype=np.int64)
            at[mine] = np.arange(len(mine))
            found[code] = (at, nearest)
            rows.append(np.repeat(mine, kk))
            cols.append(nearest.ravel())
            if per_vehicle <= 0:
                continue
            # The orders that allow this kind are the same ``mine``: their nearest to each vehicle.
            kv = min(per_vehicle, len(mine))
            near_orders = mine[self._query(cKDTree(self.P[mine]), self.V[idx], kv)]
            v_at = np.full(self.m, -1, dtype=np.int64)
            v_at[idx] = np.arange(len(idx))
            reverse[code] = (v_at, near_orders)
            r_rows, r_cols = near_orders.ravel(), np.repeat(idx, kv)
            new = ~(nearest[at[r_rows]] == r_cols[:, None]).any(axis=1)
            rows.append(r_rows[new])
            cols.append(r_cols[new])
        held = np.flatnonzero(self.current >= 0)
        if len(held):
            vehicle = self.current[held]
            kind = self.v_code[vehicle]
            seen = np.zeros(len(held), dtype=bool)
            for c in np.unique(kind[kind >= 0]).tolist():
                here = np.flatnonzero(kind == c)
                o, v = held[here], vehicle[here]
                if c in found:
                    at, nearest = found[c]
                    seen[here] |= (at[o] >= 0) & (nearest[np.maximum(at[o], 0)] == v[:, None]).any(axis=1)
                if c in reverse:
                    v_at, near_orders = reverse[c]
                    seen[here] |= (near_orders[v_at[v]] == o[:, None]).any(axis=1)
            rows.append(held[~seen])
            cols.append(vehicle[~seen])
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(rows), np.concatenate(cols)

    def orders_near(self, vehicle_idx: Ints, k: int) -> tuple[Ints, Ints]:
        """``(rows, cols)``: the ``k`` nearest orders (among those that allow its kind) of each vehicle."""
        rows: list[Ints] = []
        cols: list[Ints] = []
        for code in self._trees if k > 0 else ():
            mine = np.flatnonzero((self.allowed >> code) & 1 == 1)
            here = vehicle_idx[self.v_code[vehicle_idx] == code]
            if not len(mine) or not len(here):
                continue
            kv = min(k, len(mine))
            rows.append(mine[self._query(cKDTree(self.P[mine]), self.V[here], kv)].ravel())
            cols.append(np.repeat(here, kv))
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(rows), np.concatenate(cols)

    def dense_assignment(self, order_idx: Ints, vehicle_idx: Ints, dummy: Floats) -> tuple[Ints, Ints, Ints]:
        """The exact assignment of ``order_idx`` to ``vehicle_idx`` over every pair: for each order its
        vehicle or -1, and the pairs weighed (rows) with why each is infeasible (-1 if feasible).

        Solved on the feasible pairs only (LAPJVsp): a dense matrix with the others at infinity took two
        and a half times as long (1,000 x 1,000, supply short).
        """
        n, m = len(order_idx), len(vehicle_idx)
        rows, cols = np.repeat(order_idx, m), np.tile(vehicle_idx, n)
        cost, why = self.pair_costs(rows, cols)
        ok = why < 0
        local_o, local_v = np.repeat(np.arange(n), m)[ok], np.tile(np.arange(m), n)[ok]
        got = _sparse_assignment(n, m, local_o, local_v, cost[ok], dummy[order_idx],
                                 order_rank=self.order_rank[order_idx], vehicle_rank=self.vehicle_rank[vehicle_idx])
        vehicle_of = np.full(n, -1, dtype=np.int64)
        vehicle_of[got >= 0] = vehicle_idx[got[got >= 0]]
        return vehicle_of, rows, why

    def _query(self, tree: cKDTree, points: Floats, k: int) -> Ints:
        """Indices into ``tree`` of the ``k`` nearest to each point, as a (points, k) array."""
        _, nearest = tree.query(points, k=k, workers=self.mt.settings.search_threads or -1)
        out: Ints = np.asarray(nearest, dtype=np.int64).reshape(len(points), k)
        return out

    def eta_of(self, rows: Ints, cols: Ints) -> Floats:
        code = self.v_code[cols]
        dist = np.hypot(self.vx[cols] - self.px[rows], self.vy[cols] - self.py[rows])
        return self._eta(dist, self.mt._speed[code], self.mt._detour[code])

    def _eta(self, distance: Floats, speed: Floats, detour: Floats) -> Floats:
        eta: Floats = distance * detour / speed
        model = self.mt.eta_model
        if model is not None:
            eta = model.predict(features(distance, speed, detour, self.now), eta)
        return eta

    def pair_costs(self, rows: Ints, cols: Ints) -> tuple[Floats, Ints]:
        """Each pair's cost, and why it is infeasible (an :class:`Infeasible` value) or -1 if feasible."""
        mt = self.mt
        why = np.full(len(rows), -1, dtype=np.int64)
        code = self.v_code[cols]
        known = code >= 0
        code = np.where(known, code, 0)
        allowed = known & (((self.allowed[rows] >> code) & 1) == 1)
        why[~allowed] = Infeasible.NO_VEHICLE
        fits = (mt._payload[code] >= self.payload[rows]) & (mt._seats[code] >= self.seats[rows])
        why[(why < 0) & ~fits] = Infeasible.CAPACITY
        vx, vy = self.vx[cols], self.vy[cols]
        to_pickup = _distance(vx, vy, self.px[rows], self.py[rows])
        detour, speed = mt._detour[code], mt._speed[code]
        eta = self._eta(to_pickup, speed, detour)
        why[(why < 0) & (eta > mt.settings.max_pickup_s)] = Infeasible.TOO_FAR
        trip = self.trip[rows]
        done_at = self.now + eta + trip * detour / speed
        why[(why < 0) & (done_at > self.deadline[rows])] = Infeasible.DEADLINE
        # The battery only of kinds with a range, and only where nothing else ruled the pair out already.
        ri = np.flatnonzero((why < 0) & (mt._range[code] > 0))
        if len(ri):
            r_rows, r_code = rows[ri], code[ri]
            back = _distance(vx[ri], vy[ri], self.dx[r_rows], self.dy[r_rows])
            need = (to_pickup[ri] + trip[ri] + back) * detour[ri]
            usable = mt._range[r_code] * (self.v_battery[cols[ri]] - mt.settings.battery_reserve_pct) / 100.0
            why[ri[~(need <= usable)]] = Infeasible.BATTERY  # an unknown battery (NaN) is not enough
        flying = (why < 0) & mt._flies[code]
        if self.zones and flying.any():
            fi = np.flatnonzero(flying)
            blocked = self.trip_no_fly[rows[fi]].copy()
            for zone in self.zones:
                blocked |= zone.touched_by(self.V[cols[fi]], self.P[rows[fi]])
                blocked |= zone.touched_by(self.D[rows[fi]], self.V[cols[fi]])
            why[fi[blocked]] = Infeasible.NO_FLY
        if len(self.excluded_pairs):
            why[(why < 0) & np.isin(rows * (self.m + 1) + cols, self.excluded_pairs)] = Infeasible.DECLINED
        cost = eta - np.where(self.current[rows] == cols, mt.settings.reassign_gain_s, 0.0)
        return cost, why
