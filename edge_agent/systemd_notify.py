"""systemd's notify protocol, without a dependency: ``READY=1`` once the agent records, ``WATCHDOG=1`` while
its loops make progress (systemd restarts an agent that hangs), ``STOPPING=1`` on the way out. Outside
systemd (no ``NOTIFY_SOCKET``) every call does nothing."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send ``message`` to systemd; False when not run by systemd (or the socket is gone)."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.warning("systemd notify failed: %s", exc)
        return False
    return True


def watchdog_interval_s() -> float | None:
    """Half the watchdog period systemd set for this process (None: no watchdog)."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None


async def keep_watchdog_fed(interval_s: float, progressed_at: Callable[[], float], stale_s: float) -> None:
    """Ping the watchdog every ``interval_s`` while ``progressed_at()`` (a monotonic time) is fresher than
    ``stale_s``; a stuck agent stops pinging and systemd restarts it."""
    while True:
        await asyncio.sleep(interval_s)
        if time.monotonic() - progressed_at() <= stale_s:
            notify("WATCHDOG=1")
        else:
            log.error("no progress for %.0f s: leaving systemd's watchdog unfed", time.monotonic() - progressed_at())
