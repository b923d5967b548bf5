"""NMEA parsing on known sentences, and a simulated receiver on a real 9600-baud pseudo-terminal."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.outbox import TelemetryOutbox
from firmware_bridge import NmeaGps, NmeaParser, parse_device_url
from protocols import RecordClass
from sim_hw.nmea_gps import SimulatedGps, sentence

# Reference sentences from a u-blox receiver's manual, checksums as printed there.
GGA = b"$GPGGA,092725.00,4717.11399,N,00833.91590,E,1,08,1.01,499.6,M,48.0,M,,*5B\r\n"
RMC = b"$GPRMC,083559.00,A,4717.11437,N,00833.91522,E,0.004,77.52,091202,,,A*57\r\n"
VTG = b"$GPVTG,77.52,T,,M,0.004,N,0.008,K,A*06\r\n"


def test_reference_sentences_parse_to_the_right_fix() -> None:
    parser = NmeaParser()
    assert parser.feed(GGA + RMC + VTG) == ["GGA", "RMC", "VTG"]
    fix = parser.fix
    assert fix.lat == pytest.approx(47 + 17.11399 / 60) and fix.lon == pytest.approx(8 + 33.91590 / 60)
    assert (fix.quality, fix.satellites, fix.hdop, fix.alt_m) == (1, 8, 1.01, 499.6)
    assert fix.course_deg == 77.52 and fix.speed_m_s == pytest.approx(0.004 * 0.514444)


def test_southern_and_western_hemispheres_are_negative() -> None:
    parser = NmeaParser()
    parser.feed(sentence("GPGGA,120000.00,3352.1234,S,15112.5678,W,1,09,0.8,10.0,M,,M,,"))
    assert parser.fix.lat == pytest.approx(-(33 + 52.1234 / 60))
    assert parser.fix.lon == pytest.approx(-(151 + 12.5678 / 60))


def test_bad_sentences_are_counted_and_skipped() -> None:
    parser = NmeaParser()
    bad_checksum = GGA.replace(b"*5B", b"*00")
    truncated = GGA[:30] + b"\r\n"
    unknown = sentence("GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00")
    garbage = b"\x00\xff$$$***\r\n"
    wrong_field = sentence("GPGGA,092725.00,47xx.11399,N,00833.91590,E,1,08,1.01,499.6,M,48.0,M,,")
    accepted = parser.feed(bad_checksum + truncated + unknown + garbage + wrong_field + GGA)
    assert accepted == ["GGA"]
    c = parser.counters
    assert (c.bad_checksum, c.unsupported, c.sentences) == (1, 1, 1)
    assert c.malformed == 3


@given(st.binary(max_size=500))
def test_any_bytes_never_raise(data: bytes) -> None:
    parser = NmeaParser()
    parser.feed(data + b"\n")
    assert parser.counters.sentences <= data.count(b"$") + data.count(b"!")


async def test_simulated_receiver_over_a_38400_baud_pty_feeds_positions_and_fix_events(tmp_path: Path) -> None:
    outbox = TelemetryOutbox.open(tmp_path / "outbox.db", cap_bytes=16 * 1024 * 1024)
    async with SimulatedGps(baud=38400, rate_hz=5, link=tmp_path / "ttyUSB0") as gps:
        gps.corrupt = 0.2
        receiver = NmeaGps(parse_device_url(f"serial://{tmp_path / 'ttyUSB0'}?baud=38400"))
        task = asyncio.create_task(receiver.run(outbox))
        try:
            await asyncio.sleep(1.5)
            gps.fix = False
            await asyncio.sleep(1.0)
            gps.fix = True
            await asyncio.sleep(1.0)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    outbox.commit()
    rows = outbox._db.execute("SELECT kind, cls, data FROM outbox ORDER BY seq").fetchall()
    records = [(k, RecordClass(c), msgspec.msgpack.decode(d)) for k, c, d in rows]
    positions = [d for k, _, d in records if k == "position"]
    assert len(positions) > 8
    assert abs(positions[-1]["lat"] - gps.lat) < 0.001 and positions[-1]["speed_m_s"] == pytest.approx(8.0, abs=0.1)
    assert [k for k, _, _ in records if k.startswith("gps.fix")] == ["gps.fix_lost", "gps.fix_regained"]
    counters = receiver.parser.counters
    assert counters.bad_checksum + counters.malformed > 0, "the noisy line's bad sentences were seen and skipped"
