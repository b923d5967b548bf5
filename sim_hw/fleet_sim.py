"""A fleet of taxis serving a simulated city's orders, faster than real time, with or without repositioning.

Time advances in steps (30 s by default). Orders arrive per H3 cell from :class:`DemandCity` (a point in the
cell, a drop-off where the city's trips go at that hour: :meth:`DemandCity.trip_end`) and wait up to
``patience_s`` for a vehicle, after which they are lost. Every step the dispatch matcher
(:class:`coordinator.dispatch.matcher.Matcher`) assigns waiting orders to idle vehicles; a vehicle drives to
the pickup, then the trip, then is idle where it dropped off. With repositioning, every
``reposition_every_s`` the planner (:func:`coordinator.supply.reposition.plan_moves`) moves idle vehicles
toward the cells the forecast expects orders in; each driver accepts the offer with the scripted driver's
probability (:class:`sim_hw.driver_terminal.DriverBehaviour`), and a vehicle on its way is still idle for
dispatch. Distances are straight lines x the taxi's detour factor, at its speed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import h3
import numpy as np

from coordinator.config import DispatchSettings, SupplySettings
from coordinator.dispatch.matcher import DispatchOrder, DispatchVehicle, Matcher
from coordinator.supply.reposition import IdleVehicle, plan_moves
from protocols._geo import great_circle_m
from protocols._terminal import Offer, Point
from sim_hw.city_demand import offset
from sim_hw.demand_history import EPOCH, SLOT_S, DemandCity
from sim_hw.driver_terminal import DriverBehaviour

Forecast = Callable[[int], dict[str, float]]
"""Slot -> expected orders per cell over the next 30 minutes."""


@dataclass(slots=True)
class SimOrder:
    order_id: int
    placed: float
    pickup: tuple[float, float]
    dropoff: tuple[float, float]
    picked_up: float | None = None
    lost: bool = False


@dataclass(slots=True)
class SimVehicle:
    vehicle_id: str
    origin: tuple[float, float]
    target: tuple[float, float]
    left_at: float
    arrives_at: float
    busy_until: float = 0.0
    """Serving an order until then (to the pickup and the trip)."""
    reposition_km: float = 0.0
    pickup_km: float = 0.0
    trip_km: float = 0.0
    owed: float = 0.0
    """Incentive for the move under way: earned on arrival, forfeited if dispatch takes the car first."""

    def position(self, now: float) -> tuple[float, float]:
        if now >= self.arrives_at or self.arrives_at <= self.left_at:
            return self.target
        f = (now - self.left_at) / (self.arrives_at - self.left_at)
        return (self.origin[0] + f * (self.target[0] - self.origin[0]),
                self.origin[1] + f * (self.target[1] - self.origin[1]))


@dataclass(slots=True)
class SimResult:
    orders: int = 0
    served: int = 0
    pickup_s: list[float] = field(default_factory=list)
    wait_s: list[float] = field(default_factory=list)
    """From placing to assignment (the rest of the pickup time is the drive)."""
    vehicle_hours: float = 0.0
    empty_km: float = 0.0
    total_km: float = 0.0
    offers: int = 0
    accepted: int = 0
    incentive_spent: float = 0.0

    def summary(self) -> dict[str, float]:
        waits = sorted(self.pickup_s)
        return {
            "orders": self.orders, "served_share": round(self.served / self.orders, 4) if self.orders else 0.0,
            "mean_pickup_s": round(float(np.mean(waits)), 1) if waits else 0.0,
            "p90_pickup_s": round(waits[int(0.9 * (len(waits) - 1))], 1) if waits else 0.0,
            "mean_wait_s": round(float(np.mean(self.wait_s)), 1) if self.wait_s else 0.0,
            "orders_per_vehicle_hour": round(self.served / self.vehicle_hours, 3) if self.vehicle_hours else 0.0,
            "empty_km_share": round(self.empty_km / self.total_km, 4) if self.total_km else 0.0,
            "offers": self.offers, "accepted": self.accepted, "incentive_spent": round(self.incentive_spent, 1)}


class FleetSimulation:
    def __init__(self, city: DemandCity, *, vehicles: int, seed: int, start_slot: int, slots: int,
                 forecast: Forecast | None, step_s: float = 30.0, patience_s: float = 600.0,
                 reposition_every_s: float = 300.0, supply: SupplySettings | None = None,
                 dispatch: DispatchSettings | None = None) -> None:
        self.city = city
        self.rng = random.Random(seed)
        self.start_slot = start_slot
        self.slots = slots
        self.forecast = forecast
        self.step_s = step_s
        self.patience_s = patience_s
        self.reposition_every_s = reposition_every_s
        self.dispatch = dispatch or DispatchSettings()
        self.supply = supply or SupplySettings(reposition_interval_s=reposition_every_s)
        self.profile = self.dispatch.kinds["taxi"]
        self.matcher = Matcher(self.dispatch)
        self.driver = DriverBehaviour()
        self.t0 = float(start_slot * SLOT_S)
        counts = city.history(slots, start_slot=start_slot)
        self.arrivals: list[SimOrder] = []
        for s in range(slots):
            for cell_index in np.flatnonzero(counts[s]):
                lat, lon = h3.cell_to_latlng(city.cells[cell_index])
                for _ in range(int(counts[s, cell_index])):
                    placed = self.t0 + s * SLOT_S + self.rng.uniform(0, SLOT_S)
                    pickup = offset((lat, lon), self.rng.gauss(0, 250), self.rng.gauss(0, 250))
                    dropoff = city.trip_end(EPOCH + placed, pickup, self.rng)
                    self.arrivals.append(SimOrder(len(self.arrivals), placed, pickup, dropoff))
        self.arrivals.sort(key=lambda o: o.placed)
        home = [h3.cell_to_latlng(c) for c in city.cells]
        self.fleet = [SimVehicle(f"taxi-{i}", p, p, self.t0, self.t0)
                      for i, p in enumerate(self.rng.choice(home) for _ in range(vehicles))]

    def _travel_s(self, a: tuple[float, float], b: tuple[float, float]) -> float:
        return great_circle_m(*a, *b) * self.profile.detour_factor / self.profile.speed_m_s

    def run(self) -> SimResult:
        try:
            return self._run()
        finally:
            self.matcher.close()

    def _run(self) -> SimResult:
        result = SimResult(orders=len(self.arrivals))
        end = self.t0 + self.slots * SLOT_S
        waiting: list[SimOrder] = []
        arrived = 0
        now = self.t0
        next_reposition = self.t0
        while now < end:
            while arrived < len(self.arrivals) and self.arrivals[arrived].placed <= now:
                waiting.append(self.arrivals[arrived])
                arrived += 1
            for o in waiting:
                if now - o.placed > self.patience_s:
                    o.lost = True
            waiting = [o for o in waiting if not o.lost]
            idle = [v for v in self.fleet if v.busy_until <= now]
            if waiting and idle:
                self._dispatch(waiting, idle, now, result)
                waiting = [o for o in waiting if o.picked_up is None]
            if self.forecast is not None and now >= next_reposition:
                self._reposition([v for v in self.fleet if v.busy_until <= now], now, result)
                next_reposition = now + self.reposition_every_s
            now += self.step_s
        result.vehicle_hours = len(self.fleet) * (end - self.t0) / 3600
        for v in self.fleet:
            if v.arrives_at <= end:
                self._pay(v, result)
            result.empty_km += v.pickup_km + v.reposition_km
            result.total_km += v.pickup_km + v.reposition_km + v.trip_km
        return result

    def _dispatch(self, waiting: list[SimOrder], idle: list[SimVehicle], now: float, result: SimResult) -> None:
        positions = {v.vehicle_id: v.position(now) for v in idle}
        match = self.matcher.match(
            [DispatchOrder(str(o.order_id), o.pickup, o.dropoff, kinds=frozenset({"taxi"})) for o in waiting],
            [DispatchVehicle(v.vehicle_id, "taxi", *positions[v.vehicle_id]) for v in idle], now)
        by_order = {str(o.order_id): o for o in waiting}
        by_vehicle = {v.vehicle_id: v for v in idle}
        for a in match.assignments:
            o, v = by_order[a.order_id], by_vehicle[a.vehicle_id]
            here = positions[v.vehicle_id]
            if now < v.arrives_at:  # stopped on its way somewhere: that leg ends here, unpaid
                v.reposition_km -= great_circle_m(*here, *v.target) * self.profile.detour_factor / 1000
                v.owed = 0.0
            else:
                self._pay(v, result)
            to_pickup = self._travel_s(here, o.pickup)
            trip = self._travel_s(o.pickup, o.dropoff)
            o.picked_up = now + to_pickup
            result.served += 1
            result.pickup_s.append(o.picked_up - o.placed)
            result.wait_s.append(now - o.placed)
            v.pickup_km += great_circle_m(*here, *o.pickup) * self.profile.detour_factor / 1000
            v.trip_km += great_circle_m(*o.pickup, *o.dropoff) * self.profile.detour_factor / 1000
            v.busy_until = now + to_pickup + trip
            v.origin, v.target, v.left_at, v.arrives_at = o.dropoff, o.dropoff, v.busy_until, v.busy_until

    @staticmethod
    def _pay(v: SimVehicle, result: SimResult) -> None:
        result.incentive_spent += v.owed
        v.owed = 0.0

    def _reposition(self, idle: list[SimVehicle], now: float, result: SimResult) -> None:
        assert self.forecast is not None
        slot = int(now // SLOT_S)
        expected = self.forecast(slot)
        at = {v.vehicle_id: v.position(now) for v in idle}
        for v in idle:
            if now >= v.arrives_at:
                self._pay(v, result)
        resting = [IdleVehicle(v.vehicle_id, "taxi", *at[v.vehicle_id]) for v in idle if now >= v.arrives_at]
        plan = plan_moves(resting, expected, self.supply, self.dispatch, self.city.resolution)
        by_id = {v.vehicle_id: v for v in idle}
        for move in plan.moves:
            result.offers += 1
            offer = Offer(id=move.vehicle_id, kind="reposition", title="", pickup=Point(move.lat, move.lon),
                          distance_m=move.travel_s * self.profile.speed_m_s, incentive=move.incentive,
                          expires_at=now + 60)
            if self.rng.random() >= self.driver.accept_probability(offer):
                continue
            result.accepted += 1
            v = by_id[move.vehicle_id]
            v.owed = move.incentive
            here = at[v.vehicle_id]
            v.origin, v.target, v.left_at = here, (move.lat, move.lon), now
            v.arrives_at = now + self._travel_s(here, v.target)
            v.reposition_km += great_circle_m(*here, *v.target) * self.profile.detour_factor / 1000
