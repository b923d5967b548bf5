"""Property-based requests generated from the OpenAPI schema (schemathesis): no route answers 5xx."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from coordinator.api.app import create_app
from coordinator.auth import Role, create_key
from coordinator.config import CoordinatorSettings, DispatchSettings, ModelRegistrySettings, StoreSettings
from coordinator.dispatch.dispatcher import Dispatcher
from coordinator.embedded_store import EmbeddedStore
from coordinator.ingest_counters import IngestCounters
from coordinator.model_registry import ModelRegistry
from coordinator.store import Received
from coordinator.supply.heatmap_service import HeatmapService
from coordinator.supply.repositioner import Repositioner
from protocols import TelemetryBatch, TelemetryRecord, generate_key

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis comes with the dev extra")

# Loaded at import, as schemathesis parametrizes from the schema: a throwaway store in its own temp dir.
_dir = Path(tempfile.mkdtemp(prefix="fleetedge-fuzz-"))
_store = EmbeddedStore(_dir / "c.db")
_pub = _dir / "fleet.pub"
_pub.write_bytes(generate_key()[1])
_store.ingest([Received(TelemetryBatch(vehicle_id="drone-1", records=[
    TelemetryRecord(seq=1, ts=1_800_000_000.0, kind="position", data={"lat": 52.5, "lon": 13.4})]), 1.0)])
_ADMIN = {"Authorization": f"Bearer {create_key(_store, Role.ADMIN, 'fuzz')}"}
# As in a running coordinator: dispatch is there (with no broker, its commands are never sent).
_heatmaps = HeatmapService(_store, CoordinatorSettings())
app = create_app(_store, IngestCounters(), rate_limit_per_s=0, dispatcher=Dispatcher(_store, DispatchSettings(), None),
                 heatmaps=_heatmaps, repositioner=Repositioner(_store, CoordinatorSettings(), None, _heatmaps),
                 registry=ModelRegistry(_store, CoordinatorSettings(store=StoreSettings(path=str(_dir / "c.db")),
                                                                    models=ModelRegistrySettings(public_key=str(_pub)))))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_the_schema_allows_gets_a_server_error(case: Any) -> None:
    wait = (case.query or {}).get("wait_s")
    if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > 0.3:
        # The event feed's long poll may hold a request 30 s; a fraction of a second exercises the same code
        # (malformed values are left alone: they must still get a 422).
        case.query["wait_s"] = 0.3
    if case.path == "/v1/stream":
        case.query = {**(case.query or {}), "snapshots": 1, "interval_s": 0.2}  # a stream ends when told to
    response = case.call(headers=_ADMIN)
    assert response.status_code < 500, f"{case} -> {response.status_code}: {response.text[:300]}"
