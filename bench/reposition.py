"""Repositioning in simulation: the same city, orders and fleet with and without it, several seeds.

For each seed, a simulated city (``sim_hw.demand_history``: daily and weekly cycles, hotspots that move from
morning to evening places, trips that take commuters to work in the morning) has four weeks of order history;
then a morning (06:00-12:00 on a weekday) is served by a taxi fleet (``sim_hw.fleet_sim``: the dispatch matcher
every 30 s, no taxi sent further than 10 minutes away, orders lost after 10 minutes without one), three times
with the same orders:

- ``without``: idle taxis wait where their last trip ended;
- ``with``: every ``--interval-s`` the planner moves idle taxis toward the cells the forecast expects orders in (the
  coordinator's fallback forecast: the seasonal average of the four past weeks, which
  ``scripts/train_demand_model.py``'s model matches within a point), drivers accepting or declining offers
  with incentives as the scripted driver does;
- ``perfect``: the same with the true expected demand, for reference.

The default city is the one the demand model is trained on (150,000 orders a day) and its fleet, 4,000 taxis,
is short where the orders are: without repositioning two in five of the morning's orders find no taxi within
reach, while the taxis that brought commuters to work wait there. Trips in any direction instead
(``--commute-share 0``) leave few taxis far from the orders, and repositioning then shortens pickups but
can hardly serve more.

Reported per variant: share of orders served, mean and p90 pickup time (from placing to pickup; ``mean_wait_s``
of it until a taxi is assigned, the rest its drive; and over the orders served with and without repositioning
alike, ``pickup_reduction_both_served_pct``), orders per
vehicle-hour, empty-km share (driving to pickups and to reposition, over all driving), incentive spent; and the
forecast's WAPE per cell per 15 minutes over the simulated mornings against the seasonal-naive baseline (the
same slot a week before), at the forecast's resolution on cells with at least ``--busy`` orders per 15
minutes (and on the planner's resolution-8 cells, ``*_res8``). Targets: mean pickup time >= 20 % lower and
share served >= 4 points higher with repositioning.

Last line: {"pickup_reduction_pct", "served_gain_points", "empty_km_share_with", "empty_km_share_without",
"forecast_wape", "baseline_wape", ...}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import h3
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coordinator.config import DispatchSettings, SupplySettings
from coordinator.supply.forecast import SLOTS_PER_WEEK, wape
from sim_hw.demand_history import DemandCity
from sim_hw.fleet_sim import FleetSimulation

WEEKS = 4
START = WEEKS * SLOTS_PER_WEEK + 24  # Monday of week 5, 06:00
FORECAST_RESOLUTION = SupplySettings().forecast_resolution


def seasonal_average(history: np.ndarray, slot: int) -> np.ndarray:
    """The coordinator's fallback forecast for ``slot``: the same slot of each of the past weeks, averaged."""
    mean: np.ndarray = np.mean([history[slot - w * SLOTS_PER_WEEK] for w in range(1, WEEKS + 1)], axis=0)
    return mean


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    def fresh() -> tuple[DemandCity, np.ndarray]:
        city = DemandCity(seed, resolution=8, orders_per_day=args.orders_per_day, commute_share=args.commute_share)
        return city, city.history(WEEKS * SLOTS_PER_WEEK)

    def seasonal(history: np.ndarray, cells: list[str]) -> Any:
        def forecast(slot: int) -> dict[str, float]:
            mean = np.sum([seasonal_average(history, s) for s in range(slot, slot + args.horizon_slots)], axis=0)
            return {c: float(v) for c, v in zip(cells, mean, strict=True) if v > 0}
        return forecast

    def perfect(city: DemandCity) -> Any:
        def forecast(slot: int) -> dict[str, float]:
            expected = np.sum([city.expected(s) for s in range(slot, slot + args.horizon_slots)], axis=0)
            return {c: float(v) for c, v in zip(city.cells, expected, strict=True) if v > 0}
        return forecast

    out: dict[str, Any] = {}
    pickups: dict[str, np.ndarray] = {}
    for variant in ("without", "with", "perfect"):
        city, history = fresh()
        forecast = None if variant == "without" else (
            seasonal(history, city.cells) if variant == "with" else perfect(city))
        supply = SupplySettings(reposition_interval_s=args.interval_s,
                                incentive_budget_per_hour=args.budget_per_vehicle_hour * args.vehicles)
        sim = FleetSimulation(city, vehicles=args.vehicles, seed=seed, start_slot=START, slots=args.hours * 4,
                              forecast=forecast, supply=supply, reposition_every_s=args.interval_s,
                              dispatch=DispatchSettings(max_pickup_s=args.max_pickup_s))
        started = time.perf_counter()
        out[variant] = sim.run().summary()
        out[variant]["run_s"] = round(time.perf_counter() - started, 1)
        pickups[variant] = np.array([np.nan if o.picked_up is None else o.picked_up - o.placed
                                     for o in sim.arrivals])
        print(f"seed {seed} {variant:8s} {out[variant]}", flush=True)
    # Orders served only with repositioning are the hard ones (far from any taxi): they lengthen its mean
    # pickup. The orders both runs served compare like with like.
    both = ~np.isnan(pickups["without"]) & ~np.isnan(pickups["with"])
    out["both_served_pickup_s"] = {v: round(float(pickups[v][both].mean()), 1) for v in ("without", "with")}
    # The forecast's accuracy over the simulated mornings (same draws as the runs above).
    city, history = fresh()
    actual = city.history(args.hours * 4, start_slot=START)
    predicted = np.array([seasonal_average(history, START + i) for i in range(args.hours * 4)])
    naive = np.array([history[START + i - SLOTS_PER_WEEK] for i in range(args.hours * 4)])
    # At the forecast's own resolution (supply.forecast_resolution) on cells with real demand, as
    # scripts/train_demand_model.py measures it; and on the planner's finer cells, where the noise is larger.
    parents = sorted({h3.cell_to_parent(c, FORECAST_RESOLUTION) for c in city.cells})
    into = np.zeros((len(city.cells), len(parents)))
    into[np.arange(len(city.cells)), [parents.index(h3.cell_to_parent(c, FORECAST_RESOLUTION))
                                      for c in city.cells]] = 1.0
    for suffix, (a, f, n, threshold) in {
            "": (actual @ into, predicted @ into, naive @ into, args.busy),
            "_res8": (actual, predicted, naive, args.busy_res8)}.items():
        a, f, n = (x.astype(np.float64) for x in (a, f, n))
        busy = a.mean(axis=0) >= threshold
        out[f"forecast_wape{suffix}"] = wape(a[:, busy], f[:, busy])
        out[f"baseline_wape{suffix}"] = wape(a[:, busy], n[:, busy])
        out[f"busy_cells{suffix}"] = int(busy.sum())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="cities to run, each with its own seed (default 3)")
    parser.add_argument("--vehicles", type=int, default=4000, help="taxis (default 4,000)")
    parser.add_argument("--orders-per-day", type=float, default=150_000.0,
                        help="the city's orders on an average weekday (default 150,000)")
    parser.add_argument("--commute-share", type=float, default=0.6,
                        help="share of trips to work in the morning, home in the evening; the rest go 1-5 km in any "
                             "direction (default 0.6; 0: every trip does)")
    parser.add_argument("--hours", type=int, default=6, help="simulated hours from 06:00 (default 6)")
    parser.add_argument("--horizon-slots", type=int, default=2,
                        help="15-minute slots of forecast the planner aims at (default 2: 30 minutes)")
    parser.add_argument("--interval-s", type=float, default=SupplySettings().reposition_interval_s,
                        help="supply.reposition_interval_s: seconds between plans (default: the coordinator's, "
                             "%(default)g)")
    parser.add_argument("--max-pickup-s", type=float, default=600.0,
                        help="dispatch.max_pickup_s: no taxi further than this is sent (default 600)")
    parser.add_argument("--budget-per-vehicle-hour", type=float, default=8.0,
                        help="supply.incentive_budget_per_hour per taxi (default 8.0; the bench reports what "
                             "is spent, and per order it adds)")
    parser.add_argument("--busy", type=float, default=10.0,
                        help=f"orders per 15 min that make a cell at the forecast's resolution ({FORECAST_RESOLUTION}) "
                             "count for WAPE (default 10, as scripts/train_demand_model.py)")
    parser.add_argument("--busy-res8", type=float, default=2.0,
                        help="the same for the planner's resolution-8 cells (default 2)")
    args = parser.parse_args()
    seeds = [run_seed(seed, args) for seed in range(1, args.seeds + 1)]

    def mean(variant: str, key: str) -> float:
        return float(statistics.mean(s[variant][key] for s in seeds))

    pickup_reduction = 100 * (mean("without", "mean_pickup_s") - mean("with", "mean_pickup_s")) / mean(
        "without", "mean_pickup_s")
    served_gain = 100 * (mean("with", "served_share") - mean("without", "served_share"))
    summary = {
        "pickup_reduction_pct": round(pickup_reduction, 2),
        "served_gain_points": round(served_gain, 2),
        "empty_km_share_with": round(mean("with", "empty_km_share"), 4),
        "empty_km_share_without": round(mean("without", "empty_km_share"), 4),
        "forecast_wape": round(statistics.mean(s["forecast_wape"] for s in seeds), 4),
        "baseline_wape": round(statistics.mean(s["baseline_wape"] for s in seeds), 4),
        "perfect_pickup_reduction_pct": round(100 * (mean("without", "mean_pickup_s") - mean(
            "perfect", "mean_pickup_s")) / mean("without", "mean_pickup_s"), 2),
        "perfect_served_gain_points": round(100 * (mean("perfect", "served_share") - mean(
            "without", "served_share")), 2),
        "served_share_with": round(mean("with", "served_share"), 4),
        "served_share_without": round(mean("without", "served_share"), 4),
        "mean_pickup_s_with": round(mean("with", "mean_pickup_s"), 1),
        "mean_pickup_s_without": round(mean("without", "mean_pickup_s"), 1),
        "pickup_reduction_both_served_pct": round(100 * (1 - statistics.mean(
            s["both_served_pickup_s"]["with"] for s in seeds) / statistics.mean(
            s["both_served_pickup_s"]["without"] for s in seeds)), 2),
        "mean_wait_s_with": round(mean("with", "mean_wait_s"), 1),
        "mean_wait_s_without": round(mean("without", "mean_wait_s"), 1),
        "forecast_wape_res8": round(statistics.mean(s["forecast_wape_res8"] for s in seeds), 4),
        "baseline_wape_res8": round(statistics.mean(s["baseline_wape_res8"] for s in seeds), 4),
        "incentive_spent_with": round(mean("with", "incentive_spent"), 1),
        "incentive_per_order_added": round(mean("with", "incentive_spent") / max(1.0, (mean(
            "with", "served_share") - mean("without", "served_share")) * mean("with", "orders")), 2),
        "vehicles": args.vehicles, "orders_per_day": args.orders_per_day, "hours": args.hours,
        "seeds": seeds}
    print(f"mean pickup {pickup_reduction:.1f} % lower ({summary['pickup_reduction_both_served_pct']:.1f} % on the "
          f"orders served either way), {served_gain:.1f} points more orders served with repositioning; "
          f"empty km {summary['empty_km_share_without']:.1%} -> {summary['empty_km_share_with']:.1%}; "
          f"perfect forecast: {summary['perfect_pickup_reduction_pct']:.1f} % / "
          f"{summary['perfect_served_gain_points']:.1f} points; forecast WAPE {summary['forecast_wape']:.1%} "
          f"(seasonal naive {summary['baseline_wape']:.1%}); incentives {summary['incentive_spent_with']:.0f}, "
          f"{summary['incentive_per_order_added']:.2f} per order served in addition", flush=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
