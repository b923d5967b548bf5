"""``/v1/models``: the model registry (signed uploads, versions), rollouts (canary, promote, rollback) and where
each version runs; ``/v1/model-files``: the files, for vehicles holding a signed link."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from coordinator.api.deps import OperatorKey, StoreDep, ViewerKey
from coordinator.errors import RegistryError
from coordinator.model_drift import drift_report, manifest_of
from coordinator.model_registry import ModelRegistry, built_for, decode_upload, reported_hardware, running_models
from coordinator.model_rollout import check_drift

router = APIRouter(tags=["models"])
NAME = r"^[a-z][a-z0-9_]{0,39}$"
VERSION = r"^[0-9]+\.[0-9]+\.[0-9]+$"


def _registry(request: Request) -> ModelRegistry:
    found: ModelRegistry | None = request.app.state.registry
    if found is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "this coordinator keeps no model registry")
    return found


def _refused(exc: RegistryError) -> HTTPException:
    return HTTPException(exc.status, str(exc))


class UploadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    manifest_json: str = Field(min_length=2, max_length=1_000_000,
                               description="the manifest file (protocols.ModelManifest) exactly as signed")
    onnx_base64: str = Field(min_length=1, description="the ONNX file, base64")
    signature: str = Field(pattern=r"^[0-9a-f]{128}$", description="`fleet-coordinator models sign` of the "
                                                                   "two files, hex")


@router.post("/v1/models", status_code=status.HTTP_201_CREATED,
             summary="Upload a signed model version (ONNX + manifest); checked before it is taken")
def upload(body: UploadRequest, request: Request, response: Response, key: OperatorKey) -> dict[str, Any]:
    registry = _registry(request)
    try:
        record = registry.upload(body.manifest_json.encode(), decode_upload(body.onnx_base64), body.signature,
                                 key.name)
    except RegistryError as exc:
        raise _refused(exc) from None
    response.headers["Location"] = f"/v1/models/{record['name']}/{record['version']}"
    return record


@router.get("/v1/models", summary="Registered model versions, newest first")
def list_models(store: StoreDep, _key: ViewerKey,
                name: Annotated[str | None, Query(pattern=NAME)] = None) -> list[dict[str, Any]]:
    return store.models(name)


@router.get("/v1/models/{name}/rollout", summary="The rollout of a model and where every version runs")
def rollout(name: Annotated[str, Path(pattern=NAME)], store: StoreDep, request: Request,
            _key: ViewerKey) -> dict[str, Any]:
    registry = _registry(request)
    state = store.rollout(name)
    if state is None and not store.models(name):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no model {name!r} is registered")
    running: dict[str, list[str]] = {}
    pending: dict[str, list[str]] = {}
    incompatible: dict[str, list[str]] = {}
    failed: dict[str, dict[str, Any]] = {}
    records: dict[str, dict[str, Any] | None] = {}
    for vehicle in store.vehicles():
        vid = vehicle["vehicle_id"]
        version = running_models(vehicle).get(name)
        if version is not None:
            running.setdefault(version, []).append(vid)
        report = vehicle["latest"].get("models") or {}
        failure = (report.get("failed") or {}).get(name)
        if failure:
            failed[vid] = failure
        want = registry.desired(state, vid) if state is not None and vehicle["online"] else None
        if want is not None and want != version:
            if want not in records:
                records[want] = store.model(name, want)
            record = records[want]
            if record is not None and not built_for(record, reported_hardware(vehicle)):
                incompatible.setdefault(want, []).append(vid)  # never sent: built for other hardware
            else:
                pending.setdefault(want, []).append(vid)
    return {"name": name, "rollout": state, "running": running, "pending": pending, "incompatible": incompatible,
            "failed": failed}


@router.get("/v1/models/{name}/drift", summary="Input and score drift (PSI against the training reference) of a "
                                             "version, from the predictions the vehicles synced")
def drift(name: Annotated[str, Path(pattern=NAME)], store: StoreDep, request: Request, _key: ViewerKey,
          version: Annotated[str, Query(pattern=VERSION)],
          hours: Annotated[float, Query(gt=0, le=24 * 7, description="window ending now")] = 1.0,
          ) -> dict[str, Any]:
    registry = _registry(request)
    manifest = manifest_of(store, name, version)
    if manifest is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{name} {version} is not registered")
    return drift_report(store, manifest, since=time.time() - hours * 3600,
                        threshold=registry.settings.drift_psi_alert)


@router.get("/v1/model-drift", summary="Drift alerts of every version a rollout names, checked now")
def drift_alerts(store: StoreDep, request: Request, _key: ViewerKey) -> list[dict[str, Any]]:
    return check_drift(store, _registry(request).settings)


@router.get("/v1/models/{name}/{version}", summary="One model version: files' sha256, signature, inputs")
def get_model(name: Annotated[str, Path(pattern=NAME)], version: Annotated[str, Path(pattern=VERSION)],
              store: StoreDep, _key: ViewerKey) -> dict[str, Any]:
    record = store.model(name, version)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{name} {version} is not registered")
    manifest = store.blob(record["manifest_sha256"])
    return {**record, "manifest": None if manifest is None else json.loads(manifest)}


class RolloutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(pattern=VERSION)
    share: float | None = Field(None, gt=0, le=1, description="canary to this share of the fleet")
    vehicles: list[str] = Field(default_factory=list, max_length=10_000,
                                description="canary to these vehicles (with share: these and the share)")
    all: bool = Field(False, description="no canary: make it the stable version everywhere at once")


@router.post("/v1/models/{name}/rollout", summary="Start a canary (share or vehicles), or roll out everywhere")
def start_rollout(name: Annotated[str, Path(pattern=NAME)], body: RolloutRequest, request: Request,
                  key: OperatorKey) -> dict[str, Any]:
    if not body.all and body.share is None and not body.vehicles:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            "share or vehicles: say who gets the canary (or all: true for every vehicle)")
    try:
        return _registry(request).start(name, body.version, share=None if body.all else body.share,
                                        vehicles=[] if body.all else body.vehicles, by=key.name)
    except RegistryError as exc:
        raise _refused(exc) from None


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str | None = Field(None, pattern=VERSION, description="the canary expected (a guard)")


@router.post("/v1/models/{name}/promote", summary="Make the canary the stable version on every vehicle")
def promote(name: Annotated[str, Path(pattern=NAME)], body: PromoteRequest, request: Request,
            key: OperatorKey) -> dict[str, Any]:
    try:
        return _registry(request).promote(name, body.version, key.name)
    except RegistryError as exc:
        raise _refused(exc) from None


@router.post("/v1/models/{name}/rollback",
             summary="Drop the canary (its vehicles go back to stable), or with none, the stable to the one before")
def rollback(name: Annotated[str, Path(pattern=NAME)], request: Request, key: OperatorKey) -> dict[str, Any]:
    try:
        return _registry(request).rollback(name, key.name)
    except RegistryError as exc:
        raise _refused(exc) from None


@router.get("/v1/model-files/{sha256}", summary="A model file, for a vehicle holding a signed link (no API key)",
            responses={200: {"content": {"application/octet-stream": {}}}})
def model_file(sha256: Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")], request: Request, store: StoreDep,
               expires: Annotated[int, Query(ge=0)], token: Annotated[str, Query(pattern=r"^[0-9a-f]{64}$")],
               ) -> Response:
    if not _registry(request).link_valid(sha256, expires, token):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the link is invalid or expired; the coordinator sends a "
                                                       "fresh one with the next install")
    data = store.blob(sha256)
    if data is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no file {sha256}")
    return Response(data, media_type="application/octet-stream")
