"""Demand forecast per H3 cell for the next 15, 30 and 60 minutes.

Both the training script and the coordinator turn an order history into the same feature rows, one per
(cell, moment), from counts of orders per cell per 15-minute slot:

- ``s15, s30, s60``: the seasonal average (the same slots of the week over the past weeks, up to four) of the
  next 1, 2 and 4 slots;
- ``l15, l30, l60``: the same scaled by today's level (orders city-wide in the last hour over their seasonal
  average, clipped to 0.5-2): a busy or quiet day;
- ``recent``, ``neighbours``: the cell's orders in the last hour, and its neighbours' (mean over the ring);
- ``e15, e30, e60``: orders that declared events are expected to add in the cell in each horizon.

A model (``supply.forecast_model``, ONNX, one float32 input ``[N, 11]``, output ``[N, 3]``) maps a row to the
three forecasts; ``scripts/train_demand_model.py`` fits and exports one. Without a model the forecast is the
seasonal average plus the events' extra orders.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h3
import numpy as np
import numpy.typing as npt

from coordinator.onnx_models import open_session, save_linear_model

log = logging.getLogger(__name__)

SLOT_S = 900
SLOTS_PER_WEEK = 7 * 96
HORIZONS = (1, 2, 4)
"""Slots ahead of each forecast: 15, 30 and 60 minutes."""
FEATURES = ("s15", "s30", "s60", "l15", "l30", "l60", "recent", "neighbours", "e15", "e30", "e60")
MAX_WEEKS = 4

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class DeclaredEvent:
    lat: float
    lon: float
    start: float
    end: float
    extra_orders: float
    radius_m: float = 500.0


class CellGrid:
    """The cells a forecast covers, their neighbours, and how an event's extra demand spreads over them."""

    def __init__(self, cells: Sequence[str]) -> None:
        self.cells = list(cells)
        self.index = {c: i for i, c in enumerate(self.cells)}
        self.neighbours = [[self.index[n] for n in h3.grid_ring(c, 1) if n in self.index] for c in self.cells]
        centres = [h3.cell_to_latlng(c) for c in self.cells]
        self.lat = np.array([p[0] for p in centres])
        self.lon = np.array([p[1] for p in centres])

    def spread(self, event: DeclaredEvent) -> Floats:
        """Share of the event's extra orders in each cell (a Gaussian of ``radius_m`` around its place)."""
        north = np.radians(self.lat - event.lat) * 6_371_000
        east = np.radians(self.lon - event.lon) * 6_371_000 * np.cos(np.radians(event.lat))
        squared = north ** 2 + east ** 2
        weights: Floats = np.exp(-squared / (2 * max(event.radius_m, 10.0) ** 2))
        total = float(weights.sum())
        if total > 0:
            share: Floats = weights / total
            return share
        # Far from every cell's centre (or a tiny radius): all of it in the nearest cell.
        nearest: Floats = np.zeros(len(self.cells))
        if len(nearest):
            nearest[int(np.argmin(squared))] = 1.0
        return nearest

    def event_extra(self, events: Sequence[DeclaredEvent], start: float, slots: int) -> Floats:
        """Extra orders per cell expected from ``events`` in ``slots`` slots from ``start``."""
        extra = np.zeros(len(self.cells))
        end = start + slots * SLOT_S
        for event in events:
            overlap = max(0.0, min(event.end, end) - max(event.start, start))
            if overlap > 0 and event.end > event.start:
                extra += event.extra_orders * overlap / (event.end - event.start) * self.spread(event)
        return extra


def seasonal(counts: npt.NDArray[Any], slot: int) -> Floats:
    """Mean count per cell at ``slot``'s place in the week over up to :data:`MAX_WEEKS` earlier weeks."""
    past = [slot - w * SLOTS_PER_WEEK for w in range(1, MAX_WEEKS + 1) if slot - w * SLOTS_PER_WEEK >= 0]
    if not past:
        return np.zeros(counts.shape[1])
    mean: Floats = counts[past].mean(axis=0)
    return mean


def feature_rows(counts: npt.NDArray[Any], slot: int, grid: CellGrid, events: Sequence[DeclaredEvent],
                 slot_start: float) -> Floats:
    """Feature rows (:data:`FEATURES`), one per cell, for a forecast made as ``slot`` begins.

    ``counts[s, c]`` are orders per slot and cell; rows before ``slot`` are history, later ones are not read.
    ``slot_start`` is ``slot``'s Unix time (for the events).
    """
    cells = counts.shape[1]

    def seasonal_sum(slots: range) -> Floats:
        total: Floats = np.sum([seasonal(counts, s) for s in slots], axis=0) if len(slots) else np.zeros(cells)
        return total

    season = [seasonal_sum(range(slot, slot + h)) for h in HORIZONS]
    last_hour = range(max(0, slot - 4), slot)
    recent = counts[list(last_hour)].sum(axis=0) if len(last_hour) else np.zeros(cells)
    expected_hour = seasonal_sum(last_hour)
    level = float(np.clip(recent.sum() / expected_hour.sum(), 0.5, 2.0)) if expected_hour.sum() > 0 else 1.0
    neighbours = np.array([recent[n].mean() if n else 0.0 for n in grid.neighbours])
    extra = [grid.event_extra(events, slot_start, h) for h in HORIZONS]
    return np.column_stack([*season, *(s * level for s in season), recent, neighbours, *extra])


def targets(counts: npt.NDArray[Any], slot: int) -> Floats:
    """Actual orders per cell in the next 15, 30 and 60 minutes from ``slot``."""
    return np.column_stack([counts[slot:slot + h].sum(axis=0) for h in HORIZONS])


def seasonal_forecast(rows: Floats) -> Floats:
    """The forecast without a model: the seasonal average plus the events' extra orders."""
    out: Floats = rows[:, 0:3] + rows[:, 8:11]
    return out


class OnnxDemandModel:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._session, self._input, self._output = open_session(self.path, "supply.forecast_model", FEATURES)
        self.replaced = 0

    def predict(self, rows: Floats) -> Floats:
        """Forecasts ``[N, 3]``; rows whose output is unusable get the seasonal forecast (counted)."""
        fallback = seasonal_forecast(rows)
        out = np.asarray(self._session.run([self._output], {self._input: rows.astype(np.float32)})[0],
                         dtype=np.float64)
        if out.shape != fallback.shape:
            log.error("demand model %s returned shape %s for %s; using the seasonal forecast", self.path, out.shape,
                      fallback.shape)
            self.replaced += len(rows)
            return fallback
        bad = ~(np.isfinite(out) & (out >= 0))
        self.replaced += int(bad.any(axis=1).sum())
        result: Floats = np.where(bad, fallback, out)
        return result


def export_demand_model(weights: Floats, bias: Floats, path: str | Path) -> None:
    """Write ``forecast = max(0, rows @ weights + bias)`` (weights ``[11, 3]``) as ONNX (needs ``onnx``)."""
    save_linear_model(weights, bias, path, name="demand_forecast", output="forecast",
                      producer="fleetedge-train-demand")


def wape(actual: Floats, forecast: Floats) -> float:
    """Weighted absolute percentage error: sum |forecast - actual| / sum actual."""
    total = float(np.sum(actual))
    return float(np.sum(np.abs(forecast - actual))) / total if total > 0 else float("nan")


class DemandForecaster:
    """Forecasts from the coordinator's own order history: orders counted per cell per slot over the past
    :data:`MAX_WEEKS` weeks, declared events, and the model if one is loaded (at its resolution; the other
    resolutions get the seasonal forecast)."""

    def __init__(self, model: OnnxDemandModel | None, model_resolution: int) -> None:
        self.model = model
        self.model_resolution = model_resolution

    def forecast(self, pickups: Sequence[tuple[float, float, float]], events: Sequence[DeclaredEvent], now: float,
                 resolution: int) -> dict[str, tuple[float, float, float]]:
        """``cell -> (next 15, 30, 60 minutes)`` for the cells with any order in the history or near an event.

        ``pickups`` are ``(lat, lon, placed_at)`` of the orders of the past weeks.
        """
        history: dict[int, Counter[str]] = {}
        for lat, lon, at in pickups:
            history.setdefault(int(at // SLOT_S), Counter())[h3.latlng_to_cell(lat, lon, resolution)] += 1
        return self.forecast_counts(history, events, now, resolution)

    def forecast_counts(self, history: Mapping[int, Mapping[str, int]], events: Sequence[DeclaredEvent], now: float,
                        resolution: int) -> dict[str, tuple[float, float, float]]:
        """:meth:`forecast` from orders already counted: ``history[slot][cell]`` at ``resolution``, slots
        being Unix time // :data:`SLOT_S` (see :class:`coordinator.supply.demand_history.DemandHistory`)."""
        current = int(now // SLOT_S)
        first = current - MAX_WEEKS * SLOTS_PER_WEEK - 4
        cells = {cell for by_cell in history.values() for cell, n in by_cell.items() if n}
        cells |= {h3.latlng_to_cell(e.lat, e.lon, resolution) for e in events}
        if not cells:
            return {}
        grid = CellGrid(sorted(cells))
        counts = np.zeros((current - first + 1, len(grid.cells)), dtype=np.int64)
        for slot, by_cell in history.items():
            if first <= slot < current:
                for cell, n in by_cell.items():
                    if n:
                        counts[slot - first, grid.index[cell]] += n
        rows = feature_rows(counts, current - first, grid, events, current * SLOT_S)
        use_model = self.model is not None and resolution == self.model_resolution
        predicted = self.model.predict(rows) if use_model and self.model is not None else seasonal_forecast(rows)
        return {c: (float(p[0]), float(p[1]), float(p[2])) for c, p in zip(grid.cells, predicted, strict=True)}
