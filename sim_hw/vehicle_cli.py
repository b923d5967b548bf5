"""``fleet-sim vehicle``: one simulated ArduPilot vehicle on real links, for MAVProxy, QGroundControl or an agent."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from sim_hw.autopilot import SimulatedAutopilot
from sim_hw.mavlink_server import AutopilotServer


@dataclass(frozen=True, slots=True)
class VehicleOptions:
    kind: str
    endpoints: list[str]
    speedup: float
    home: tuple[float, float, float]
    pty_link: Path | None
    duration_s: float | None
    battery_pct: float = 100.0


def parse_home(text: str) -> tuple[float, float, float]:
    parts = [float(p) for p in text.split(",")]
    if len(parts) not in (2, 3) or not -90 <= parts[0] <= 90 or not -180 <= parts[1] <= 180:
        raise ValueError(f"--home {text!r}: use LAT,LON[,ALT_AMSL]")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else 0.0


async def run_vehicle(options: VehicleOptions, out: TextIO = sys.stdout) -> None:
    autopilot = SimulatedAutopilot(kind=options.kind, home=options.home, time_scale=options.speedup)
    autopilot.set_battery_pct(options.battery_pct)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        for i, endpoint in enumerate(options.endpoints):
            server = await stack.enter_async_context(AutopilotServer(
                autopilot, endpoint, link=options.pty_link if endpoint.startswith("pty") else None, clock=i == 0))
            where = server.address + (f" (also {options.pty_link})" if endpoint.startswith("pty") and options.pty_link
                                      else "")
            print(f"simulated {options.kind} (ArduPilot-like MAVLink 2) on {endpoint.split(':')[0]} {where}", file=out)
        print("e.g. mavproxy.py --master=udpout:HOST:PORT, or an agent with [autopilot] device = "
              "\"udp://HOST:PORT\"; Ctrl-C stops", file=out, flush=True)
        if options.duration_s is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(options.duration_s):
                    await stop.wait()
        else:
            await stop.wait()
