"""Serve a simulated autopilot over the links a real one uses: UDP, TCP and a serial line.

Endpoints:

    udp:HOST:PORT       listen for a ground station or companion; answer whoever spoke last
    udpout:HOST:PORT    send to a ground station that listens (as ArduPilot SITL does to 14550)
    tcp:HOST:PORT       accept TCP clients (SITL's 5760 style); every client gets the stream
    pty[:BAUD]          a pseudo-terminal with real serial semantics, paced at BAUD (default 57600);
                        its path is ``server.address``, and ``link`` is a stable symlink to it that
                        :meth:`AutopilotServer.unplug` / :meth:`replug` remove and recreate, like a USB
                        flight controller pulled and plugged back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
import time
import tty
from pathlib import Path
from types import TracebackType
from typing import Any

from sim_hw.autopilot import SimulatedAutopilot

TICK_HZ = 200


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, autopilot: SimulatedAutopilot, peer: tuple[str, int] | None) -> None:
        self.autopilot = autopilot
        self.peer = peer
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.peer = addr
        self.autopilot.receive(data)

    def send(self, data: bytes) -> None:
        if self.transport is not None and self.peer is not None:
            self.transport.sendto(data, self.peer)


class AutopilotServer:
    """Runs the autopilot's clock and carries its bytes over one endpoint. An async context manager."""

    def __init__(self, autopilot: SimulatedAutopilot, endpoint: str, *, link: str | Path | None = None,
                 clock: bool = True) -> None:
        """``clock``: run the autopilot's clock here; give exactly one server of an autopilot the clock."""
        self.autopilot = autopilot
        self._run_clock = clock
        self.endpoint = endpoint
        self.address = ""
        self.link = Path(link) if link else None
        self._closers: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._tcp_writers: set[asyncio.StreamWriter] = set()
        self._pty_master: int | None = None
        self._pty_out = bytearray()
        self._baud = 57600

    async def __aenter__(self) -> AutopilotServer:
        kind, _, rest = self.endpoint.partition(":")
        if kind in ("udp", "udpout"):
            host, _, port = rest.rpartition(":")
            loop = asyncio.get_running_loop()
            if kind == "udp":
                transport, proto = await loop.create_datagram_endpoint(
                    lambda: _UdpProtocol(self.autopilot, None), local_addr=(host, int(port)))
            else:
                transport, proto = await loop.create_datagram_endpoint(
                    lambda: _UdpProtocol(self.autopilot, (host, int(port))), local_addr=("127.0.0.1", 0))
            self.autopilot.outputs.append(proto.send)
            self._closers.append(transport.close)
            sock = transport.get_extra_info("sockname")
            self.address = f"{sock[0]}:{sock[1]}" if kind == "udp" else f"{host}:{port}"
        elif kind == "tcp":
            host, _, port = rest.rpartition(":")
            server = await asyncio.start_server(self._tcp_client, host, int(port))
            self.autopilot.outputs.append(self._tcp_send)
            sock = server.sockets[0].getsockname()
            self.address = f"{sock[0]}:{sock[1]}"
            self._closers.append(server.close)
        elif kind == "pty":
            self._baud = int(rest) if rest else 57600
            self.autopilot.outputs.append(self._pty_out.extend)
            self._open_pty()
            self._tasks.append(asyncio.create_task(self._pty_writer(), name="sim-pty-writer"))
        else:
            raise ValueError(f"unknown endpoint {self.endpoint!r}: use udp:, udpout:, tcp: or pty[:BAUD]")
        if self._run_clock:
            self._tasks.append(asyncio.create_task(self._clock(), name="sim-autopilot-clock"))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for close in self._closers:
            close()
        for writer in list(self._tcp_writers):
            writer.close()
        self._close_pty()

    async def _clock(self) -> None:
        period = 1.0 / TICK_HZ
        while True:
            self.autopilot.tick(time.monotonic())
            await asyncio.sleep(period)

    # -- TCP ---------------------------------------------------------------------------------------

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tcp_writers.add(writer)
        try:
            while data := await reader.read(4096):
                self.autopilot.receive(data)
        except ConnectionError:
            pass
        finally:
            self._tcp_writers.discard(writer)
            writer.close()

    def _tcp_send(self, data: bytes) -> None:
        for writer in list(self._tcp_writers):
            if writer.is_closing():
                self._tcp_writers.discard(writer)
            else:
                writer.write(data)

    # -- pseudo-terminal ---------------------------------------------------------------------------

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        os.set_blocking(master, False)
        self.address = os.ttyname(slave)
        # The slave stays open on our side too, so the line does not hang up between client opens.
        self._pty_slave = slave
        self._pty_master = master
        asyncio.get_running_loop().add_reader(master, self._pty_read)
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
            self.link.symlink_to(self.address)

    def _close_pty(self) -> None:
        if self._pty_master is None:
            return
        asyncio.get_running_loop().remove_reader(self._pty_master)
        for fd in (self._pty_master, self._pty_slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._pty_master = None
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()

    def _pty_read(self) -> None:
        assert self._pty_master is not None
        try:
            data = os.read(self._pty_master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        self.autopilot.receive(data)

    async def _pty_writer(self) -> None:
        # 10 bits a byte on the wire (start, 8 data, stop): what a real UART at this baud carries.
        bytes_per_s = self._baud / 10
        step = 0.005
        budget = 0.0
        while True:
            await asyncio.sleep(step)
            budget = min(budget + bytes_per_s * step, bytes_per_s * 0.05)
            if self._pty_master is None or not self._pty_out:
                if self._pty_master is None:
                    self._pty_out.clear()
                continue
            n = int(min(budget, len(self._pty_out)))
            if n <= 0:
                continue
            try:
                written = os.write(self._pty_master, bytes(self._pty_out[:n]))
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                self._pty_out.clear()
                continue
            del self._pty_out[:written]
            budget -= written
            # A UART's buffer is small: an unread backlog is lost, as on a real line.
            if len(self._pty_out) > self._baud:
                del self._pty_out[: len(self._pty_out) - self._baud]

    def unplug(self) -> None:
        """Pull the cable: the serial device disappears (pty endpoints only)."""
        self._close_pty()

    def replug(self) -> None:
        """Plug it back: a new device node appears, reached through the same ``link`` path."""
        if self._pty_master is None:
            self._open_pty()
