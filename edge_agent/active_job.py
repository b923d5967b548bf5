"""The job a vehicle is carrying out, as the on-board models see it: the stops still ahead, the deadline."""

from __future__ import annotations

from dataclasses import dataclass

from protocols import great_circle_m


@dataclass(slots=True)
class ActiveJob:
    order_id: str
    stops: tuple[tuple[float, float], ...]
    """Pickup, then drop-off."""
    deadline: float | None
    returns_home: bool
    """The job ends at home (a drone's or robot's mission), so the battery must cover that leg too."""
    radius_m: float
    reached: int = 0

    def update(self, here: tuple[float, float]) -> None:
        """Count the stops reached (in order) by the vehicle now at ``here``."""
        while self.reached < len(self.stops) and great_circle_m(*here, *self.stops[self.reached]) <= self.radius_m:
            self.reached += 1

    @property
    def stops_left(self) -> int:
        return len(self.stops) - self.reached

    def to_dropoff_m(self, here: tuple[float, float]) -> float:
        """Straight-line distance from ``here`` through the stops left to the drop-off."""
        total, at = 0.0, here
        for stop in self.stops[self.reached:]:
            total += great_circle_m(*at, *stop)
            at = stop
        return total

    def route_m(self, here: tuple[float, float], home: tuple[float, float] | None) -> float:
        """What is left to travel: to the drop-off, and home after it when the job ends there."""
        total = self.to_dropoff_m(here)
        if self.returns_home and home is not None:
            total += great_circle_m(*(self.stops[-1] if self.stops_left else here), *home)
        return total
