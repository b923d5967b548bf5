"""The FleetEdge coordinator: ingests the fleet's telemetry, keeps live state, serves ops over REST."""

__version__ = "0.1.0"
