"""A simulated driver terminal with a scripted driver, on a pseudo-terminal or a local socket.

The driver reads each offer, answers after a human delay that grows with the distance to the pickup,
and accepts with a probability that falls with distance and rises with the incentive; a decline says
why (too far, low incentive, on a break, ...). Sometimes the driver does not answer at all. Everything
is drawn from a seeded generator, so a run can be repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from protocols._terminal import (
    MAX_LINE,
    Accept,
    Decline,
    Hello,
    LineError,
    Message,
    Offer,
    Ping,
    Pong,
    Seen,
    Withdraw,
    decode_to_terminal,
    encode_line,
)
from sim_hw.pty_port import PtyPort


@dataclass(frozen=True, slots=True)
class DriverBehaviour:
    """How the scripted driver decides. Probabilities are clamped to [0, 1]."""

    base_accept: float = 0.85
    accept_drop_per_km: float = 0.10
    accept_gain_per_unit_incentive: float = 0.05
    no_answer: float = 0.05
    no_show: float = 0.0
    """Share of accepted reposition offers the driver never drives to."""
    delay_s: float = 2.0
    delay_per_km_s: float = 0.5
    time_scale: float = 1.0
    """Simulated seconds per real second: 10 answers ten times sooner."""

    def accept_probability(self, offer: Offer) -> float:
        km = offer.distance_m / 1000
        p = self.base_accept - self.accept_drop_per_km * km + self.accept_gain_per_unit_incentive * offer.incentive
        return min(1.0, max(0.0, p))


class ScriptedDriver:
    def __init__(self, behaviour: DriverBehaviour, seed: int = 0) -> None:
        self.behaviour = behaviour
        self._rng = random.Random(seed)

    def decide(self, offer: Offer) -> tuple[float, Accept | Decline | None]:
        """Seconds until the answer (real time), and the answer (None: never answers)."""
        b = self.behaviour
        km = offer.distance_m / 1000
        delay = (b.delay_s + b.delay_per_km_s * km) * math.exp(self._rng.gauss(0, 0.3)) / b.time_scale
        if self._rng.random() < b.no_answer:
            return delay, None
        if self._rng.random() < b.accept_probability(offer):
            return delay, Accept(id=offer.id)
        if km > 5:
            reason = "too_far"
        elif offer.incentive < 2 and offer.kind == "reposition":
            reason = "low_incentive"
        else:
            reason = self._rng.choice(["on_break", "other", "too_far", "vehicle_issue"])
        return delay, Decline(id=offer.id, reason=reason)  # type: ignore[arg-type]

    def drives_to(self, offer: Offer) -> bool:
        """Whether the driver, having accepted ``offer``, goes there (a job always; a reposition mostly)."""
        return offer.kind == "job" or self._rng.random() >= self.behaviour.no_show


class SimulatedDriverTerminal:
    """Serves on ``pty[:BAUD]``, ``tcp:HOST:PORT`` or ``unix:PATH``; ``address`` says where."""

    def __init__(self, endpoint: str, driver: ScriptedDriver, *, link: Path | None = None) -> None:
        self.endpoint = endpoint
        self.driver = driver
        self.link = link
        self.address = ""
        self.shown: list[Offer | Message] = []
        self.accepted: list[Offer] = []
        self.on_accept: Callable[[Offer], None] | None = None
        """Called with each offer the driver accepts (a simulated taxi starts driving)."""
        self.withdrawn: list[str] = []
        self.errors_received: list[str] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._pty: PtyPort | None = None
        self._server: asyncio.Server | None = None
        self._buffer = b""
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> SimulatedDriverTerminal:
        kind, _, rest = self.endpoint.partition(":")
        if kind == "pty":
            self._pty = PtyPort(self._receive, baud=int(rest) if rest else 115200, link=self.link)
            await self._pty.__aenter__()
            self.address = self._pty.path
        elif kind == "tcp":
            host, _, port = rest.rpartition(":")
            self._server = await asyncio.start_server(self._client, host, int(port))
            sock = self._server.sockets[0].getsockname()
            self.address = f"{sock[0]}:{sock[1]}"
        elif kind == "unix":
            self._server = await asyncio.start_unix_server(self._client, rest)
            self.address = rest
        else:
            raise ValueError(f"unknown endpoint {self.endpoint!r}: use pty[:BAUD], tcp:HOST:PORT or unix:PATH")
        self._write(encode_line(Hello(model="FleetEdge SimMDT", version="1.0")))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
            # Wait for the close so no transport outlives the event loop.
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        if self._server is not None:
            await self._server.wait_closed()
        if self._pty is not None:
            await self._pty.__aexit__(None, None, None)

    def _write(self, data: bytes) -> None:
        if self._pty is not None:
            self._pty.write(data)
        for writer in list(self._writers):
            if not writer.is_closing():
                writer.write(data)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        writer.write(encode_line(Hello(model="FleetEdge SimMDT", version="1.0")))
        try:
            while data := await reader.read(4096):
                self._receive(data)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if writer in self._writers:
                self._writers.remove(writer)
            writer.close()

    def _receive(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > MAX_LINE:
            self._buffer = b""
        for line in lines:
            line = line.rstrip(b"\r")
            if not line:
                continue
            try:
                message = decode_to_terminal(line)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                self._write(encode_line(LineError(reason=str(exc)[:200])))
                continue
            self._handle(message)

    def _handle(self, message: object) -> None:
        if isinstance(message, Offer):
            self.shown.append(message)
            self._write(encode_line(Seen(id=message.id)))
            delay, answer = self.driver.decide(message)
            if answer is not None:
                task = asyncio.get_running_loop().create_task(self._answer_later(delay, message, answer))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        elif isinstance(message, Message):
            self.shown.append(message)
            self._write(encode_line(Seen(id=message.id)))
        elif isinstance(message, Withdraw):
            self.withdrawn.append(message.id)
        elif isinstance(message, Ping):
            self._write(encode_line(Pong(ts=message.ts)))
        elif isinstance(message, LineError):
            self.errors_received.append(message.reason)

    async def _answer_later(self, delay: float, offer: Offer, answer: Accept | Decline) -> None:
        await asyncio.sleep(delay)
        if offer.id in self.withdrawn:
            return
        self._write(encode_line(answer))
        if isinstance(answer, Accept):
            self.accepted.append(offer)
            if self.on_accept is not None:
                self.on_accept(offer)

    def send_raw(self, data: bytes) -> None:
        """Put arbitrary bytes on the line (tests: garbage from a faulty terminal)."""
        self._write(data)
