"""Drivers between the edge agent and the vehicle's devices: MAVLink autopilots, NMEA GPS receivers and
driver terminals, over serial, UDP and TCP."""

from firmware_bridge._errors import BridgeError, DeviceUrlError, LinkError, UnknownMode
from firmware_bridge._links import ByteLink, DeviceUrl, open_link, parse_device_url
from firmware_bridge._mavlink import (
    DEFAULT_STREAM_RATES_HZ,
    BridgeCounters,
    CommandResult,
    MavlinkAutopilot,
    MissionItem,
)
from firmware_bridge._mavlink_telemetry import VehicleState
from firmware_bridge._nmea import NmeaCounters, NmeaGps, NmeaParser
from firmware_bridge._source import RecordSink, TelemetrySource
from firmware_bridge._terminal import DriverTerminal, OfferOutcome, TerminalCounters

__all__ = [
    "DEFAULT_STREAM_RATES_HZ",
    "BridgeCounters",
    "BridgeError",
    "ByteLink",
    "CommandResult",
    "DeviceUrl",
    "DeviceUrlError",
    "DriverTerminal",
    "LinkError",
    "MavlinkAutopilot",
    "MissionItem",
    "NmeaCounters",
    "NmeaGps",
    "NmeaParser",
    "OfferOutcome",
    "RecordSink",
    "TelemetrySource",
    "TerminalCounters",
    "UnknownMode",
    "VehicleState",
    "open_link",
    "parse_device_url",
]
