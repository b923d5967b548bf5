"""Orders placed per 15-minute slot and H3 cell over the forecast's window, kept up to date incrementally.

The demand forecast looks back :data:`~coordinator.supply.forecast.MAX_WEEKS` weeks. Reading and decoding
that whole order history again at every forecast (every ``supply.forecast_refresh_s``, in the process that
serves the REST API) grows with the business: a few hundred orders an hour is a few hundred thousand orders
every five minutes. The history reads the window once, then only the orders placed since its last read, and
keeps nothing but counts.

Order ids sort by creation time, but coordinators' clocks differ a little: each read goes back
:data:`CLOCK_SKEW_S` before the newest order already counted, and the ids counted within that margin are
remembered so that none is counted twice.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping

import h3

from coordinator.orders import Order
from coordinator.store import FleetStore
from coordinator.supply.forecast import MAX_WEEKS, SLOT_S, SLOTS_PER_WEEK

CLOCK_SKEW_S = 300.0
WINDOW_SLOTS = MAX_WEEKS * SLOTS_PER_WEEK + 8
"""Slots kept: the forecast's weeks and the hour before them (its features read up to four slots back)."""


class DemandHistory:
    """``counts(resolution)[slot][cell]``: orders placed in that 15-minute slot (Unix time // 900) whose
    pickup is in that cell, for each of ``resolutions``."""

    def __init__(self, resolutions: Iterable[int]) -> None:
        self.resolutions = tuple(resolutions)
        self._counts: dict[int, dict[int, Counter[str]]] = {res: {} for res in self.resolutions}
        self._newest = -math.inf
        self._recent: dict[str, float] = {}
        """Ids of the orders counted within CLOCK_SKEW_S of the newest, with their creation times."""
        self.orders_read = 0
        """Orders taken from the store so far."""

    def counts(self, resolution: int) -> Mapping[int, Counter[str]]:
        return self._counts[resolution]

    def add(self, orders: Iterable[Order]) -> None:
        """Count ``orders`` (those counted already are skipped)."""
        for order in orders:
            if order.order_id in self._recent:
                continue
            self._recent[order.order_id] = order.created_at
            self._newest = max(self._newest, order.created_at)
            slot = int(order.created_at // SLOT_S)
            for res in self.resolutions:
                cell = h3.latlng_to_cell(order.pickup.lat, order.pickup.lon, res)
                self._counts[res].setdefault(slot, Counter())[cell] += 1
        horizon = self._newest - CLOCK_SKEW_S
        self._recent = {oid: at for oid, at in self._recent.items() if at >= horizon}

    def update(self, store: FleetStore, now: float) -> None:
        """Read the orders placed since the last update (the whole window the first time) and drop the
        slots that left the window."""
        first = self._newest == -math.inf
        since = now - WINDOW_SLOTS * SLOT_S if first else self._newest - CLOCK_SKEW_S
        # Since the last read a handful of orders, usually: small pages first.
        new = list(store.orders_since(since, first_page=1000 if first else 50))
        self.orders_read += len(new)
        self.add(new)
        oldest = int(now // SLOT_S) - WINDOW_SLOTS
        for by_slot in self._counts.values():
            for slot in [s for s in by_slot if s < oldest]:
                del by_slot[slot]
