"""Model rollout end to end over a real broker: signed uploads to the coordinator's registry, a canary to one
of two agent processes, promotion, rollback, and the models a vehicle refuses (a file tampered with after
upload, one that fails its health check) while the version it runs keeps running."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from coordinator.embedded_store import EmbeddedStore
from edge_agent.models import SHIPPED
from protocols import decode_manifest, encode_manifest, generate_key, sha256_hex, sign, signed_message
from tests.harness import AgentProcess, CoordinatorProcess, Mosquitto, wait_until


class Fleet:
    def __init__(self, tmp_path: Path, mosquitto: Mosquitto) -> None:
        self.private, public = generate_key()
        self.public_key = tmp_path / "fleet.pub"
        self.public_key.write_bytes(public)
        workdir = tmp_path / "coordinator"
        workdir.mkdir()
        self.coord = CoordinatorProcess(workdir, mosquitto.url, env={
            "FLEETEDGE_COORDINATOR__MODELS__PUBLIC_KEY": str(self.public_key),
            "FLEETEDGE_COORDINATOR__MODELS__ROLLOUT_TICK_S": "0.5"})
        self.agents: dict[str, AgentProcess] = {}
        self.tmp_path = tmp_path

    def start(self, *vehicles: str) -> None:
        self.coord.start()
        self.operator = self.coord.create_key("operator")
        for vid in vehicles:
            workdir = self.tmp_path / f"agent-{vid}"
            workdir.mkdir()
            agent = AgentProcess(workdir, vid, self.coord.broker_url, {
                "vehicle": {"kind": "copter"}, "source": {"kind": "simulated", "rate_hz": 2},
                "models": {"public_key": str(self.public_key)}})
            agent.start()
            self.agents[vid] = agent

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        self.coord.stop()

    def model_files(self, version: str, *, broken_check: bool = False) -> tuple[bytes, bytes]:
        """The shipped battery model as ``version`` (a new version of the same graph)."""
        manifest = decode_manifest((SHIPPED / "battery-1.0.0.json").read_bytes())
        changes: dict[str, Any] = {"version": version}
        if broken_check:
            check = manifest.health_check
            changes["health_check"] = msgspec.structs.replace(check, outputs=[v * 2 for v in check.outputs])
        return (SHIPPED / "battery-1.0.0.onnx").read_bytes(), encode_manifest(
            msgspec.structs.replace(manifest, **changes))

    def signature(self, onnx: bytes, manifest_json: bytes) -> str:
        manifest = decode_manifest(manifest_json)
        return sign(self.private, signed_message(manifest.name, manifest.version, sha256_hex(onnx),
                                                 sha256_hex(manifest_json)))

    def upload(self, onnx: bytes, manifest_json: bytes, signature: str | None = None) -> Any:
        return self.coord.post("/v1/models", {
            "manifest_json": manifest_json.decode(), "onnx_base64": base64.b64encode(onnx).decode(),
            "signature": signature or self.signature(onnx, manifest_json)}, self.operator)

    def rollout(self) -> dict[str, Any]:
        found: dict[str, Any] = self.coord.get("/v1/models/battery/rollout")
        return found

    def running(self, expected: dict[str, list[str]], timeout: float = 30) -> dict[str, Any]:
        def there() -> dict[str, Any] | None:
            view = self.rollout()
            return view if {v: sorted(ids) for v, ids in view["running"].items()} == expected else None

        try:
            result: dict[str, Any] = wait_until(there, timeout, f"battery running as {expected}", interval=0.3)
        except (AssertionError, TimeoutError):
            print(self.rollout())
            raise
        return result


@pytest.fixture
def fleet(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[Fleet]:
    f = Fleet(tmp_path, mosquitto)
    try:
        f.start("drone-a", "drone-b")
        yield f
    finally:
        f.stop()


def test_canary_promote_and_rollback_and_the_models_a_vehicle_refuses(fleet: Fleet) -> None:
    for version in ("1.0.0", "1.1.0"):
        created = fleet.upload(*fleet.model_files(version))
        assert created.status_code == 201, created.text
    assert fleet.upload(*fleet.model_files("1.1.0")).status_code == 409  # versions never change
    fleet.running({"1.0.0": ["drone-a", "drone-b"]})  # the shipped version, as each reports

    canary = fleet.coord.post("/v1/models/battery/rollout", {"version": "1.1.0", "vehicles": ["drone-a"]},
                              fleet.operator)
    assert canary.status_code == 200, canary.text
    view = fleet.running({"1.1.0": ["drone-a"], "1.0.0": ["drone-b"]})
    assert view["rollout"]["canary"]["version"] == "1.1.0" and view["failed"] == {}
    installs = [c for c in fleet.coord.get("/v1/vehicles/drone-a/commands") if c["action"] == "install_model"]
    assert installs[0]["state"] == "completed" and "health check passed" in installs[0]["state_reason"]
    assert [c for c in fleet.coord.get("/v1/vehicles/drone-b/commands") if c["action"] == "install_model"] == []

    assert fleet.coord.post("/v1/models/battery/promote", {"version": "1.1.0"}, fleet.operator).status_code == 200
    fleet.running({"1.1.0": ["drone-a", "drone-b"]})
    back = fleet.coord.post("/v1/models/battery/rollback", {}, fleet.operator)
    assert back.status_code == 200 and back.json()["stable"] == "1.0.0"
    fleet.running({"1.0.0": ["drone-a", "drone-b"]})

    # A file tampered with after it was registered: the vehicle refuses it and keeps 1.0.0.
    onnx, manifest_json = fleet.model_files("1.2.0")
    assert fleet.upload(onnx, manifest_json).status_code == 201
    tampered = bytearray(onnx)
    tampered[-5] ^= 0x01
    with sqlite3.connect(fleet.coord.store_path) as db:
        db.execute("UPDATE blobs SET data = ? WHERE sha256 = ?", (bytes(tampered), hashlib.sha256(onnx).hexdigest()))
    fleet.coord.post("/v1/models/battery/rollout", {"version": "1.2.0", "vehicles": ["drone-a"]}, fleet.operator)
    view = wait_until(lambda: (lambda v: v if "drone-a" in v["failed"] else None)(fleet.rollout()), 30,
                      "drone-a refusing 1.2.0")
    assert view["failed"]["drone-a"]["version"] == "1.2.0"
    assert "does not match its sha256" in view["failed"]["drone-a"]["reason"]
    assert sorted(view["running"]["1.0.0"]) == ["drone-a", "drone-b"] and list(view["running"]) == ["1.0.0"]
    assert fleet.coord.post("/v1/models/battery/rollback", {}, fleet.operator).status_code == 200
    with sqlite3.connect(fleet.coord.store_path) as db:  # every version here shares that one file
        db.execute("UPDATE blobs SET data = ? WHERE sha256 = ?", (onnx, hashlib.sha256(onnx).hexdigest()))

    # One that fails its health check (signed, registered by a registry that did not check it): refused too.
    onnx, manifest_json = fleet.model_files("1.3.0", broken_check=True)
    store = EmbeddedStore(fleet.coord.store_path)
    try:
        store.put_blob(sha256_hex(onnx), onnx)
        store.put_blob(sha256_hex(manifest_json), manifest_json)
        store.add_model({"name": "battery", "version": "1.3.0", "onnx_sha256": sha256_hex(onnx),
                         "manifest_sha256": sha256_hex(manifest_json), "size_bytes": len(onnx),
                         "signature": fleet.signature(onnx, manifest_json), "uploaded_at": 0.0})
    finally:
        store.close()
    fleet.coord.post("/v1/models/battery/rollout", {"version": "1.3.0", "vehicles": ["drone-b"]}, fleet.operator)
    view = wait_until(lambda: (lambda v: v if "drone-b" in v["failed"] else None)(fleet.rollout()), 30,
                      "drone-b refusing 1.3.0")
    assert "health check failed" in view["failed"]["drone-b"]["reason"]
    assert sorted(view["running"]["1.0.0"]) == ["drone-a", "drone-b"]
    # The registry itself refuses such a model, and any that is not signed with the fleet key.
    refused = fleet.upload(onnx, manifest_json.replace(b'"1.3.0"', b'"1.4.0"'))
    assert refused.status_code == 422 and "health check failed" in refused.json()["detail"]
    onnx, manifest_json = fleet.model_files("1.5.0")
    other_key, _ = generate_key()
    forged = sign(other_key, signed_message("battery", "1.5.0", sha256_hex(onnx), sha256_hex(manifest_json)))
    refused = fleet.upload(onnx, manifest_json, forged)
    assert refused.status_code == 422 and "does not match the fleet key" in refused.json()["detail"]
    history = [h["what"] for h in fleet.rollout()["rollout"]["history"]]
    assert history[:4] == ["canary 1.1.0 to drone-a", "promoted 1.1.0 to every vehicle",
                           "rolled back 1.1.0 to 1.0.0", "canary 1.2.0 to drone-a"]
    assert json.dumps(fleet.coord.get("/v1/models"))  # listed
