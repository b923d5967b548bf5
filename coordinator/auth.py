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


def verify_key(store: FleetStore, presented: str) -> ApiKey | None:
    """The key's identity and role, or None if it is unknown, malformed or revoked."""
    prefix, _, rest = presented.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != "fe" or not key_id or not secret:
        return None
    found = store.active_api_key(key_id)
    if found is None or not hmac.compare_digest(found[2], hashlib.sha256(secret.encode()).digest()):
        return None
    return ApiKey(key_id, found[0], Role(found[1]))


def list_keys(store: FleetStore) -> list[dict[str, object]]:
    return store.api_keys()


def revoke_key(store: FleetStore, key_id: str) -> bool:
    return store.revoke_api_key(key_id, time.time())
