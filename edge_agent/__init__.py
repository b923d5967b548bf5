"""The FleetEdge edge agent: runs on the vehicle computer, keeps every record, syncs when it can."""

__version__ = "0.1.0"
