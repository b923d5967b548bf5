"""Small-distance geodesy on a spherical Earth: good to centimetres over the few kilometres a vehicle flies."""

from __future__ import annotations

import math

EARTH_RADIUS_M = 6_371_000.0


def offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    """The point ``north_m`` north and ``east_m`` east of ``(lat, lon)``."""
    dlat = math.degrees(north_m / EARTH_RADIUS_M)
    dlon = math.degrees(east_m / (EARTH_RADIUS_M * math.cos(math.radians(lat))))
    return lat + dlat, lon + dlon


def north_east(lat: float, lon: float, to_lat: float, to_lon: float) -> tuple[float, float]:
    """Metres north and east from ``(lat, lon)`` to ``(to_lat, to_lon)``."""
    north = math.radians(to_lat - lat) * EARTH_RADIUS_M
    east = math.radians(to_lon - lon) * EARTH_RADIUS_M * math.cos(math.radians(lat))
    return north, east


def distance_m(lat: float, lon: float, to_lat: float, to_lon: float) -> float:
    return math.hypot(*north_east(lat, lon, to_lat, to_lon))
