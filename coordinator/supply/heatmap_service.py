"""Keeps the heatmaps fresh: one read of the fleet and the recent orders every ``supply.heatmap_refresh_s``
(or on demand), turned into a heatmap at each selectable resolution, and the imbalance alerts updated; the
demand forecast is redone every ``supply.forecast_refresh_s`` from the past weeks' orders and the declared
events. In the coordinator the reading and building run in a process of their own
(:mod:`coordinator.supply.heatmap_worker`); this one only takes the results in."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from coordinator.config import CoordinatorSettings
from coordinator.orders import Order
from coordinator.store import FleetStore
from coordinator.supply.demand_history import DemandHistory
from coordinator.supply.forecast import DeclaredEvent, DemandForecaster, OnnxDemandModel
from coordinator.supply.heatmap import RESOLUTIONS, Heatmap, ImbalanceAlert, ImbalanceWatch, build_heatmaps
from coordinator.supply.reposition import IdleVehicle, RepositionPlan, plan_moves

if TYPE_CHECKING:
    from coordinator.supply.heatmap_worker import HeatmapWorker

log = logging.getLogger(__name__)

Forecasts = dict[int, dict[str, tuple[float, float, float]]]


@dataclass(frozen=True, slots=True)
class HeatmapUpdate:
    """One refresh's results: what :meth:`HeatmapService.compute` hands to :meth:`HeatmapService.publish`."""

    maps: dict[int, Heatmap]
    forecasts: Forecasts
    forecast_at: float


class HeatmapService:
    def __init__(self, store: FleetStore, settings: CoordinatorSettings,
                 worker: HeatmapWorker | None = None) -> None:
        """``worker``: where :meth:`run` computes (a process of its own); without one, a thread of this one."""
        self.store = store
        self.settings = settings.supply
        self.dispatch = settings.dispatch
        self.kinds = tuple(settings.dispatch.kinds)
        self.watch = ImbalanceWatch(settings.supply)
        self.alerts: list[ImbalanceAlert] = []
        self._maps: dict[int, Heatmap] = {}
        self._lock = threading.Lock()
        model = OnnxDemandModel(settings.supply.forecast_model) if settings.supply.forecast_model else None
        self.forecaster = DemandForecaster(model, settings.supply.forecast_resolution)
        self.history = DemandHistory(RESOLUTIONS)
        self._history_lock = threading.Lock()
        self._forecasts: Forecasts = {}
        self._forecast_at = -float("inf")
        self.worker = worker
        self._forecast_stale = False
        """An event was declared since the worker last forecast: it must forecast again."""

    def heatmap(self, resolution: int) -> Heatmap:
        """The newest heatmap at ``resolution`` (computed now if there is none yet)."""
        with self._lock:
            found = self._maps.get(resolution)
        return found if found is not None else self.refresh()[resolution]

    def refresh(self, now: float | None = None) -> dict[int, Heatmap]:
        """Read the fleet and the orders once and rebuild every resolution, here and now."""
        update = self.compute(time.time() if now is None else now)
        self.publish(update)
        return update.maps

    def compute(self, now: float) -> HeatmapUpdate:
        """The heatmaps (and the forecasts in them) from one read of the fleet and the orders."""
        vehicles = self.store.positions()
        orders = self._orders(now)
        forecasts = self._current_forecasts(now)
        maps = build_heatmaps(RESOLUTIONS, now=now, vehicles=vehicles, orders=orders, kinds=self.kinds,
                              recent_s=self.settings.recent_orders_s, forecasts=forecasts)
        return HeatmapUpdate(maps, forecasts, self._forecast_at)

    def publish(self, update: HeatmapUpdate) -> None:
        """Serve ``update`` from now on, and raise or clear the imbalance alerts it shows."""
        heatmap = update.maps[self.settings.heatmap_resolution]
        alerts = self.watch.update(heatmap)
        with self._lock:
            self._maps = update.maps
            self._forecasts, self._forecast_at = update.forecasts, update.forecast_at
            for alert in alerts:
                if alert not in self.alerts:
                    log.warning("supply %s in H3 cell %s: supply/demand %.2f since %.0f s", alert.kind, alert.cell,
                                alert.ratio, heatmap.computed_at - alert.since)
            self.alerts = alerts

    def suggestions(self, now: float | None = None, *, budget: float | None = None) -> RepositionPlan:
        """Where idle vehicles should go now: the transport plan toward the next 30 minutes' forecast.

        Vehicles on an open reposition move count as already at its cell and are not moved again;
        ``budget`` is the incentive money left (default: an interval's share of the hourly budget).
        """
        now = time.time() if now is None else now
        res = self.settings.heatmap_resolution
        expected = {cell: f[1] for cell, f in self._current_forecasts(now).get(res, {}).items()}
        busy = {o.vehicle_id for o in self.store.open_orders() if o.state.vehicle_bound}
        heading = {m.vehicle_id: m for m in self.store.moves(open_only=True) if m.vehicle_id is not None}
        idle = [IdleVehicle(v.vehicle_id, v.kind, v.lat, v.lon) if v.vehicle_id not in heading
                else IdleVehicle(v.vehicle_id, v.kind, heading[v.vehicle_id].lat, heading[v.vehicle_id].lon)
                for v in self.store.positions() if v.vehicle_id not in busy]
        return plan_moves(idle, expected, self.settings, self.dispatch, res, pinned=heading.keys(), budget=budget)

    def _current_forecasts(self, now: float) -> Forecasts:
        """The latest forecasts, redone when older than ``supply.forecast_refresh_s``. A worker redoes them on
        that schedule and publishes them; here they are redone only when the worker's are overdue, or right after an
        event was declared (suggestions must count it at once)."""
        overdue = self.settings.forecast_refresh_s + (2 * self.settings.heatmap_refresh_s if self.worker else 0.0)
        if now - self._forecast_at >= overdue:
            self._forecasts = self.forecast(now)
            self._forecast_at = now
        return self._forecasts

    def invalidate_forecast(self) -> None:
        """Forecast again at the next refresh (an event was declared)."""
        self._forecast_at = -float("inf")
        self._forecast_stale = True

    def forecast(self, now: float) -> dict[int, dict[str, tuple[float, float, float]]]:
        """Per resolution, ``cell -> orders expected in the next 15, 30, 60 minutes``."""
        with self._history_lock:  # the refresh task and a request's first heatmap may both get here
            self.history.update(self.store, now)
            events = [DeclaredEvent(e["lat"], e["lon"], e["start"], e["end"], e["extra_orders"], e["radius_m"])
                      for e in self.store.demand_events(ending_after=now)]
            return {res: self.forecaster.forecast_counts(self.history.counts(res), events, now, res)
                    for res in RESOLUTIONS}

    def _orders(self, now: float) -> list[Order]:
        """Open orders, and every order placed within ``recent_orders_s``."""
        found = {o.order_id: o for o in self.store.open_orders()}
        found.update((o.order_id, o) for o in self.store.orders_since(now - self.settings.recent_orders_s))
        return list(found.values())

    async def refresh_async(self) -> dict[int, Heatmap]:
        """:meth:`refresh` without holding up the event loop: in the worker process when there is one."""
        if self.worker is None:
            return await asyncio.to_thread(self.refresh)
        stale, self._forecast_stale = self._forecast_stale, False
        try:
            update = await self.worker.compute(time.time(), forecast_again=stale)
        except BaseException:
            self._forecast_stale |= stale  # still owed
            raise
        self.publish(update)
        return update.maps

    async def run(self) -> None:
        """Refresh on the schedule until cancelled; a failed refresh is logged and tried again."""
        try:
            while True:
                try:
                    await self.refresh_async()
                except Exception:
                    log.exception("heatmap refresh failed; retrying in %.0f s", self.settings.heatmap_refresh_s)
                await asyncio.sleep(self.settings.heatmap_refresh_s)
        finally:
            if self.worker is not None:
                self.worker.close()
