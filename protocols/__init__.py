"""The wire contract shared by the edge agent and the coordinator: topics, messages, codec."""

from protocols._broker_url import BrokerUrl, parse_broker_url
from protocols._codec import Message, decode, encode, encode_data
from protocols._commands import COMMAND_KINDS, GotoParams, MessageParams, NoParams, command_params
from protocols._errors import MalformedMessage, ProtocolError, SettingsError, TopicError
from protocols._geo import EARTH_RADIUS_M, great_circle_m
from protocols._messages import (
    MAX_PAYLOAD_BYTES,
    MAX_RECORDS_PER_BATCH,
    SCHEMA_VERSION,
    AckState,
    Command,
    CommandAck,
    EncodedBatch,
    EncodedRecord,
    RecordClass,
    TelemetryBatch,
    TelemetryRecord,
    VehicleStatus,
)
from protocols._settings_file import load_settings, merge, read_toml
from protocols._topics import (
    TOPIC_ROOT,
    UPLINK_CHANNELS,
    Channel,
    ParsedTopic,
    parse_topic,
    subscription_for,
    topic_for,
    validate_vehicle_id,
)

__all__ = [
    "COMMAND_KINDS",
    "EARTH_RADIUS_M",
    "MAX_PAYLOAD_BYTES",
    "MAX_RECORDS_PER_BATCH",
    "SCHEMA_VERSION",
    "TOPIC_ROOT",
    "UPLINK_CHANNELS",
    "AckState",
    "BrokerUrl",
    "Channel",
    "Command",
    "CommandAck",
    "EncodedBatch",
    "EncodedRecord",
    "GotoParams",
    "MalformedMessage",
    "Message",
    "MessageParams",
    "NoParams",
    "ParsedTopic",
    "ProtocolError",
    "RecordClass",
    "SettingsError",
    "TelemetryBatch",
    "TelemetryRecord",
    "TopicError",
    "VehicleStatus",
    "command_params",
    "decode",
    "encode",
    "encode_data",
    "great_circle_m",
    "load_settings",
    "merge",
    "parse_broker_url",
    "parse_topic",
    "read_toml",
    "subscription_for",
    "topic_for",
    "validate_vehicle_id",
]
