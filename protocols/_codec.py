"""MessagePack encoding and checked decoding of the wire messages."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from protocols._errors import MalformedMessage
from protocols._messages import (
    MAX_PAYLOAD_BYTES,
    SCHEMA_VERSION,
    Command,
    CommandAck,
    EncodedBatch,
    TelemetryBatch,
    VehicleStatus,
)

Message = TelemetryBatch | VehicleStatus | Command | CommandAck
M = TypeVar("M", TelemetryBatch, VehicleStatus, Command, CommandAck)

_encoder = msgspec.msgpack.Encoder()
_decoders: dict[type[Any], msgspec.msgpack.Decoder[Any]] = {
    t: msgspec.msgpack.Decoder(t) for t in (TelemetryBatch, VehicleStatus, Command, CommandAck)
}


def encode(message: Message | EncodedBatch) -> bytes:
    """Encode a message as MessagePack."""
    return _encoder.encode(message)


def encode_data(data: dict[str, Any]) -> bytes:
    """Encode a record's ``data`` map on its own, as the edge outbox stores it."""
    return _encoder.encode(data)


def decode(payload: bytes, schema: type[M]) -> M:
    """Decode and validate one message.

    Raises:
        MalformedMessage: the payload is too large, not MessagePack, does not match ``schema`` (the
            reason names the field), or has a schema version newer than this build reads.
    """
    name = schema.__name__
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MalformedMessage(name, f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit")
    try:
        message: M = _decoders[schema].decode(payload)
    except msgspec.ValidationError as exc:
        raise MalformedMessage(name, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise MalformedMessage(name, f"not valid MessagePack: {exc}") from None
    if message.v > SCHEMA_VERSION:
        raise MalformedMessage(
            name, f"schema version {message.v} at `$.v` is newer than this build reads ({SCHEMA_VERSION})"
        )
    return message
