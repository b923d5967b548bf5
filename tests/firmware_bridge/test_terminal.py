"""The driver terminal protocol against the simulated terminal over a real pty and a Unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from edge_agent.outbox import TelemetryOutbox
from firmware_bridge import DriverTerminal, parse_device_url
from protocols._terminal import Accept, Decline, Offer, Point, decode_from_terminal, encode_line
from sim_hw.driver_terminal import DriverBehaviour, ScriptedDriver, SimulatedDriverTerminal


def offer(n: int, *, distance_m: float = 800, incentive: float = 0.0, expires_in: float = 3.0,
          kind: str = "job") -> Offer:
    return Offer(id=f"o-{n}", kind=kind, title=f"Job {n}", pickup=Point(52.52, 13.40),  # type: ignore[arg-type]
                 dropoff=Point(52.50, 13.30), distance_m=distance_m, incentive=incentive,
                 expires_at=time.time() + expires_in)


@contextlib.asynccontextmanager
async def terminal(tmp_path: Path, endpoint: str, url: str, behaviour: DriverBehaviour,
                   link: Path | None = None) -> AsyncIterator[tuple[SimulatedDriverTerminal, DriverTerminal,
                                                                    TelemetryOutbox]]:
    outbox = TelemetryOutbox.open(tmp_path / "outbox.db", cap_bytes=16 * 1024 * 1024)
    async with SimulatedDriverTerminal(endpoint, ScriptedDriver(behaviour, seed=3), link=link) as sim:
        mdt = DriverTerminal(parse_device_url(url.format(address=sim.address)), reconnect_max_s=0.5)
        task = asyncio.create_task(mdt.run(outbox))
        try:
            async with asyncio.timeout(5):
                await mdt.connected.wait()
                while not mdt.terminal_model:  # the terminal's hello: both ends are up
                    await asyncio.sleep(0.01)
            yield sim, mdt, outbox
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


FAST = DriverBehaviour(delay_s=0.2, delay_per_km_s=0.05, no_answer=0.0)


async def test_accept_decline_and_timeout_over_a_serial_pty(tmp_path: Path) -> None:
    eager = DriverBehaviour(base_accept=1.0, accept_drop_per_km=0.0, delay_s=0.2, delay_per_km_s=0.0, no_answer=0.0)
    async with terminal(tmp_path, "pty:115200", "serial://{address}?baud=115200", eager,
                        link=tmp_path / "ttyMDT") as (sim, mdt, outbox):
        accepted = await mdt.offer(offer(1))
        assert accepted.state == "accepted" and accepted.response_s is not None and accepted.response_s < 2
        sim.driver.behaviour = DriverBehaviour(base_accept=0.0, delay_s=0.2, delay_per_km_s=0.0, no_answer=0.0)
        declined = await mdt.offer(offer(2, distance_m=9000))
        assert declined.state == "declined" and declined.reason == "too_far"
        sim.driver.behaviour = DriverBehaviour(no_answer=1.0)
        silent = await mdt.offer(offer(3, expires_in=0.5))
        assert silent.state == "timed_out"
        await asyncio.sleep(0.2)
        assert sim.withdrawn == ["o-3"], "an expired offer is withdrawn from the screen"
    outbox.commit()
    rows = outbox._db.execute("SELECT data FROM outbox WHERE kind = 'terminal.offer' ORDER BY seq").fetchall()
    assert [msgspec.msgpack.decode(r[0])["state"] for r in rows] == ["accepted", "declined", "timed_out"]


async def test_over_a_unix_socket_with_garbage_lines_and_late_answers(tmp_path: Path) -> None:
    socket_path = tmp_path / "mdt.sock"
    async with terminal(tmp_path, f"unix:{socket_path}", "unix://{address}", FAST) as (sim, mdt, _):
        sim.send_raw(b"this is not json\n{\"type\":\"accept\"}\n" + b"x" * 5000 + b"\n")
        sim.send_raw(encode_line(Accept(id="o-never-offered")))
        result = await mdt.offer(offer(7))
        assert result.state in ("accepted", "declined")
        await asyncio.sleep(0.2)
        assert mdt.counters.malformed >= 2 and mdt.counters.overlong >= 1
        assert mdt.counters.late_answers >= 1, "an answer to no open offer is ignored"
        assert mdt.terminal_model.startswith("FleetEdge SimMDT")


async def test_an_unreachable_terminal_is_reported_not_hung(tmp_path: Path) -> None:
    mdt = DriverTerminal(parse_device_url(f"unix://{tmp_path / 'nobody.sock'}"))
    result = await mdt.offer(offer(9))
    assert result.state == "unreachable"


def test_scripted_driver_is_deterministic_and_shaped_by_distance_and_incentive() -> None:
    behaviour = DriverBehaviour()
    near, far = offer(1, distance_m=500), offer(2, distance_m=8000)
    assert behaviour.accept_probability(near) > behaviour.accept_probability(far)
    boosted = offer(3, distance_m=8000, incentive=5)
    assert behaviour.accept_probability(boosted) > behaviour.accept_probability(far)
    a = [ScriptedDriver(behaviour, seed=11).decide(offer(i, distance_m=300 * i)) for i in range(20)]
    b = [ScriptedDriver(behaviour, seed=11).decide(offer(i, distance_m=300 * i)) for i in range(20)]
    assert [(round(d, 6), type(x).__name__) for d, x in a] == [(round(d, 6), type(x).__name__) for d, x in b]
    delays = [d for d, _ in a]
    assert delays[-1] > delays[0], "a farther pickup takes the driver longer to decide"
    assert any(isinstance(x, Decline) for _, x in a) and any(isinstance(x, Accept) for _, x in a)


def test_protocol_lines_name_the_bad_field() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.reason"):
        decode_from_terminal(b'{"type":"decline","id":"o-1","reason":"because"}')
    assert decode_from_terminal(b'{"type":"accept","id":"o-1","extra":1}') == Accept(id="o-1")
