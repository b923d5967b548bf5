"""A simulated taxi: an NMEA GPS receiver and a driver terminal whose scripted driver, on accepting a job,
drives to the pickup, waits for the passenger, and drives on to the drop-off; on accepting a reposition
offer, drives to its point (or, as ``DriverBehaviour.no_show`` says, stays put).

Both devices speak their real protocols on real links (the GPS on a pseudo-terminal, the terminal on a
pseudo-terminal or a local socket), so an edge agent configured with their addresses cannot tell them
from the hardware in a car.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from protocols._terminal import Offer
from sim_hw.driver_terminal import DriverBehaviour, ScriptedDriver, SimulatedDriverTerminal
from sim_hw.nmea_gps import SimulatedGps


class SimulatedTaxi:
    """``gps_path`` and ``terminal_address`` are what an agent's ``[gps] device`` and ``[terminal] device``
    point at, once entered."""

    def __init__(self, *, start: tuple[float, float], behaviour: DriverBehaviour, seed: int = 0,
                 speed_m_s: float = 10.0, boarding_s: float = 2.0, gps_rate_hz: float = 5.0,
                 terminal_endpoint: str = "tcp:127.0.0.1:0") -> None:
        self.gps = SimulatedGps(start=start, speed_m_s=speed_m_s, rate_hz=gps_rate_hz, seed=seed)
        self.gps.drive([])  # parked at the rank until a job comes
        self.terminal = SimulatedDriverTerminal(terminal_endpoint, ScriptedDriver(behaviour, seed=seed))
        self.terminal.on_accept = self._drive
        self.boarding_s = boarding_s
        self._stack = contextlib.AsyncExitStack()

    def _drive(self, offer: Offer) -> None:
        if not self.terminal.driver.drives_to(offer):
            return
        stops = [(offer.pickup.lat, offer.pickup.lon)]
        if offer.dropoff is not None:
            stops.append((offer.dropoff.lat, offer.dropoff.lon))
        self.gps.drive(stops, dwell_s=self.boarding_s)

    @property
    def gps_path(self) -> Path:
        return Path(self.gps.port.path)

    @property
    def terminal_address(self) -> str:
        return self.terminal.address

    @property
    def position(self) -> tuple[float, float]:
        return self.gps.lat, self.gps.lon

    async def __aenter__(self) -> SimulatedTaxi:
        await self._stack.enter_async_context(self.gps)
        await self._stack.enter_async_context(self.terminal)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()
