"""A simulated NMEA 0183 GPS receiver on a pseudo-terminal: GGA, RMC and VTG at a fixed rate.

It drives around its start point; ``fix`` can be turned off to simulate a lost fix, and ``corrupt``
makes it send a share of sentences with broken checksums or truncated, as a noisy line would.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from datetime import UTC, datetime
from pathlib import Path

from firmware_bridge._nmea import checksum
from sim_hw.geo import offset
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

    def sentences(self, now: datetime) -> list[bytes]:
        hms = now.strftime("%H%M%S.") + f"{now.microsecond // 10000:02d}"
        lat, ns = _lat(self.lat)
        lon, ew = _lon(self.lon)
        knots = self.speed_m_s / 0.514444
        if self.fix:
            gga = f"GPGGA,{hms},{lat},{ns},{lon},{ew},1,10,0.9,41.5,M,46.9,M,,"
            rmc = f"GPRMC,{hms},A,{lat},{ns},{lon},{ew},{knots:.2f},{self.heading:.1f},{now:%d%m%y},,,A"
        else:
            gga = f"GPGGA,{hms},,,,,0,03,99.9,,M,,M,,"
            rmc = f"GPRMC,{hms},V,,,,,,,{now:%d%m%y},,,N"
        vtg = f"GPVTG,{self.heading:.1f},T,,M,{knots:.2f},N,{self.speed_m_s * 3.6:.2f},K,A"
        out = []
        for body in (rmc, vtg, gga):
            data = sentence(body)
            if self.corrupt and self._rng.random() < self.corrupt:
                data = data[:-5] + b"00\r\n" if self._rng.random() < 0.5 else data[: len(data) // 2] + b"\r\n"
            out.append(data)
        return out

    async def _emit(self) -> None:
        period = 1.0 / self.rate_hz
        while True:
            await asyncio.sleep(period)
            self.heading = (self.heading + self._rng.uniform(-3, 3)) % 360
            step = self.speed_m_s * period
            self.lat, self.lon = offset(self.lat, self.lon, step * math.cos(math.radians(self.heading)),
                                        step * math.sin(math.radians(self.heading)))
            for data in self.sentences(datetime.now(UTC)):
                self.port.write(data)
