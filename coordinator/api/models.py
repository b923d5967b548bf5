"""Request and response bodies of the REST API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Vehicle(BaseModel):
    vehicle_id: str
    online: bool | None = Field(description="From the retained status and Last Will; null before any status")
    first_seen: float
    last_seen: float = Field(description="Unix time of the last message from the vehicle")
    status_ts: float | None
    agent_version: str
    last_seq: int = Field(description="Highest record sequence number received")
    kind: str = Field(description="copter, rover, taxi... as the vehicle's status says; empty if unknown")
    lat: float | None
    lon: float | None
    h3: str | None = Field(description="H3 cell of the latest position (resolution store.h3_resolution)")
    latest: dict[str, dict[str, Any]] = Field(description="Newest record of each kind, by kind")


class VehicleList(BaseModel):
    count: int
    vehicles: list[Vehicle]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page")


class TelemetryRecordOut(BaseModel):
    seq: int
    ts: float
    kind: str
    cls: str
    data: dict[str, Any]


class TelemetryPage(BaseModel):
    vehicle_id: str
    count: int
    records: list[TelemetryRecordOut]
    next_since: float | None = Field(description="Pass as `since` for the next page; null on the last page")


class VehicleStats(BaseModel):
    accepted: int = Field(description="Records stored (each (vehicle, seq) once)")
    duplicates: int = Field(description="Records received again and dropped")
    rejected: int = Field(description="Malformed messages on this vehicle's topics")
    gaps: int = Field(description="Sequence numbers below max_seq neither received nor reported dropped by the edge")
    evicted_at_edge: int = Field(description="Records the edge evicted to stay under its disk cap")
    lost_at_edge: int = Field(description="Records lost with a quarantined (corrupt) edge database")
    max_seq: int


class IngestStats(BaseModel):
    connected: bool
    messages: int
    records_accepted: int
    records_duplicate: int
    rejected: int
    lag_s: float


class Stats(BaseModel):
    vehicles: dict[str, VehicleStats]
    totals: VehicleStats
    ingest: IngestStats


class Health(BaseModel):
    status: str
    broker_connected: bool
