"""``/v1/keys`` and ``/v1/audit``: API keys and the audit log, for admins."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel, Field

from coordinator.api.deps import AdminKey, StoreDep, unix_seconds
from coordinator.auth import KeyCache, Role, create_key, list_keys, revoke_key

router = APIRouter(prefix="/v1", tags=["admin"])


class KeyRequest(BaseModel):
    role: Literal["viewer", "operator", "admin"]
    name: str = Field(min_length=1, max_length=64, description="Who or what the key is for")


class CreatedKey(BaseModel):
    key: str = Field(description="The key itself: shown only now, store it safely")
    key_id: str
    role: str
    name: str


class KeyInfo(BaseModel):
    key_id: str
    name: str
    role: str
    created_at: float
    revoked_at: float | None


class AuditEntry(BaseModel):
    at: float
    key_id: str
    key_name: str
    role: str
    method: str
    path: str
    status: int
    client: str


@router.get("/keys", summary="List API keys (never their secrets)")
def get_keys(store: StoreDep, _key: AdminKey) -> list[KeyInfo]:
    return [KeyInfo(**k) for k in list_keys(store)]  # type: ignore[arg-type]


@router.post("/keys", status_code=status.HTTP_201_CREATED, summary="Create an API key; it is shown once")
def post_key(body: KeyRequest, store: StoreDep, _key: AdminKey) -> CreatedKey:
    key = create_key(store, Role(body.role), body.name)
    return CreatedKey(key=key, key_id=key.split("_")[1], role=body.role, name=body.name)


@router.delete("/keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Revoke an API key")
def delete_key(key_id: str, request: Request, store: StoreDep, _key: AdminKey) -> None:
    revoked = revoke_key(store, key_id)
    keys: KeyCache = request.app.state.keys
    keys.forget(key_id)
    if not revoked:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no active key with id {key_id!r}; GET /v1/keys lists them")


@router.get("/audit", summary="State-changing calls, newest first")
def get_audit(
    store: StoreDep,
    _key: AdminKey,
    since: Annotated[datetime | None, Query(description="Unix seconds or ISO 8601")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[AuditEntry]:
    return [AuditEntry(**row) for row in store.audit(since=unix_seconds(since), limit=limit)]
