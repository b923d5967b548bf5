"""NMEA 0183 GPS receivers over serial: GGA, RMC and VTG, checksums verified.

A sentence with a bad checksum, a malformed field or an unknown type is counted and skipped; the stream
goes on. Each GGA produces a ``position`` record (with speed and course from the latest RMC or VTG); a
fix lost or regained raises ``gps.fix_lost`` (alert) or ``gps.fix_regained`` (event).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from firmware_bridge._errors import LinkError
from firmware_bridge._links import DeviceUrl, open_with_backoff
from firmware_bridge._source import RecordSink, TelemetrySource
from protocols import RecordClass

log = logging.getLogger(__name__)

KNOTS_TO_M_S = 0.514444
MAX_SENTENCE = 120  # 82 by the standard; some receivers run longer


class NmeaError(ValueError):
    """A sentence that cannot be used; the message says why."""


class ChecksumMismatch(NmeaError):
    """The sentence's checksum does not match its body: corrupted on the line."""


class UnsupportedSentence(NmeaError):
    """A well-formed sentence of a type we do not use (GSV, GSA...)."""


def checksum(body: str) -> str:
    value = 0
    for char in body:
        value ^= ord(char)
    return f"{value:02X}"


def split_sentence(line: str) -> tuple[str, list[str]]:
    """Verify a ``$...*hh`` sentence; return its type (``GGA``) and fields.

    Raises:
        NmeaError: framing or checksum is wrong.
    """
    line = line.strip()
    if not line.startswith(("$", "!")) or len(line) > MAX_SENTENCE:
        raise NmeaError("not a sentence")
    body, star, given = line[1:].partition("*")
    if not star or len(given) != 2:
        raise NmeaError("no checksum")
    if checksum(body) != given.upper():
        raise ChecksumMismatch(f"checksum {given} != {checksum(body)}")
    fields = body.split(",")
    if len(fields[0]) < 5:
        raise NmeaError("no sentence type")
    return fields[0][2:], fields[1:]


def _coord(value: str, hemi: str, degree_digits: int) -> float | None:
    if not value:
        return None
    degrees = int(value[:degree_digits])
    minutes = float(value[degree_digits:])
    if minutes >= 60:
        raise NmeaError(f"minutes {minutes} out of range")
    result = degrees + minutes / 60
    if hemi in ("S", "W"):
        result = -result
    elif hemi not in ("N", "E"):
        raise NmeaError(f"hemisphere {hemi!r}")
    return result


def _float(value: str) -> float | None:
    return float(value) if value else None


@dataclass(slots=True)
class GpsFix:
    lat: float | None = None
    lon: float | None = None
    alt_m: float | None = None
    quality: int = 0
    satellites: int = 0
    hdop: float | None = None
    speed_m_s: float | None = None
    course_deg: float | None = None
    utc: str = ""


@dataclass(slots=True)
class NmeaCounters:
    sentences: int = 0
    bad_checksum: int = 0
    malformed: int = 0
    unsupported: int = 0
    overlong: int = 0


class NmeaParser:
    """Feeds bytes in, calls back with the fix after each GGA; keeps counts of what it skipped."""

    def __init__(self) -> None:
        self.fix = GpsFix()
        self.counters = NmeaCounters()
        self._buffer = b""

    def feed(self, data: bytes) -> list[str]:
        """Returns the types of the sentences accepted from ``data``."""
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > MAX_SENTENCE * 4:
            self.counters.overlong += 1
            self._buffer = b""
        accepted = []
        for raw in lines:
            line = raw.decode("ascii", errors="replace").strip()
            if not line:
                continue
            try:
                kind, fields = split_sentence(line)
                self._apply(kind, fields)
            except ChecksumMismatch:
                self.counters.bad_checksum += 1
                continue
            except UnsupportedSentence:
                self.counters.unsupported += 1
                continue
            except (ValueError, IndexError):
                self.counters.malformed += 1
                continue
            self.counters.sentences += 1
            accepted.append(kind)
        return accepted

    def _apply(self, kind: str, f: list[str]) -> None:
        fix = self.fix
        if kind == "GGA":
            fix.utc = f[0]
            fix.lat, fix.lon = _coord(f[1], f[2], 2), _coord(f[3], f[4], 3)
            fix.quality = int(f[5] or 0)
            fix.satellites = int(f[6] or 0)
            fix.hdop = _float(f[7])
            fix.alt_m = _float(f[8])
        elif kind == "RMC":
            if f[1] == "V":
                fix.quality = 0
            fix.speed_m_s = None if not f[6] else float(f[6]) * KNOTS_TO_M_S
            fix.course_deg = _float(f[7])
        elif kind == "VTG":
            fix.course_deg = _float(f[0])
            fix.speed_m_s = None if not f[4] else float(f[4]) * KNOTS_TO_M_S
        else:
            raise UnsupportedSentence(kind)


class NmeaGps(TelemetrySource):
    """A GPS receiver on a serial port (or any byte link); reopened with backoff when it drops."""

    def __init__(self, url: DeviceUrl, *, reconnect_max_s: float = 5.0) -> None:
        self.url = url
        self.parser = NmeaParser()
        self._reconnect_max_s = reconnect_max_s
        self._had_fix: bool | None = None

    async def run(self, sink: RecordSink) -> None:
        while True:
            link = await open_with_backoff(self.url, max_delay_s=self._reconnect_max_s)
            try:
                while True:
                    for kind in self.parser.feed(await link.receive()):
                        if kind == "GGA":
                            self._record(sink, time.time())
            except LinkError as exc:
                log.warning("GPS link %s failed: %s", self.url, exc)
            finally:
                link.close()

    def _record(self, sink: RecordSink, now: float) -> None:
        fix = self.parser.fix
        has_fix = fix.quality > 0 and fix.lat is not None
        if self._had_fix is not None and has_fix != self._had_fix:
            if has_fix:
                sink.append("gps.fix_regained", {"satellites": fix.satellites}, cls=RecordClass.EVENT, ts=now)
            else:
                sink.append("gps.fix_lost", {"satellites": fix.satellites}, cls=RecordClass.ALERT, ts=now)
        self._had_fix = has_fix
        data: dict[str, Any] = {"fix_quality": fix.quality, "satellites": fix.satellites, "hdop": fix.hdop,
                                "utc": fix.utc, "source": "nmea"}
        if has_fix:
            data.update(lat=fix.lat, lon=fix.lon, alt_m=fix.alt_m, speed_m_s=fix.speed_m_s,
                        heading_deg=fix.course_deg)
            sink.append("position", data, ts=now)
        else:
            sink.append("gps", data, ts=now)


def utc_hhmmss(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).strftime("%H%M%S.%f")[:9]
