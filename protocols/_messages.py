"""Message schemas of the wire contract, encoded as MessagePack maps.

Every message carries ``v``, its schema version. Decoders tolerate fields they do not know (a newer
sender may add some) and reject a version newer than they read. Every telemetry record carries a
per-vehicle sequence number (``seq``, from 1, never reused by that vehicle) and a timestamp (``ts``,
Unix seconds), which is what lets the coordinator count each record once.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any

import msgspec

from protocols._topics import VEHICLE_ID_PATTERN

SCHEMA_VERSION = 1
"""The schema version this build writes and the newest it reads."""

MAX_PAYLOAD_BYTES = 1024 * 1024
"""No FleetEdge message is larger; a bigger payload is rejected before it is parsed."""

MAX_RECORDS_PER_BATCH = 10_000

VehicleId = Annotated[str, msgspec.Meta(pattern=VEHICLE_ID_PATTERN)]
Seq = Annotated[int, msgspec.Meta(ge=1, le=2**62)]
# Seconds since the Unix epoch; the upper bound also rules out infinity.
Timestamp = Annotated[float, msgspec.Meta(ge=0, le=1e11)]
Kind = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Version = Annotated[int, msgspec.Meta(ge=1)]


class RecordClass(enum.IntEnum):
    """How precious a record is. Lower uploads first and is evicted last."""

    ALERT = 0
    EVENT = 1
    TELEMETRY = 2


class TelemetryRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One measurement or event from a vehicle."""

    seq: Seq
    ts: Timestamp
    kind: Kind
    cls: RecordClass = RecordClass.TELEMETRY
    data: dict[str, Any] = {}


class TelemetryBatch(msgspec.Struct, frozen=True, kw_only=True):
    """Records published together on ``up/telemetry`` or ``up/events``."""

    v: Version = SCHEMA_VERSION
    vehicle_id: VehicleId
    records: Annotated[list[TelemetryRecord], msgspec.Meta(min_length=1, max_length=MAX_RECORDS_PER_BATCH)]


class VehicleStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Retained on ``status``: online when the agent connects; its Last Will says offline."""

    v: Version = SCHEMA_VERSION
    vehicle_id: VehicleId
    online: bool
    ts: Timestamp
    agent_version: Annotated[str, msgspec.Meta(max_length=64)] = ""
    kind: Annotated[str, msgspec.Meta(max_length=16)] = ""
    """What the vehicle is (``copter``, ``rover``, ``taxi``...); empty from agents that do not say."""


class Command(msgspec.Struct, frozen=True, kw_only=True):
    """An order for one vehicle. A command past ``expires_at`` or seen before never runs."""

    v: Version = SCHEMA_VERSION
    command_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    vehicle_id: VehicleId
    kind: Kind
    issued_at: Timestamp
    expires_at: Timestamp
    params: dict[str, Any] = {}


class AckState(enum.StrEnum):
    RECEIVED = "received"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    COMPLETED = "completed"
    FAILED = "failed"


class CommandAck(msgspec.Struct, frozen=True, kw_only=True):
    """The vehicle's word on a command, published on ``up/acks``."""

    v: Version = SCHEMA_VERSION
    command_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    vehicle_id: VehicleId
    state: AckState
    ts: Timestamp
    reason: Annotated[str, msgspec.Meta(max_length=512)] = ""


class EncodedRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A :class:`TelemetryRecord` whose ``data`` is already MessagePack.

    The edge stores each record's data encoded once; building a batch from stored rows then costs no
    decode and re-encode. It encodes to exactly the bytes of the equivalent ``TelemetryRecord``.
    """

    seq: int
    ts: float
    kind: str
    cls: int
    data: msgspec.Raw


class EncodedBatch(msgspec.Struct, frozen=True, kw_only=True):
    """The sending side's :class:`TelemetryBatch`."""

    v: int = SCHEMA_VERSION
    vehicle_id: str
    records: list[EncodedRecord]
