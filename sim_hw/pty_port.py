"""A simulated serial device: a pseudo-terminal with real serial semantics, paced at a baud rate.

The device side writes through :meth:`write`; bytes cross the line at ``baud / 10`` bytes per second
(start bit, 8 data bits, stop bit) in each direction, and an unread backlog beyond about a second is lost,
as on a real UART. ``link``
is a stable symlink to the pty (like ``/dev/serial/by-id/...``); :meth:`unplug` and :meth:`replug`
remove and recreate the device like a USB cable pulled and plugged back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
import tty
from collections.abc import Callable
from pathlib import Path


class PtyPort:
    """Use as an async context manager; ``path`` is the device a driver opens."""

    def __init__(self, on_receive: Callable[[bytes], None], *, baud: int = 57600, link: Path | None = None) -> None:
        self._on_receive = on_receive
        self.baud = baud
        self.link = link
        self.path = ""
        self._master: int | None = None
        self._slave: int | None = None
        self._out = bytearray()
        self._in = bytearray()
        self._writer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> PtyPort:
        self._open()
        self._writer = asyncio.create_task(self._pace(), name="pty-writer")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        self._close()

    def write(self, data: bytes) -> None:
        if self._master is not None:
            self._out.extend(data)

    def _open(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        os.set_blocking(master, False)
        self.path = os.ttyname(slave)
        # Our copy of the slave keeps the line from hanging up between a driver's closes and opens.
        self._master, self._slave = master, slave
        asyncio.get_running_loop().add_reader(master, self._readable)
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
            self.link.symlink_to(self.path)

    def _close(self) -> None:
        if self._master is None:
            return
        asyncio.get_running_loop().remove_reader(self._master)
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None
        self._out.clear()
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()

    def _readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except OSError:
            return
        if data:
            # Delivered by the pacer: what the driver writes also crosses the line at the baud rate.
            self._in.extend(data)

    async def _pace(self) -> None:
        bytes_per_s = self.baud / 10
        step = 0.005
        budget = 0.0
        budget_in = 0.0
        while True:
            await asyncio.sleep(step)
            # No saving up while idle: a UART's bytes take their time however quiet the line was.
            budget = min(budget + bytes_per_s * step, bytes_per_s * step * 1.5)
            budget_in = min(budget_in + bytes_per_s * step, bytes_per_s * step * 1.5)
            if self._in and budget_in >= 1:
                n = int(min(budget_in, len(self._in)))
                chunk = bytes(self._in[:n])
                del self._in[:n]
                budget_in -= n
                self._on_receive(chunk)
            if self._master is None or not self._out:
                continue
            n = int(min(budget, len(self._out)))
            if n <= 0:
                continue
            try:
                written = os.write(self._master, bytes(self._out[:n]))
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                self._out.clear()
                continue
            del self._out[:written]
            budget -= written
            if len(self._out) > self.baud // 10:
                del self._out[: len(self._out) - self.baud // 10]

    def unplug(self) -> None:
        self._close()

    def replug(self) -> None:
        if self._master is None:
            self._open()
