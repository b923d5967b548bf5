"""Supply and demand per H3 cell: where idle vehicles are, where orders are, and where the two disagree.

- ``supply``: idle vehicles in the cell: online, with a position, of a kind dispatch knows, holding no order;
- ``demand``: orders whose pickup is in the cell: open ones waiting for a vehicle (pending or assigned) plus
  those placed within ``supply.recent_orders_s`` (the recent rate stands for the next while);
- ``forecast``: orders expected in the next 15, 30 or 60 minutes (:mod:`coordinator.supply.forecast`);
- ``imbalance``: supply - demand (negative: a deficit), with ``ratio`` = supply / demand where demand > 0.

A cell whose ratio stays outside ``[supply.imbalance_min_ratio, supply.imbalance_max_ratio]`` for
``supply.imbalance_alert_after_s`` raises an imbalance alert, which lasts until the ratio comes back.
Only cells with some supply or demand appear.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import h3

from coordinator.config import SupplySettings
from coordinator.orders import Order, OrderState
from coordinator.store import FleetPosition

Layer = Literal["supply", "demand", "forecast", "imbalance"]
LAYERS: tuple[Layer, ...] = ("supply", "demand", "forecast", "imbalance")
RESOLUTIONS = (7, 8, 9)
HORIZONS_MIN = (15, 30, 60)


@dataclass(slots=True)
class CellFigures:
    supply: int = 0
    open_orders: int = 0
    recent_orders: int = 0
    forecast: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Orders expected in the next 15, 30 and 60 minutes."""

    @property
    def demand(self) -> int:
        return self.open_orders + self.recent_orders

    @property
    def ratio(self) -> float | None:
        return self.supply / self.demand if self.demand else None


@dataclass(frozen=True, slots=True)
class ImbalanceAlert:
    cell: str
    kind: Literal["deficit", "surplus"]
    ratio: float
    since: float


@dataclass(slots=True)
class Heatmap:
    resolution: int
    computed_at: float
    cells: dict[str, CellFigures] = field(default_factory=dict)

    def value(self, cell: CellFigures, layer: Layer, horizon_min: int = 30) -> float:
        if layer == "supply":
            return float(cell.supply)
        if layer == "demand":
            return float(cell.demand)
        if layer == "forecast":
            return round(cell.forecast[HORIZONS_MIN.index(horizon_min)], 3)
        return float(cell.supply - cell.demand)

    def geojson(self, layer: Layer, horizon_min: int = 30) -> dict[str, Any]:
        """A GeoJSON FeatureCollection: one polygon per cell, ``value`` for ``layer`` (the forecast over
        ``horizon_min``) and every figure."""
        features = []
        for cell, figures in sorted(self.cells.items()):
            ring = [[lng, lat] for lat, lng in h3.cell_to_boundary(cell)]
            ring.append(ring[0])
            features.append({
                "type": "Feature", "id": cell,
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"cell": cell, "value": self.value(figures, layer, horizon_min), "supply": figures.supply,
                               "demand": figures.demand, "open_orders": figures.open_orders,
                               "recent_orders": figures.recent_orders,
                               "forecast": {f"{m}min": round(v, 3) for m, v in zip(HORIZONS_MIN, figures.forecast,
                                                                                     strict=True)},
                               "ratio": None if figures.ratio is None else round(figures.ratio, 3)}})
        return {"type": "FeatureCollection", "features": features,
                "properties": {"layer": layer, "resolution": self.resolution, "computed_at": self.computed_at,
                               **({"horizon_min": horizon_min} if layer == "forecast" else {})}}


def build_heatmap(*, resolution: int, now: float, vehicles: Iterable[FleetPosition], orders: Iterable[Order],
                  kinds: Iterable[str], recent_s: float,
                  forecast: dict[str, tuple[float, float, float]] | None = None) -> Heatmap:
    """The figures of every cell with supply or demand (or a forecast) at ``resolution``; ``vehicles`` are
    the online ones."""
    return build_heatmaps((resolution,), now=now, vehicles=vehicles, orders=orders, kinds=kinds, recent_s=recent_s,
                          forecasts={resolution: forecast} if forecast else None)[resolution]


def build_heatmaps(resolutions: Iterable[int], *, now: float, vehicles: Iterable[FleetPosition],
                   orders: Iterable[Order], kinds: Iterable[str], recent_s: float,
                   forecasts: dict[int, dict[str, tuple[float, float, float]]] | None = None) -> dict[int, Heatmap]:
    """:func:`build_heatmap` at each of ``resolutions``, sorting the fleet and the orders once.

    The refresh runs in the process serving the REST API: the points are picked out once and counted per
    cell in bulk. Each resolution looks its cells up afresh rather than taking the parents of finer ones:
    H3 children do not tile their parent exactly, and a vehicle must be in the cell that ``GET
    /v1/vehicles?h3=`` finds it in.
    """
    known = set(kinds)
    orders = list(orders)
    busy = {o.vehicle_id for o in orders if o.state.vehicle_bound}
    idle = [(v.lat, v.lon) for v in vehicles if v.kind in known and v.vehicle_id not in busy]
    waiting = [(o.pickup.lat, o.pickup.lon) for o in orders if o.state in (OrderState.PENDING, OrderState.ASSIGNED)]
    recent = [(o.pickup.lat, o.pickup.lon) for o in orders
              if o.state not in (OrderState.PENDING, OrderState.ASSIGNED) and now - recent_s <= o.created_at <= now]
    to_cell = h3.latlng_to_cell
    maps: dict[int, Heatmap] = {}
    for res in resolutions:
        heatmap = Heatmap(res, now)
        cells = heatmap.cells
        for cell, n in Counter(to_cell(lat, lon, res) for lat, lon in idle).items():
            cells[cell] = CellFigures(supply=n)
        for cell, n in Counter(to_cell(lat, lon, res) for lat, lon in waiting).items():
            cells.setdefault(cell, CellFigures()).open_orders = n
        for cell, n in Counter(to_cell(lat, lon, res) for lat, lon in recent).items():
            cells.setdefault(cell, CellFigures()).recent_orders = n
        for cell, expected in ((forecasts or {}).get(res) or {}).items():
            if any(expected):
                cells.setdefault(cell, CellFigures()).forecast = expected
        maps[res] = heatmap
    return maps


class ImbalanceWatch:
    """Tracks how long each cell has been out of bounds; alerts once it has been for long enough."""

    def __init__(self, settings: SupplySettings) -> None:
        self.settings = settings
        self._out_since: dict[str, tuple[Literal["deficit", "surplus"], float]] = {}

    def update(self, heatmap: Heatmap) -> list[ImbalanceAlert]:
        """Feed the newest heatmap (at the alert resolution); the alerts standing now."""
        s = self.settings
        now = heatmap.computed_at
        seen: dict[str, tuple[Literal["deficit", "surplus"], float]] = {}
        for cell, figures in heatmap.cells.items():
            ratio = figures.ratio
            if ratio is None or figures.demand < s.imbalance_min_demand:
                continue
            kind: Literal["deficit", "surplus"] | None = (
                "deficit" if ratio < s.imbalance_min_ratio else "surplus" if ratio > s.imbalance_max_ratio else None)
            if kind is None:
                continue
            previous = self._out_since.get(cell)
            seen[cell] = previous if previous is not None and previous[0] == kind else (kind, now)
        self._out_since = seen
        alerts = []
        for cell, (kind, since) in sorted(seen.items()):
            if now - since >= s.imbalance_alert_after_s:
                ratio = heatmap.cells[cell].ratio
                alerts.append(ImbalanceAlert(cell, kind, math.inf if ratio is None else ratio, since))
        return alerts
