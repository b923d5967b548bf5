"""The driver terminal (MDT) line protocol; specified in ``protocols/driver_terminal.md``.

One JSON object per line (UTF-8, ``\\n``-terminated, at most ``MAX_LINE`` bytes), tagged by ``type``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

MAX_LINE = 2048

OfferId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
DeclineReason = Literal["too_far", "low_incentive", "on_break", "vehicle_issue", "other"]


class Point(msgspec.Struct, frozen=True):
    lat: Annotated[float, msgspec.Meta(ge=-90, le=90)]
    lon: Annotated[float, msgspec.Meta(ge=-180, le=180)]


class _Line(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    pass


class Offer(_Line, frozen=True, kw_only=True, tag="offer"):
    """A job or a reposition offer shown to the driver until ``expires_at`` (Unix seconds)."""

    id: OfferId
    kind: Literal["job", "reposition"]
    title: Annotated[str, msgspec.Meta(max_length=200)]
    pickup: Point
    dropoff: Point | None = None
    distance_m: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    incentive: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    currency: Annotated[str, msgspec.Meta(max_length=3)] = "EUR"
    expires_at: float


class Withdraw(_Line, frozen=True, kw_only=True, tag="withdraw"):
    id: OfferId
    reason: Annotated[str, msgspec.Meta(max_length=200)] = ""


class Message(_Line, frozen=True, kw_only=True, tag="message"):
    id: OfferId
    text: Annotated[str, msgspec.Meta(max_length=500)]


class Ping(_Line, frozen=True, kw_only=True, tag="ping"):
    ts: float


class Hello(_Line, frozen=True, kw_only=True, tag="hello"):
    model: Annotated[str, msgspec.Meta(max_length=64)] = ""
    version: Annotated[str, msgspec.Meta(max_length=32)] = ""


class Accept(_Line, frozen=True, kw_only=True, tag="accept"):
    id: OfferId


class Decline(_Line, frozen=True, kw_only=True, tag="decline"):
    id: OfferId
    reason: DeclineReason
    note: Annotated[str, msgspec.Meta(max_length=200)] = ""


class Seen(_Line, frozen=True, kw_only=True, tag="seen"):
    id: OfferId


class Pong(_Line, frozen=True, kw_only=True, tag="pong"):
    ts: float


class LineError(_Line, frozen=True, kw_only=True, tag="error"):
    reason: Annotated[str, msgspec.Meta(max_length=200)]


ToTerminal = Offer | Withdraw | Message | Ping | LineError
FromTerminal = Hello | Accept | Decline | Seen | Pong | LineError

_encoder = msgspec.json.Encoder()
_to_terminal: msgspec.json.Decoder[ToTerminal] = msgspec.json.Decoder(ToTerminal)
_from_terminal: msgspec.json.Decoder[FromTerminal] = msgspec.json.Decoder(FromTerminal)


def encode_line(message: ToTerminal | FromTerminal) -> bytes:
    return _encoder.encode(message) + b"\n"


def decode_from_terminal(line: bytes) -> FromTerminal:
    """Raises msgspec.ValidationError / DecodeError naming the field."""
    return _from_terminal.decode(line)


def decode_to_terminal(line: bytes) -> ToTerminal:
    return _to_terminal.decode(line)
