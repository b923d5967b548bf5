"""A simulated vehicle's telemetry: position, attitude, battery and the events they cause.

The vehicle flies (or drives) between random waypoints around its home at a realistic speed, its
battery drains with load, and it raises the events a real autopilot would: mode changes, low battery.
Deterministic for a seed, so tests and benchmarks can repeat a run.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import zlib

from firmware_bridge import RecordSink, TelemetrySource
from protocols import RecordClass

EARTH_RADIUS_M = 6_371_000.0
SPEED_M_S = {"copter": 12.0, "plane": 22.0, "rover": 3.0, "taxi": 9.0}


class SimulatedTelemetrySource(TelemetrySource):
    """Emits ``position`` records at ``rate_hz`` and ``battery`` records at a tenth of it.

    Args:
        vehicle_id: seeds the run when ``seed`` is 0.
        kind: vehicle kind (sets the cruise speed).
        rate_hz: position records per second; above the event loop's tick several are emitted per tick.
        home: latitude and longitude the vehicle roams around (within about 3 km).
    """

    def __init__(self, vehicle_id: str, *, kind: str = "copter", rate_hz: float = 10.0, seed: int = 0,
                 home: tuple[float, float] = (52.52, 13.405)) -> None:
        self._rng = random.Random(seed or zlib.crc32(vehicle_id.encode()))
        self._rate_hz = rate_hz
        self._speed = SPEED_M_S.get(kind, 10.0)
        self._home = home
        self._lat, self._lon = self._around_home()
        self._target = self._around_home()
        self._battery_pct = 100.0 - self._rng.random() * 20
        self._alt = 0.0 if kind in ("rover", "taxi") else 60.0
        self._flying = self._alt > 0
        self._mode = "AUTO"
        self._low_battery_raised = False
        self._count = 0

    def _around_home(self) -> tuple[float, float]:
        distance = self._rng.random() * 3000.0
        bearing = self._rng.random() * 2 * math.pi
        dlat = distance * math.cos(bearing) / EARTH_RADIUS_M
        dlon = distance * math.sin(bearing) / (EARTH_RADIUS_M * math.cos(math.radians(self._home[0])))
        return self._home[0] + math.degrees(dlat), self._home[1] + math.degrees(dlon)

    async def run(self, sink: RecordSink) -> None:
        period = 1.0 / self._rate_hz
        tick = max(period, 0.01)
        started = time.monotonic()
        emitted = 0
        while True:
            due = int((time.monotonic() - started) / period) + 1
            for _ in range(due - emitted):
                self.step(sink, period)
            emitted = due
            next_at = started + emitted * period
            await asyncio.sleep(max(0.0, min(tick, next_at - time.monotonic())))

    def step(self, sink: RecordSink, dt: float) -> None:
        """Advance the model by ``dt`` seconds and emit its records."""
        self._count += 1
        now = time.time()
        north = (self._target[0] - self._lat) * math.pi / 180 * EARTH_RADIUS_M
        east = (self._target[1] - self._lon) * math.pi / 180 * EARTH_RADIUS_M * math.cos(math.radians(self._lat))
        distance = math.hypot(north, east)
        heading = math.degrees(math.atan2(east, north)) % 360
        step = min(distance, self._speed * dt)
        if distance < 1.0:
            self._target = self._around_home()
            self._set_mode(sink, self._rng.choice(["AUTO", "GUIDED", "LOITER"]), now)
        else:
            self._lat += step * north / distance / EARTH_RADIUS_M * 180 / math.pi
            self._lon += step * east / distance / (EARTH_RADIUS_M * math.cos(math.radians(self._lat))) * 180 / math.pi
        sink.append("position", {
            "lat": round(self._lat, 7), "lon": round(self._lon, 7), "alt_m": round(self._alt, 2),
            "speed_m_s": round(self._speed if distance >= 1.0 else 0.0, 2), "heading_deg": round(heading, 1),
        }, ts=now)
        self._battery_pct = max(0.0, self._battery_pct - dt * (0.05 if self._flying else 0.01))
        if self._count % 10 == 0:
            voltage = 12.6 - (100 - self._battery_pct) * 0.03 - self._rng.random() * 0.05
            sink.append("battery", {"pct": round(self._battery_pct, 2), "voltage_v": round(voltage, 3)}, ts=now)
        if self._battery_pct < 20 and not self._low_battery_raised:
            self._low_battery_raised = True
            sink.append("battery.low", {"pct": round(self._battery_pct, 2)}, cls=RecordClass.ALERT, ts=now)

    def _set_mode(self, sink: RecordSink, mode: str, now: float) -> None:
        if mode != self._mode:
            sink.append("mode.changed", {"from": self._mode, "to": mode}, cls=RecordClass.EVENT, ts=now)
            self._mode = mode
