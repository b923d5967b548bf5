"""Simulated vehicles and devices that speak the real protocols, for tests, CI, benchmarks and the demo."""

from sim_hw.telemetry_source import SimulatedTelemetrySource

__version__ = "0.1.0"
__all__ = ["SimulatedTelemetrySource"]
