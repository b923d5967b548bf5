"""A seeded city's order history, to train and test demand forecasts on: orders per H3 cell per 15 minutes.

Demand follows a daily cycle (a morning and an evening peak, quiet nights) and a weekly one (weekdays busier
than weekends, a late Friday and Saturday); it concentrates around hotspots that move between morning (homes
and stations, where people set out from) and evening (nightlife, shopping); and declared
events (a concert, a match) add a surge around their place in their time window. Counts are Poisson draws
around the expected rate, so a perfect forecast still misses by the noise.

Trips have a direction, as in a real city (:meth:`DemandCity.trip_end`): a commuting share goes to the
workplaces in the morning and back to the homes in the evening, the rest 1-5 km in any direction. So cars
that only wait where their last trip ended gather where few trips start: the mismatch repositioning is for.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import h3
import numpy as np
import numpy.typing as npt

from sim_hw.city_demand import CITY, offset

SLOT_S = 900
SLOTS_PER_DAY = 96
SLOTS_PER_WEEK = 7 * SLOTS_PER_DAY
EPOCH = 1_798_761_600.0  # a Monday, 00:00 UTC


@dataclass(frozen=True, slots=True)
class DemandEvent:
    lat: float
    lon: float
    start: float
    end: float
    extra_orders: float
    """Orders the event adds over its window, around its place."""


@dataclass(frozen=True, slots=True)
class Hotspot:
    lat: float
    lon: float
    spread_m: float
    weight: float


def daily_profile(hour: float) -> float:
    """Relative demand by hour of day: a morning and an evening peak."""
    return (0.15 + 1.0 * math.exp(-((hour - 8.5) ** 2) / 2.5) + 1.2 * math.exp(-((hour - 18.5) ** 2) / 4.0)
            + 0.5 * math.exp(-((hour - 13) ** 2) / 3.0) + 0.35 * math.exp(-((hour - 23.5) ** 2) / 2.0))


def weekly_factor(day: int, hour: float) -> float:
    """Weekdays busier, weekends quieter, Friday and Saturday nights busier."""
    factor = 1.0 if day < 5 else 0.75
    if day in (4, 5) and hour >= 20:
        factor *= 1.5
    return factor


def evening_weight(hour: float) -> float:
    """How far the day has turned from its morning pattern to its evening one (0 at dawn, 1 at night)."""
    return 1.0 / (1.0 + math.exp(-(hour - 15.0)))


class DemandCity:
    """Expected and sampled demand per H3 cell; the same seed gives the same city and the same history.

    ``commute_share`` of trips go to work in the morning and home in the evening (see :meth:`trip_end`).
    """

    def __init__(self, seed: int, *, resolution: int = 8, orders_per_day: float = 60_000.0,
                 commute_share: float = 0.6) -> None:
        rng = np.random.default_rng(seed)
        self.resolution = resolution
        self.orders_per_day = orders_per_day
        self.commute_share = commute_share
        self._rng = rng

        def spots(n: int, spread: float) -> list[Hotspot]:
            return [Hotspot(*offset(CITY, float(rng.uniform(-7000, 7000)), float(rng.uniform(-7000, 7000))),
                            spread_m=spread, weight=float(rng.uniform(0.5, 1.5))) for _ in range(n)]

        self.morning = spots(5, 900.0)
        self.evening = spots(5, 1200.0)
        # Workplaces: a business district of a few places near the centre. Drawn from a stream of their own,
        # so the order history (and every forecast trained on it) is the same with or without them.
        places = np.random.default_rng([seed, 1])
        self.work = [Hotspot(*offset(CITY, float(places.uniform(-4000, 4000)), float(places.uniform(-4000, 4000))),
                             spread_m=1000.0, weight=float(places.uniform(0.5, 1.5))) for _ in range(3)]
        center = h3.latlng_to_cell(*CITY, resolution)
        self.cells: list[str] = sorted(h3.grid_disk(center, 14 if resolution == 8 else 5))
        self.index = {c: i for i, c in enumerate(self.cells)}
        centres = [h3.cell_to_latlng(c) for c in self.cells]
        self._lat = np.array([p[0] for p in centres])
        self._lon = np.array([p[1] for p in centres])
        self.morning_share = self._share(self.morning)
        self.evening_share = self._share(self.evening)
        self.background = np.full(len(self.cells), 1.0 / len(self.cells))
        # Each day's total, relative, over a week (slot by slot) for normalising orders_per_day.
        week = [daily_profile((s % SLOTS_PER_DAY) / 4) * weekly_factor(s // SLOTS_PER_DAY, (s % SLOTS_PER_DAY) / 4)
                for s in range(SLOTS_PER_WEEK)]
        self._scale = orders_per_day * 7 / sum(week)

    def _share(self, spots: list[Hotspot]) -> npt.NDArray[np.float64]:
        weights = np.zeros(len(self.cells))
        for spot in spots:
            north = np.radians(self._lat - spot.lat) * 6_371_000
            east = np.radians(self._lon - spot.lon) * 6_371_000 * math.cos(math.radians(spot.lat))
            weights += spot.weight * np.exp(-(north ** 2 + east ** 2) / (2 * spot.spread_m ** 2))
        share: npt.NDArray[np.float64] = weights / weights.sum()
        return share

    def expected(self, slot: int, events: Sequence[DemandEvent] = ()) -> npt.NDArray[np.float64]:
        """Expected orders per cell in the 15 minutes of ``slot`` (counted from :data:`EPOCH`)."""
        hour = (slot % SLOTS_PER_DAY) / 4
        day = (slot // SLOTS_PER_DAY) % 7
        total = self._scale * daily_profile(hour) * weekly_factor(day, hour)
        evening = evening_weight(hour)  # hotspots move from morning to evening places
        share = 0.35 * self.background + 0.65 * ((1 - evening) * self.morning_share + evening * self.evening_share)
        rate = total * share
        t0 = EPOCH + slot * SLOT_S
        for event in events:
            overlap = max(0.0, min(event.end, t0 + SLOT_S) - max(event.start, t0))
            if overlap > 0:
                spot = self._share([Hotspot(event.lat, event.lon, 500.0, 1.0)])
                rate = rate + event.extra_orders * overlap / (event.end - event.start) * spot
        return rate

    def trip_end(self, at: float, pickup: tuple[float, float], rng: random.Random) -> tuple[float, float]:
        """Where a trip from ``pickup`` starting ``at`` (Unix time) ends: with ``commute_share``, near a
        workplace in the morning or near a home (a morning hotspot) in the evening; else 1-5 km away in any
        direction."""
        if rng.random() < self.commute_share:
            hour = ((at - EPOCH) % (SLOTS_PER_DAY * SLOT_S)) / 3600
            places = self.morning if rng.random() < evening_weight(hour) else self.work
            place = rng.choices(places, weights=[p.weight for p in places])[0]
            return offset((place.lat, place.lon), rng.gauss(0, place.spread_m), rng.gauss(0, place.spread_m))
        distance, bearing = rng.uniform(1000, 5000), rng.uniform(0, 2 * math.pi)
        return offset(pickup, distance * math.cos(bearing), distance * math.sin(bearing))

    def history(self, slots: int, events: Sequence[DemandEvent] = (), start_slot: int = 0) -> npt.NDArray[np.int64]:
        """Sampled orders, ``[slot, cell]``, for ``slots`` slots from ``start_slot``."""
        out = np.empty((slots, len(self.cells)), dtype=np.int64)
        for i in range(slots):
            out[i] = self._rng.poisson(self.expected(start_slot + i, events))
        return out
