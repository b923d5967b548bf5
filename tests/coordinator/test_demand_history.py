"""The forecast's order counts: read once, then only what is new; never a count twice; the window slides;
and the forecast from them is the forecast from the orders themselves. Against both stores."""

from __future__ import annotations

import random

import h3

from coordinator.orders import Order, OrderEvent, OrderState, Place, new_order_id
from coordinator.store import FleetStore
from coordinator.supply.demand_history import CLOCK_SKEW_S, WINDOW_SLOTS, DemandHistory
from coordinator.supply.forecast import SLOT_S, DemandForecaster
from sim_hw.city_demand import CITY, offset

NOW = 1_800_000_000.0


def place(store: FleetStore, at: float, where: tuple[float, float], order_id: str | None = None) -> Order:
    order = Order(order_id=order_id or new_order_id(at), pickup=Place(*where), dropoff=Place(*offset(where, 800, 0)),
                  ready_at=at, created_at=at, created_by="t", state=OrderState.DELIVERED,
                  history=(OrderEvent(state=OrderState.PENDING, at=at),))
    store.add_order(order)
    return order


def by_hand(orders: list[Order], resolution: int, now: float) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {}
    oldest = int(now // SLOT_S) - WINDOW_SLOTS
    for o in orders:
        slot = int(o.created_at // SLOT_S)
        if slot >= oldest:
            cell = h3.latlng_to_cell(o.pickup.lat, o.pickup.lon, resolution)
            out.setdefault(slot, {}).setdefault(cell, 0)
            out[slot][cell] += 1
    return out


def test_counts_are_read_once_then_only_what_is_new(store: FleetStore) -> None:
    rng = random.Random(3)
    places = [offset(CITY, rng.uniform(-4000, 4000), rng.uniform(-4000, 4000)) for _ in range(12)]
    # Three weeks of history, a few orders an hour, and some older than the window.
    orders = [place(store, NOW - rng.uniform(0, 21 * 86400), rng.choice(places)) for _ in range(1500)]
    orders += [place(store, NOW - (WINDOW_SLOTS + 10) * SLOT_S - rng.uniform(0, 86400), places[0]) for _ in range(40)]
    history = DemandHistory((7, 8))
    history.update(store, NOW)
    assert history.orders_read >= 1500
    assert {s: dict(c) for s, c in history.counts(8).items()} == by_hand(orders, 8, NOW)

    # Ten minutes later: a new order, and one a skewed clock placed "earlier" than the newest counted.
    first_read = history.orders_read
    orders.append(place(store, NOW + 600, places[1]))
    orders.append(place(store, NOW - 120, places[2], order_id=new_order_id(NOW + 601)))
    history.update(store, NOW + 610)
    assert history.orders_read - first_read <= 100, "the orders since the last read (a page), not the history"
    assert {s: dict(c) for s, c in history.counts(7).items()} == by_hand(orders, 7, NOW + 610)
    history.update(store, NOW + 620)  # nothing new: nothing counted again
    assert {s: dict(c) for s, c in history.counts(7).items()} == by_hand(orders, 7, NOW + 620)

    # A week on, the oldest week has left the window.
    later = NOW + 7 * 86400
    history.update(store, later)
    assert min(history.counts(8)) >= int(later // SLOT_S) - WINDOW_SLOTS
    assert {s: dict(c) for s, c in history.counts(8).items()} == by_hand(orders, 8, later)
    assert CLOCK_SKEW_S >= 120


def test_the_forecast_from_counts_is_the_forecast_from_the_orders(store: FleetStore) -> None:
    rng = random.Random(5)
    spots = [offset(CITY, dx, dy) for dx, dy in ((0, 0), (1500, -800), (-2500, 2000))]
    orders = []
    for week in range(4):
        for hour in range(6):
            for _ in range(rng.randint(2, 9)):
                at = NOW - (week + 1) * 7 * 86400 + hour * 900 + rng.uniform(0, 900)
                orders.append(place(store, at, rng.choice(spots)))
    orders += [place(store, NOW - rng.uniform(0, 3600), spots[1]) for _ in range(20)]
    history = DemandHistory((8,))
    history.update(store, NOW)
    forecaster = DemandForecaster(None, 8)
    pickups = [(o.pickup.lat, o.pickup.lon, o.created_at) for o in orders]
    expected = forecaster.forecast(pickups, [], NOW, 8)
    assert expected and any(v[1] > 0 for v in expected.values())
    assert forecaster.forecast_counts(history.counts(8), [], NOW, 8) == expected
