"""API keys with roles. A key is shown once when created; only its SHA-256 is stored.

A key reads ``fe_<key id>_<secret>``: the id finds the row without scanning, the secret is compared in
constant time. Keys are 32 random bytes, so a fast hash is enough (no password stretching needed).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from coordinator.store import FleetStore


class Role(enum.StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        order = [Role.VIEWER, Role.OPERATOR, Role.ADMIN]
        return order.index(self) >= order.index(needed)


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    name: str
    role: Role


def create_key(store: FleetStore, role: Role, name: str) -> str:
    """Create a key and return it; it cannot be shown again."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    store.add_api_key(key_id, name, role.value, hashlib.sha256(secret.encode()).digest(), time.time())
    return f"fe_{key_id}_{secret}"


def _split(presented: str) -> tuple[str, str] | None:
    prefix, _, rest = presented.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != "fe" or not key_id or not secret:
        return None
    return key_id, secret


def _check(key_id: str, secret: str, found: tuple[str, str, bytes] | None) -> ApiKey | None:
    if found is None or not hmac.compare_digest(found[2], hashlib.sha256(secret.encode()).digest()):
        return None
    return ApiKey(key_id, found[0], Role(found[1]))


def verify_key(store: FleetStore, presented: str) -> ApiKey | None:
    """The key's identity and role, or None if it is unknown, malformed or revoked."""
    parts = _split(presented)
    return None if parts is None else _check(*parts, store.active_api_key(parts[0]))


class KeyCache:
    """Active keys as the store had them a moment ago, so most requests cost no store round trip.

    A key revoked through this coordinator stops at once; one revoked through another coordinator sharing
    the store stops within ``ttl_s``. Unknown keys are never cached: a new key works at once everywhere.
    """

    def __init__(self, store: FleetStore, *, ttl_s: float = 5.0, max_keys: int = 10_000) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._max_keys = max_keys
        self._keys: dict[str, tuple[float, tuple[str, str, bytes]]] = {}

    async def verify(self, presented: str) -> ApiKey | None:
        parts = _split(presented)
        if parts is None:
            return None
        key_id, secret = parts
        now = time.monotonic()
        cached = self._keys.get(key_id)
        if cached is not None and cached[0] > now:
            return _check(key_id, secret, cached[1])
        found = await run_in_threadpool(self._store.active_api_key, key_id)
        if found is None:
            self._keys.pop(key_id, None)
            return None
        if len(self._keys) >= self._max_keys:
            self._keys.clear()
        self._keys[key_id] = (now + self._ttl_s, found)
        return _check(key_id, secret, found)

    def forget(self, key_id: str) -> None:
        self._keys.pop(key_id, None)


def list_keys(store: FleetStore) -> list[dict[str, object]]:
    return store.api_keys()


def revoke_key(store: FleetStore, key_id: str) -> bool:
    return store.revoke_api_key(key_id, time.time())
