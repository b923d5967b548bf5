"""A simulated NMEA 0183 GPS receiver on a pseudo-terminal: GGA, RMC and VTG at a fixed rate.

It wanders around its start point until :meth:`SimulatedGps.drive` gives it a route (a taxi driver taking
a job), then drives it stop by stop and parks; ``fix`` can be turned off to simulate a lost fix, and
``corrupt`` makes it send a share of sentences with broken checksums or truncated, as a noisy line would.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from firmware_bridge._nmea import checksum
from sim_hw.geo import distance_m, north_east, offset
from sim_hw.pty_port import PtyPort


def sentence(body: str) -> bytes:
    return f"${body}*{checksum(body)}\r\n".encode()


def _lat(value: float) -> tuple[str, str]:
    deg = int(abs(value))
    return f"{deg:02d}{(abs(value) - deg) * 60:07.4f}", "N" if value >= 0 else "S"


def _lon(value: float) -> tuple[str, str]:
    deg = int(abs(value))
    return f"{deg:03d}{(abs(value) - deg) * 60:07.4f}", "E" if value >= 0 else "W"


class SimulatedGps:
    def __init__(self, *, start: tuple[float, float] = (52.52, 13.405), speed_m_s: float = 8.0, rate_hz: float = 5.0,
                 baud: int = 9600, link: Path | None = None, seed: int = 0) -> None:
        self.lat, self.lon = start
        self.speed_m_s = speed_m_s
        self.heading = 90.0
        self.rate_hz = rate_hz
        self.fix = True
        self.corrupt = 0.0
        self._rng = random.Random(seed)
        self.port = PtyPort(lambda data: None, baud=baud, link=link)
        self._task: asyncio.Task[None] | None = None
        self._route: list[tuple[float, float]] = []
        self._dwell_s = 0.0
        self._waiting_s = 0.0
        self._wander = True

    def drive(self, stops: Sequence[tuple[float, float]], *, dwell_s: float = 0.0) -> None:
        """Drive to each ``(lat, lon)`` in turn at ``speed_m_s``, waiting ``dwell_s`` at each, then park."""
        self._route = list(stops)
        self._dwell_s = dwell_s
        self._waiting_s = 0.0
        self._wander = False

    @property
    def driving(self) -> bool:
        return bool(self._route)

    def _move(self, period: float) -> float:
        """Advance one period; the speed over ground it had."""
        if self._wander:
            self.heading = (self.heading + self._rng.uniform(-3, 3)) % 360
            step = self.speed_m_s * period
            self.lat, self.lon = offset(self.lat, self.lon, step * math.cos(math.radians(self.heading)),
                                        step * math.sin(math.radians(self.heading)))
            return self.speed_m_s
        if not self._route or self._waiting_s > 0:
            self._waiting_s = max(0.0, self._waiting_s - period)
            return 0.0
        target = self._route[0]
        left = distance_m(self.lat, self.lon, *target)
        step = self.speed_m_s * period
        if left <= step:
            self.lat, self.lon = target
            self._route.pop(0)
            self._waiting_s = self._dwell_s
            return left / period
        north, east = north_east(self.lat, self.lon, *target)
        self.heading = math.degrees(math.atan2(east, north)) % 360
        self.lat, self.lon = offset(self.lat, self.lon, step * north / left, step * east / left)
        return self.speed_m_s

    async def __aenter__(self) -> SimulatedGps:
        await self.port.__aenter__()
        self._task = asyncio.create_task(self._emit(), name="sim-gps")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.port.__aexit__(None, None, None)

    def sentences(self, now: datetime, speed_m_s: float | None = None) -> list[bytes]:
        speed = self.speed_m_s if speed_m_s is None else speed_m_s
        hms = now.strftime("%H%M%S.") + f"{now.microsecond // 10000:02d}"
        lat, ns = _lat(self.lat)
        lon, ew = _lon(self.lon)
        knots = speed / 0.514444
        if self.fix:
            gga = f"GPGGA,{hms},{lat},{ns},{lon},{ew},1,10,0.9,41.5,M,46.9,M,,"
            rmc = f"GPRMC,{hms},A,{lat},{ns},{lon},{ew},{knots:.2f},{self.heading:.1f},{now:%d%m%y},,,A"
        else:
            gga = f"GPGGA,{hms},,,,,0,03,99.9,,M,,M,,"
            rmc = f"GPRMC,{hms},V,,,,,,,{now:%d%m%y},,,N"
        vtg = f"GPVTG,{self.heading:.1f},T,,M,{knots:.2f},N,{speed * 3.6:.2f},K,A"
        out = []
        for body in (rmc, vtg, gga):
            data = sentence(body)
            if self.corrupt and self._rng.random() < self.corrupt:
                data = data[:-5] + b"00\r\n" if self._rng.random() < 0.5 else data[: len(data) // 2] + b"\r\n"
            out.append(data)
        return out

    async def _emit(self) -> None:
        period = 1.0 / self.rate_hz
        last = time.monotonic()
        while True:
            await asyncio.sleep(period)
            # The car moves by the time that passed, not by the ticks: a busy machine delays the ticks, never
            # the car.
            now = time.monotonic()
            speed = self._move(min(now - last, 5.0))
            last = now
            for data in self.sentences(datetime.now(UTC), speed):
                self.port.write(data)
