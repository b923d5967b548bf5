"""Byte links to a device: UDP, TCP and serial, as asyncio streams with a bounded receive queue.

Device URLs:

    udp://HOST:PORT               send to an autopilot listening there (it answers to our address)
    udpin://HOST:PORT             listen there for an autopilot that sends to us (bind to 127.0.0.1 or a
                                  private interface: the agent opens no port to the outside)
    tcp://HOST:PORT               connect to a TCP server (SITL's 5760)
    unix:///run/fleetedge/mdt.sock  connect to a local (Unix domain) socket
    serial:///dev/ttyACM0?baud=N  a serial device (USB flight controller, UART, GPS)
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from firmware_bridge._errors import DeviceUrlError, LinkError

log = logging.getLogger(__name__)

RECEIVE_QUEUE = 1024


@dataclass(frozen=True, slots=True)
class DeviceUrl:
    scheme: str
    host: str
    port: int
    path: str
    baud: int

    def __str__(self) -> str:
        if self.scheme == "serial":
            return f"serial://{self.path}?baud={self.baud}"
        if self.scheme == "unix":
            return f"unix://{self.path}"
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_device_url(url: str, *, default_baud: int = 57600) -> DeviceUrl:
    """Parse a device URL (see the module docstring).

    Raises:
        DeviceUrlError: naming what is wrong.
    """
    parts = urlsplit(url)
    if parts.scheme == "serial":
        if not parts.path:
            raise DeviceUrlError(f"{url!r}: a serial URL needs a device path, e.g. serial:///dev/ttyACM0?baud=115200")
        baud_values = parse_qs(parts.query).get("baud", [str(default_baud)])
        if not baud_values[0].isdigit():
            raise DeviceUrlError(f"{url!r}: baud must be a number")
        return DeviceUrl("serial", "", 0, parts.path, int(baud_values[0]))
    if parts.scheme == "unix":
        if not parts.path:
            raise DeviceUrlError(f"{url!r}: use unix:///path/to/socket")
        return DeviceUrl("unix", "", 0, parts.path, 0)
    if parts.scheme in ("udp", "udpin", "tcp"):
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            raise DeviceUrlError(f"{url!r}: use {parts.scheme}://HOST:PORT")
        return DeviceUrl(parts.scheme, parts.hostname, port, "", 0)
    raise DeviceUrlError(f"{url!r}: the scheme must be udp, udpin, tcp, unix or serial")


class ByteLink(abc.ABC):
    """A bidirectional byte stream to one device."""

    def __init__(self) -> None:
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue(RECEIVE_QUEUE)
        self._failed: BaseException | None = None
        self.dropped_chunks = 0

    def _deliver(self, data: bytes) -> None:
        # Full queue: the reader is far behind; dropping the oldest keeps the newest telemetry flowing.
        if self._inbox.full():
            self._inbox.get_nowait()
            self.dropped_chunks += 1
        self._inbox.put_nowait(data)

    def _fail(self, exc: BaseException) -> None:
        self._failed = exc
        with contextlib.suppress(asyncio.QueueFull):
            self._inbox.put_nowait(b"")

    async def receive(self) -> bytes:
        """The next chunk of bytes. Raises LinkError once the link has failed."""
        data = await self._inbox.get()
        if not data and self._failed is not None:
            raise LinkError(str(self._failed) or type(self._failed).__name__)
        return data

    @abc.abstractmethod
    def send(self, data: bytes) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, link: UdpLink) -> None:
        self.link = link

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.link.peer is None or self.link.listening:
            self.link.peer = addr
        self.link._deliver(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable while the autopilot is not up yet: keep listening.
        pass


class UdpLink(ByteLink):
    def __init__(self, url: DeviceUrl) -> None:
        super().__init__()
        self.url = url
        self.listening = url.scheme == "udpin"
        self.peer: tuple[str, int] | None = None if self.listening else (url.host, url.port)
        self._transport: asyncio.DatagramTransport | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        local = (self.url.host, self.url.port) if self.listening else ("0.0.0.0", 0)
        try:
            transport, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self), local_addr=local)
        except OSError as exc:
            raise LinkError(f"cannot open {self.url}: {exc.strerror}") from None
        self._transport = transport

    def send(self, data: bytes) -> None:
        if self._transport is not None and self.peer is not None:
            self._transport.sendto(data, self.peer)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class TcpLink(ByteLink):
    def __init__(self, url: DeviceUrl) -> None:
        super().__init__()
        self.url = url
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        try:
            if self.url.scheme == "unix":
                reader, self._writer = await asyncio.open_unix_connection(self.url.path)
            else:
                reader, self._writer = await asyncio.open_connection(self.url.host, self.url.port)
        except OSError as exc:
            raise LinkError(f"cannot connect to {self.url}: {exc.strerror or exc}") from None
        self._reader_task = asyncio.create_task(self._pump(reader), name=f"tcp-read-{self.url.port}")

    async def _pump(self, reader: asyncio.StreamReader) -> None:
        try:
            while data := await reader.read(4096):
                self._deliver(data)
            self._fail(ConnectionError("the device closed the TCP connection"))
        except OSError as exc:
            self._fail(exc)

    def send(self, data: bytes) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)

    def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
        if self._writer is not None:
            self._writer.close()


class SerialLink(ByteLink):
    """A serial port read through the event loop (Linux: the port's file descriptor)."""

    def __init__(self, url: DeviceUrl) -> None:
        super().__init__()
        self.url = url
        self._port: object | None = None
        self._fd: int | None = None

    async def open(self) -> None:
        import serial

        try:
            port = serial.Serial(self.url.path, self.url.baud, timeout=0, write_timeout=0, exclusive=True)
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"cannot open {self.url.path}: {exc}; check the cable and that the agent's user is "
                            "in the dialout group") from None
        self._port = port
        self._fd = port.fileno()
        asyncio.get_running_loop().add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            self._stop_reading()
            self._fail(exc)
            return
        if not data:
            self._stop_reading()
            self._fail(ConnectionError(f"{self.url.path} hung up (unplugged?)"))
            return
        self._deliver(data)

    def _stop_reading(self) -> None:
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
            self._fd = None

    def send(self, data: bytes) -> None:
        import serial

        if self._port is None:
            return
        try:
            self._port.write(data)  # type: ignore[attr-defined]
        except (serial.SerialException, OSError) as exc:
            self._stop_reading()
            self._fail(exc)

    def close(self) -> None:
        self._stop_reading()
        if self._port is not None:
            with contextlib.suppress(Exception):
                self._port.close()  # type: ignore[attr-defined]
            self._port = None


async def open_with_backoff(url: DeviceUrl, *, max_delay_s: float = 5.0,
                            on_failure: Callable[[LinkError], None] | None = None) -> ByteLink:
    """Open ``url``, retrying with exponential backoff (0.2 s doubling up to ``max_delay_s``) until it opens.

    A device that is unplugged, not yet powered or still booting is waited for, never an error.
    """
    delay = 0.2
    while True:
        try:
            return await open_link(url)
        except LinkError as exc:
            if on_failure is not None:
                on_failure(exc)
            log.warning("%s; retrying in %.1f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay_s)


async def open_link(url: DeviceUrl) -> ByteLink:
    """Open a link to ``url``. Raises LinkError if it cannot be opened now."""
    link: UdpLink | TcpLink | SerialLink
    if url.scheme in ("udp", "udpin"):
        link = UdpLink(url)
    elif url.scheme in ("tcp", "unix"):
        link = TcpLink(url)
    else:
        link = SerialLink(url)
    await link.open()
    return link
