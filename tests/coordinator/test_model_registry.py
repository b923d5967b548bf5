"""The model registry over a real store: what an upload must be, download links, who is in a canary, the
rollout's moves, and drift measured from synced predictions against the training reference."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from fastapi.testclient import TestClient

from coordinator.api.app import create_app
from coordinator.auth import Role, create_key
from coordinator.command_sender import CommandSender
from coordinator.config import BrokerSettings, CoordinatorSettings, ModelRegistrySettings, StoreSettings
from coordinator.errors import RegistryError
from coordinator.ingest_counters import IngestCounters
from coordinator.model_drift import drift_report, manifest_of, psi
from coordinator.model_registry import ModelRegistry, in_canary
from coordinator.model_rollout import ModelRollout
from coordinator.store import CommandEvent, CommandState, FleetStore, Received
from edge_agent.models import SHIPPED, load_shipped
from protocols import (
    Histogram,
    RecordClass,
    TelemetryBatch,
    TelemetryRecord,
    VehicleStatus,
    decode_manifest,
    encode_manifest,
    generate_key,
    sha256_hex,
    sign,
    signed_message,
)
from tests.harness import ROOT, Mosquitto

ONNX = (SHIPPED / "battery-1.0.0.onnx").read_bytes()
MANIFEST = (SHIPPED / "battery-1.0.0.json").read_bytes()


@pytest.fixture
def keys(tmp_path: Path) -> tuple[bytes, Path]:
    private, public = generate_key()
    path = tmp_path / "fleet.pub"
    path.write_bytes(public)
    return private, path


@pytest.fixture
def registry(store: FleetStore, keys: tuple[bytes, Path], tmp_path: Path) -> ModelRegistry:
    settings = CoordinatorSettings(store=StoreSettings(path=str(tmp_path / "c.db")),
                                   models=ModelRegistrySettings(public_key=str(keys[1]), link_ttl_s=60))
    return ModelRegistry(store, settings)


def signature(private: bytes, onnx: bytes = ONNX, manifest: bytes = MANIFEST, name: str = "battery",
              version: str = "1.0.0") -> str:
    return sign(private, signed_message(name, version, sha256_hex(onnx), sha256_hex(manifest)))


def test_an_upload_is_taken_only_signed_well_formed_and_running(registry: ModelRegistry,
                                                               keys: tuple[bytes, Path]) -> None:
    private = keys[0]
    with pytest.raises(RegistryError, match="does not match the fleet key"):
        registry.upload(MANIFEST, ONNX, signature(generate_key()[0]), "ops")
    with pytest.raises(RegistryError, match="does not match the fleet key"):  # signed as another version
        registry.upload(MANIFEST, ONNX, signature(private, version="2.0.0"), "ops")
    with pytest.raises(RegistryError, match=r"manifest: .*version"):
        bad = MANIFEST.replace(b'"1.0.0"', b'"one"')
        registry.upload(bad, ONNX, signature(private, manifest=bad), "ops")
    risk = (SHIPPED / "delivery_risk-1.0.0.onnx").read_bytes()
    with pytest.raises(RegistryError, match="must give one float32 output 'remaining_s'"):
        registry.upload(MANIFEST, risk, signature(private, onnx=risk), "ops")
    record = registry.upload(MANIFEST, ONNX, signature(private), "ops")
    assert record["onnx_sha256"] == sha256_hex(ONNX) and record["inputs"][0] == "remaining_pct"
    assert registry.store.blob(record["onnx_sha256"]) == ONNX
    with pytest.raises(RegistryError) as conflict:
        registry.upload(MANIFEST, ONNX, signature(private), "ops")
    assert conflict.value.status == 409


def test_without_a_fleet_key_nothing_is_taken(store: FleetStore, tmp_path: Path) -> None:
    plain = ModelRegistry(store, CoordinatorSettings(store=StoreSettings(path=str(tmp_path / "c.db"))))
    with pytest.raises(RegistryError, match=r"set models\.public_key") as refused:
        plain.upload(MANIFEST, ONNX, "0" * 128, "ops")
    assert refused.value.status == 503


def test_download_links_are_signed_and_expire(registry: ModelRegistry) -> None:
    sha = sha256_hex(ONNX)
    url = registry.link(sha, now=1000.0)
    expires = int(url.split("expires=")[1].split("&")[0])
    token = url.split("token=")[1]
    assert expires == 1060 and registry.link_valid(sha, expires, token, now=1059)
    assert not registry.link_valid(sha, expires, token, now=1061)  # expired
    assert not registry.link_valid(sha, expires + 3600, token, now=1000)  # expiry pushed out
    assert not registry.link_valid("0" * 64, expires, token, now=1000)  # another file


def test_a_growing_canary_keeps_its_vehicles() -> None:
    fleet = [f"v-{i}" for i in range(2000)]
    ten = {v for v in fleet if in_canary("battery", v, 0.10)}
    half = {v for v in fleet if in_canary("battery", v, 0.50)}
    assert 150 < len(ten) < 250 and 900 < len(half) < 1100 and ten <= half
    assert {v for v in fleet if in_canary("delivery_risk", v, 0.10)} != ten  # each model draws its own


def test_canary_promote_and_rollback(registry: ModelRegistry, keys: tuple[bytes, Path]) -> None:
    for version in ("1.0.0", "1.1.0"):
        manifest = MANIFEST.replace(b'"1.0.0"', f'"{version}"'.encode())
        registry.upload(manifest, ONNX, signature(keys[0], manifest=manifest, version=version), "ops")
    with pytest.raises(RegistryError, match="not registered"):
        registry.start("battery", "3.0.0", share=0.1, vehicles=[], by="ops")
    registry.start("battery", "1.0.0", share=None, vehicles=[], by="ops")  # stable everywhere
    state = registry.start("battery", "1.1.0", share=0.2, vehicles=["v-named"], by="ops")
    assert registry.desired(state, "v-named") == "1.1.0"
    outside = next(f"v-{i}" for i in range(100) if not in_canary("battery", f"v-{i}", 0.2))
    assert registry.desired(state, outside) == "1.0.0"
    state = registry.promote("battery", "1.1.0", "ops")
    assert state["stable"] == "1.1.0" and state["canary"] is None and state["previous"] == "1.0.0"
    with pytest.raises(RegistryError, match="no canary"):
        registry.promote("battery", None, "ops")
    state = registry.rollback("battery", "ops")
    assert state["stable"] == "1.0.0" and registry.desired(state, outside) == "1.0.0"
    with pytest.raises(RegistryError, match="no earlier stable version"):
        registry.rollback("battery", "ops")
    assert [h["what"] for h in state["history"]] == [
        "1.0.0 to every vehicle", "canary 1.1.0 to 20% of the fleet and v-named",
        "promoted 1.1.0 to every vehicle", "rolled back 1.1.0 to 1.0.0"]


def test_psi_is_zero_for_the_reference_and_large_for_a_shift() -> None:
    reference = Histogram(edges=[1.0, 2.0, 3.0], shares=[0.25, 0.25, 0.25, 0.25])
    rng = np.random.default_rng(1)
    same = list(rng.uniform(0, 4, 20_000))
    assert psi(reference, same) == pytest.approx(0.0, abs=0.005)
    assert psi(reference, [3.5] * 100) > 2.0
    assert psi(reference, []) is None


def training_samples(n: int) -> Any:
    spec = importlib.util.spec_from_file_location("train_edge_models", ROOT / "scripts" / "train_edge_models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.battery_samples(np.random.default_rng(99), n)[0]


def test_drift_is_measured_from_synced_predictions(registry: ModelRegistry, keys: tuple[bytes, Path]) -> None:
    registry.upload(MANIFEST, ONNX, signature(keys[0]), "ops")
    model = load_shipped(["battery"], providers=["CPUExecutionProvider"])["battery"]
    manifest = manifest_of(registry.store, "battery", "1.0.0")
    assert manifest is not None
    now = time.time()

    def sync(vehicle: str, rows: Any, seq0: int, ago_s: float) -> None:
        records = [TelemetryRecord(seq=seq0 + i, ts=now - ago_s + i * 0.1, kind="prediction",
                                   data={"model": "battery", "version": "1.0.0", "inputs": [float(v) for v in row],
                                         "output": model.predict([float(v) for v in row])})
                   for i, row in enumerate(rows)]
        for start in range(0, len(records), 500):
            registry.store.ingest([Received(TelemetryBatch(vehicle_id=vehicle, records=records[start:start + 500]),
                                            now)])

    like_training = training_samples(3000)
    sync("drone-1", like_training[:1500], 1, 1200)
    sync("drone-2", like_training[1500:], 1, 1200)
    calm = drift_report(registry.store, manifest, since=now - 3600, threshold=0.2)
    assert calm["samples"] == 3000 and calm["vehicles"] == 2 and calm["alerts"] == []
    assert all(v is not None and v < 0.1 for v in calm["inputs_psi"].values()) and calm["score_psi"] < 0.1

    # Then heavier payloads draw more current on every flight: the current and the score shift.
    heavy = like_training[:1500].copy()
    heavy[:, 2] *= 1.8
    sync("drone-1", heavy, 2001, 300)
    sync("drone-2", heavy, 2001, 300)
    shifted = drift_report(registry.store, manifest, since=now - 400, threshold=0.2)
    assert shifted["samples"] == 3000
    flagged = {a["what"] for a in shifted["alerts"]}
    assert "input current_a" in flagged and "score" in flagged
    assert "input remaining_pct" not in flagged


def test_a_rollout_sends_a_model_only_to_the_hardware_it_is_built_for(
        registry: ModelRegistry, keys: tuple[bytes, Path], store: FleetStore, mosquitto: Mosquitto) -> None:
    manifest = encode_manifest(msgspec.structs.replace(decode_manifest(MANIFEST), version="1.1.0",
                                                       hardware=["jetson-orin-px4"]))
    registry.upload(manifest, ONNX, signature(keys[0], manifest=manifest, version="1.1.0"), "ops")
    now = time.time()
    fleet = {"jet-1": "jetson-orin-px4", "pi-1": "rpi-pixhawk-ardupilot", "old-1": None}  # old-1 never said
    for vid, hardware in fleet.items():
        report = {"running": {"battery": "1.0.0"}, **({"hardware": hardware} if hardware else {})}
        store.ingest([Received(VehicleStatus(vehicle_id=vid, online=True, ts=now, kind="copter"), now),
                      Received(TelemetryBatch(vehicle_id=vid, records=[TelemetryRecord(
                          seq=1, ts=now, kind="models", cls=RecordClass.EVENT, data=report)]), now)])
    registry.start("battery", "1.1.0", share=None, vehicles=[], by="ops")
    sender = CommandSender(BrokerSettings(client_id=f"test-{time.monotonic_ns()}"), broker_host="127.0.0.1",
                           broker_port=mosquitto.port)
    sender.start()
    try:
        assert sender.wait_connected(10)
        assert ModelRollout(store, registry, registry.settings, sender).round() == 2
    finally:
        sender.stop()
    # A vehicle that has not said what it is gets it and checks for itself (the agent refuses a mismatch).
    sent = {vid: [c.action for c in store.commands(vid, limit=10)] for vid in fleet}
    assert sent == {"jet-1": ["install_model"], "pi-1": [], "old-1": ["install_model"]}
    app = create_app(store, IngestCounters(), rate_limit_per_s=0, registry=registry)
    client = TestClient(app, headers={"Authorization": f"Bearer {create_key(store, Role.VIEWER, 'ops')}"})
    view = client.get("/v1/models/battery/rollout").json()
    assert view["incompatible"] == {"1.1.0": ["pi-1"]} and sorted(view["pending"]["1.1.0"]) == ["jet-1", "old-1"]


def test_an_install_goes_again_only_when_another_version_was_installed_since(
        registry: ModelRegistry, keys: tuple[bytes, Path], store: FleetStore, mosquitto: Mosquitto) -> None:
    for version in ("1.0.0", "1.1.0"):
        manifest = encode_manifest(msgspec.structs.replace(decode_manifest(MANIFEST), version=version))
        registry.upload(manifest, ONNX, signature(keys[0], manifest=manifest, version=version), "ops")
    seq = [0]
    clock = [time.time()]

    def reports(running: str) -> None:
        seq[0] += 1
        clock[0] += 10
        store.ingest([Received(TelemetryBatch(vehicle_id="d1", records=[TelemetryRecord(
            seq=seq[0], ts=clock[0], kind="models", cls=RecordClass.EVENT,
            data={"running": {"battery": running}})]), clock[0])])

    def installs() -> list[str]:
        return [c.params["version"] for c in store.commands("d1", limit=20) if c.action == "install_model"]

    def completes(version: str) -> None:
        command = next(c for c in store.commands("d1", limit=20) if c.params["version"] == version)
        clock[0] += 10
        store.add_command_event("d1", command.command_id, CommandEvent(CommandState.COMPLETED, clock[0], ""))

    store.ingest([Received(VehicleStatus(vehicle_id="d1", online=True, ts=clock[0], kind="copter"), clock[0])])
    reports("1.0.0")
    sender = CommandSender(BrokerSettings(client_id=f"test-{time.monotonic_ns()}"), broker_host="127.0.0.1",
                           broker_port=mosquitto.port)
    sender.start()
    try:
        assert sender.wait_connected(10)
        rollout = ModelRollout(store, registry, registry.settings, sender)
        registry.start("battery", "1.1.0", share=None, vehicles=[], by="ops")
        assert rollout.round() == 1 and installs() == ["1.1.0"]
        completes("1.1.0")
        # Its probation check rolled 1.1.0 back: the vehicle said why; the same install is not pushed again.
        reports("1.0.0")
        assert rollout.round() == 0
        # The operator moves the fleet to 1.0.0 and, once fixed, back to 1.1.0: both go out.
        registry.start("battery", "1.0.0", share=None, vehicles=[], by="ops")
        reports("1.1.0")  # what it runs after a manual reinstall, say
        assert rollout.round() == 1 and installs()[0] == "1.0.0"
        completes("1.0.0")
        reports("1.0.0")
        registry.start("battery", "1.1.0", share=None, vehicles=[], by="ops")
        assert rollout.round() == 1 and installs()[0] == "1.1.0" and len(installs()) == 3
        assert rollout.round() == 0, "sent and in flight: not again"
    finally:
        sender.stop()
