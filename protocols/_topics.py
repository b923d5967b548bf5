"""The MQTT topic layout.

Every vehicle lives in its own namespace, ``fleetedge/v1/<vehicle_id>/...``, so a broker ACL with
the client's user name in the pattern (Mosquitto's ``pattern write fleetedge/v1/%u/up/#``) confines
a device to its own topics:

    fleetedge/v1/<vid>/up/telemetry   vehicle -> cloud   QoS 1   TelemetryBatch (bulk telemetry)
    fleetedge/v1/<vid>/up/events      vehicle -> cloud   QoS 1   TelemetryBatch (events and alerts)
    fleetedge/v1/<vid>/up/acks        vehicle -> cloud   QoS 1   CommandAck
    fleetedge/v1/<vid>/status         vehicle -> cloud   QoS 1   VehicleStatus, retained, also the Last Will
    fleetedge/v1/<vid>/down/commands  cloud -> vehicle   QoS 1   Command
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from protocols._errors import TopicError

TOPIC_ROOT = "fleetedge/v1"

# Letters, digits, '-', '_' and '.': safe in topics (no '/', '+', '#'), file names and URLs.
VEHICLE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_VEHICLE_ID = re.compile(VEHICLE_ID_PATTERN)


class Channel(enum.StrEnum):
    """The part of a vehicle's namespace a message travels on."""

    TELEMETRY = "up/telemetry"
    EVENTS = "up/events"
    ACKS = "up/acks"
    STATUS = "status"
    COMMANDS = "down/commands"


UPLINK_CHANNELS = (Channel.TELEMETRY, Channel.EVENTS, Channel.ACKS, Channel.STATUS)


def validate_vehicle_id(vehicle_id: str) -> str:
    """Return ``vehicle_id`` if it can name a topic namespace, else raise :class:`TopicError`."""
    if not _VEHICLE_ID.match(vehicle_id):
        raise TopicError(
            f"vehicle id {vehicle_id!r} is not valid: use 1-64 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit"
        )
    return vehicle_id


def topic_for(vehicle_id: str, channel: Channel) -> str:
    """The topic of ``channel`` in ``vehicle_id``'s namespace."""
    return f"{TOPIC_ROOT}/{validate_vehicle_id(vehicle_id)}/{channel.value}"


def subscription_for(channel: Channel) -> str:
    """A wildcard subscription to ``channel`` of every vehicle (the coordinator's view)."""
    return f"{TOPIC_ROOT}/+/{channel.value}"


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    vehicle_id: str
    channel: Channel


_CHANNELS = {c.value: c for c in Channel}


def parse_topic(topic: str) -> ParsedTopic:
    """Split a FleetEdge topic into vehicle id and channel.

    Raises:
        TopicError: the topic is outside the layout.
    """
    prefix = TOPIC_ROOT + "/"
    if not topic.startswith(prefix):
        raise TopicError(f"topic {topic!r} is not under {TOPIC_ROOT}/")
    vehicle_id, _, rest = topic[len(prefix) :].partition("/")
    channel = _CHANNELS.get(rest)
    if channel is None:
        raise TopicError(f"topic {topic!r} names no known channel (expected one of {sorted(_CHANNELS)})")
    return ParsedTopic(validate_vehicle_id(vehicle_id), channel)
