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
    with store.transaction() as db:
        db.execute("INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL)",
                   (key_id, name, role.value, hashlib.sha256(secret.encode()).digest(), time.time()))
    return f"fe_{key_id}_{secret}"


def verify_key(store: FleetStore, presented: str) -> ApiKey | None:
    """The key's identity and role, or None if it is unknown, malformed or revoked."""
    prefix, _, rest = presented.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != "fe" or not key_id or not secret:
        return None
    row = store.connection().execute(
        "SELECT name, role, secret_hash FROM api_keys WHERE key_id = ? AND revoked_at IS NULL", (key_id,)).fetchone()
    if row is None or not hmac.compare_digest(row[2], hashlib.sha256(secret.encode()).digest()):
        return None
    return ApiKey(key_id, row[0], Role(row[1]))


def list_keys(store: FleetStore) -> list[dict[str, object]]:
    return [{"key_id": k, "name": n, "role": r, "created_at": c, "revoked_at": rv} for k, n, r, c, rv in
            store.connection().execute("SELECT key_id, name, role, created_at, revoked_at FROM api_keys")]


def revoke_key(store: FleetStore, key_id: str) -> bool:
    with store.transaction() as db:
        return db.execute("UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                          (time.time(), key_id)).rowcount > 0
