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
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from sim_hw.autopilot import SimulatedAutopilot
from sim_hw.pty_port import PtyPort

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
        self._pty: PtyPort | None = None

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
            self._pty = PtyPort(self.autopilot.receive, baud=int(rest) if rest else 57600, link=self.link)
            await self._pty.__aenter__()
            self.autopilot.outputs.append(self._pty.write)
            self.address = self._pty.path
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
        if self._pty is not None:
            await self._pty.__aexit__(None, None, None)

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

    def unplug(self) -> None:
        """Pull the cable: the serial device disappears (pty endpoints only)."""
        if self._pty is not None:
            self._pty.unplug()

    def replug(self) -> None:
        """Plug it back: a new device node appears, reached through the same ``link`` path."""
        if self._pty is not None:
            self._pty.replug()
            self.address = self._pty.path
