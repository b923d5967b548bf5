"""Drivers between the edge agent and the vehicle's devices."""

from firmware_bridge._source import RecordSink, TelemetrySource

__all__ = ["RecordSink", "TelemetrySource"]
