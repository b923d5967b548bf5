"""The model registry: signed ONNX models by name and version, their files by content hash, and which version
each vehicle should run.

An upload is taken only when its manifest is well formed, its signature verifies with the fleet's public key
(``models.public_key``), and the model runs the way its manifest says (one float32 input of the manifest's
width, its health check passed: the checks every vehicle makes again before it loads it). Files are kept in
the store under their sha256, so several coordinators on one Redis serve the same bytes; vehicles fetch them
through links signed with the coordinator's URL key, valid ``models.link_ttl_s``.

A rollout per model name: a ``stable`` version for every vehicle, and at most one ``canary`` version for a
share of the fleet (chosen by a hash of name and vehicle, so the same vehicles stay in it as it grows) or
for named vehicles. ``promote`` makes the canary stable; ``rollback`` returns to the stable before. Each
change is saved by compare-and-set on the rollout's ``revision``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coordinator.config import CoordinatorSettings
from coordinator.errors import ConfigError, RegistryError
from coordinator.store import FleetStore
from protocols import (
    InstallModelParams,
    MalformedMessage,
    SignatureError,
    decode_manifest,
    read_key,
    sha256_hex,
    signed_message,
    verify,
)

URL_KEY_BYTES = 32


def url_key(settings: CoordinatorSettings) -> bytes:
    """The secret that signs download links, created (0600) on first use."""
    path = Path(settings.models.url_key_file or Path(settings.store.path).resolve().parent / "model-urls.key")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(f"key 'models.url_key_file': cannot read {path}: {exc.strerror}") from None
    key = secrets.token_bytes(URL_KEY_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".model-urls-")
    with os.fdopen(fd, "wb") as out:
        out.write(key)
    os.chmod(tmp, 0o600)
    try:
        os.link(tmp, path)  # never overwrites one another coordinator created meanwhile
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return path.read_bytes()


def running_models(vehicle: dict[str, Any]) -> dict[str, str]:
    """What a vehicle last reported running, by model name (its latest ``models`` record)."""
    report = vehicle["latest"].get("models") or {}
    running = report.get("running")
    return {str(k): str(v) for k, v in running.items()} if isinstance(running, dict) else {}


def reported_hardware(vehicle: dict[str, Any]) -> str | None:
    """The hardware profile a vehicle says it is in its latest ``models`` record (None: it has not said)."""
    hardware = (vehicle["latest"].get("models") or {}).get("hardware")
    return str(hardware) if hardware else None


def built_for(record: dict[str, Any], hardware: str | None) -> bool:
    """Whether a registered model may go to a vehicle of ``hardware``: built for ``any`` or for it. A vehicle
    that has not said what it is gets it, and checks for itself (it refuses a model not built for it)."""
    built = record.get("hardware") or ["any"]
    return "any" in built or hardware is None or hardware in built


def in_canary(name: str, vehicle_id: str, share: float) -> bool:
    """Whether ``vehicle_id`` is in the first ``share`` of the fleet for model ``name`` (stable as it grows)."""
    digest = hashlib.sha256(f"{name}/{vehicle_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


class ModelRegistry:
    def __init__(self, store: FleetStore, settings: CoordinatorSettings) -> None:
        self.store = store
        self.settings = settings.models
        try:
            self.public_key = read_key(self.settings.public_key) if self.settings.public_key else None
        except SignatureError as exc:
            raise ConfigError(f"key 'models.public_key': {exc}") from None
        self.base_url = (self.settings.public_url or f"http://{settings.api.host}:{settings.api.port}").rstrip("/")
        self._url_key = url_key(settings)

    # -- uploads ------------------------------------------------------------------------------------

    def upload(self, manifest_json: bytes, onnx: bytes, signature: str, uploaded_by: str) -> dict[str, Any]:
        """Check and register a model version.

        Raises:
            RegistryError: why it was refused (422, 409 if the version exists, 503 without a fleet key).
        """
        if self.public_key is None:
            raise RegistryError("the registry has no fleet public key: set models.public_key (see "
                                "`fleet-coordinator models keygen`)", 503)
        if len(onnx) > self.settings.max_file_mb * 2**20:
            raise RegistryError(f"onnx_base64: the file is {len(onnx) / 2**20:.1f} MB, above models.max_file_mb "
                                f"({self.settings.max_file_mb:g})", 413)
        try:
            manifest = decode_manifest(manifest_json)
        except MalformedMessage as exc:
            raise RegistryError(f"manifest: {exc}") from None
        onnx_sha, manifest_sha = sha256_hex(onnx), sha256_hex(manifest_json)
        try:
            verify(self.public_key, signed_message(manifest.name, manifest.version, onnx_sha, manifest_sha), signature)
        except SignatureError as exc:
            raise RegistryError(f"signature: {exc}; sign with `fleet-coordinator models sign`") from None
        self._check_runs(manifest_json, onnx)
        record = {"name": manifest.name, "version": manifest.version, "onnx_sha256": onnx_sha,
                  "manifest_sha256": manifest_sha, "size_bytes": len(onnx), "signature": signature,
                  "inputs": [i.name for i in manifest.inputs], "output": manifest.output.name,
                  "hardware": manifest.hardware, "description": manifest.description,
                  "uploaded_by": uploaded_by, "uploaded_at": time.time()}
        self.store.put_blob(onnx_sha, onnx)
        self.store.put_blob(manifest_sha, manifest_json)
        if not self.store.add_model(record):
            raise RegistryError(f"{manifest.name} {manifest.version} is registered already; versions never change: "
                                "upload a new version", 409)
        return record

    @staticmethod
    def _check_runs(manifest_json: bytes, onnx: bytes) -> None:
        """The checks a vehicle makes before it loads a model, made before the fleet ever sees it."""
        from edge_agent.errors import ModelError
        from edge_agent.models import EdgeModel

        manifest = decode_manifest(manifest_json)
        with tempfile.TemporaryDirectory(prefix="fleetedge-upload-") as tmp:
            path = Path(tmp) / "model.onnx"
            path.write_bytes(onnx)
            try:
                EdgeModel.load(path, manifest, providers=["CPUExecutionProvider"], threads=1)
            except ModelError as exc:
                raise RegistryError(f"onnx_base64: {exc}") from None

    # -- download links -----------------------------------------------------------------------------

    def _token(self, sha256: str, expires: int) -> str:
        return hmac.new(self._url_key, f"{sha256}:{expires}".encode(), hashlib.sha256).hexdigest()

    def link(self, sha256: str, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + self.settings.link_ttl_s)
        return f"{self.base_url}/v1/model-files/{sha256}?expires={expires}&token={self._token(sha256, expires)}"

    def link_valid(self, sha256: str, expires: int, token: str, now: float | None = None) -> bool:
        if expires < (time.time() if now is None else now):
            return False
        return hmac.compare_digest(self._token(sha256, expires), token)

    def install_params(self, record: dict[str, Any]) -> InstallModelParams:
        return InstallModelParams(
            name=record["name"], version=record["version"], onnx_url=self.link(record["onnx_sha256"]),
            onnx_sha256=record["onnx_sha256"], manifest_url=self.link(record["manifest_sha256"]),
            manifest_sha256=record["manifest_sha256"], signature=record["signature"],
            size_bytes=record["size_bytes"])

    # -- rollouts -----------------------------------------------------------------------------------

    def _registered(self, name: str, version: str) -> dict[str, Any]:
        record = self.store.model(name, version)
        if record is None:
            raise RegistryError(f"version: {name} {version} is not registered; upload it first", 404)
        return record

    def _change(self, name: str, change: dict[str, Any], what: str, by: str) -> dict[str, Any]:
        for _ in range(5):
            current = self.store.rollout(name) or {"name": name, "revision": 0, "stable": None, "canary": None,
                                                   "history": []}
            new = {**current, **change, "revision": current["revision"] + 1,
                   "history": [*current["history"][-49:], {"at": time.time(), "what": what, "by": by}]}
            if self.store.replace_rollout(name, current["revision"], new):
                return new
        raise RegistryError(f"the rollout of {name} keeps changing under this request; try again", 409)

    def start(self, name: str, version: str, *, share: float | None, vehicles: Sequence[str], by: str,
              ) -> dict[str, Any]:
        """A canary of ``version``: to ``share`` of the fleet or to ``vehicles`` (neither: everywhere)."""
        self._registered(name, version)
        current = self.store.rollout(name)
        if share is None and not vehicles:
            return self._change(name, {"stable": version, "canary": None}, f"{version} to every vehicle", by)
        if current is not None and current["stable"] == version:
            raise RegistryError(f"version: {version} is already the stable version of {name}", 409)
        chosen = sorted(set(vehicles))
        canary = {"version": version, "share": share or 0.0, "vehicles": chosen, "since": time.time()}
        whom = ([f"{share:.0%} of the fleet"] if share else []) + ([", ".join(chosen)] if chosen else [])
        target = " and ".join(whom)
        return self._change(name, {"canary": canary}, f"canary {version} to {target}", by)

    def promote(self, name: str, version: str | None, by: str) -> dict[str, Any]:
        current = self.store.rollout(name)
        canary = current["canary"] if current else None
        if canary is None or (version is not None and canary["version"] != version):
            raise RegistryError(f"version: no canary {version or ''} of {name} to promote".replace("  ", " "), 409)
        # Before the first promotion the fleet runs what it shipped with: that (when registered) is what a
        # rollback returns to.
        previous = current["stable"] if current and current["stable"] else self._most_run(name, canary["version"])
        return self._change(name, {"stable": canary["version"], "canary": None, "previous": previous},
                            f"promoted {canary['version']} to every vehicle", by)

    def _most_run(self, name: str, besides: str) -> str | None:
        """The registered version of ``name`` most vehicles run, other than ``besides``."""
        counts = Counter(v for vehicle in self.store.vehicles()
                         if (v := running_models(vehicle).get(name)) and v != besides)
        for version, _ in counts.most_common():
            if self.store.model(name, version) is not None:
                return version
        return None

    def rollback(self, name: str, by: str) -> dict[str, Any]:
        """Drop the canary; with none, return the stable version to the one before it."""
        current = self.store.rollout(name)
        if current is None:
            raise RegistryError(f"{name} has no rollout to roll back", 409)
        if current["canary"] is not None:
            return self._change(name, {"canary": None}, f"rolled back canary {current['canary']['version']}", by)
        previous = current.get("previous")
        if previous is None:
            raise RegistryError(f"{name} has no earlier stable version to roll back to", 409)
        return self._change(name, {"stable": previous, "previous": None},
                            f"rolled back {current['stable']} to {previous}", by)

    @staticmethod
    def desired(rollout: dict[str, Any], vehicle_id: str) -> str | None:
        """The version ``vehicle_id`` should run (None: the rollout does not say)."""
        canary = rollout.get("canary")
        if canary is not None and (vehicle_id in canary["vehicles"] or (
                canary["share"] > 0 and in_canary(rollout["name"], vehicle_id, canary["share"]))):
            return str(canary["version"])
        stable = rollout.get("stable")
        return str(stable) if stable is not None else None


def decode_upload(onnx_base64: str) -> bytes:
    """Raises RegistryError naming the field."""
    try:
        return base64.b64decode(onnx_base64, validate=True)
    except ValueError:
        raise RegistryError("onnx_base64: not base64") from None
