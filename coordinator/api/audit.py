"""The audit log: every state-changing REST call (who, what, when, and how it ended), refused ones included."""

from __future__ import annotations

import time

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from coordinator.api.response_status import ResponseStatus
from coordinator.auth import ApiKey
from coordinator.store import FleetStore

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class AuditMiddleware:
    """Plain ASGI (no per-request task group): reads pass straight through at no cost."""

    def __init__(self, app: ASGIApp, store: FleetStore) -> None:
        self._app = app
        self._store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in STATE_CHANGING:
            await self._app(scope, receive, send)
            return
        status = ResponseStatus(send)
        try:
            await self._app(scope, receive, status.send)
        finally:
            # The auth dependency leaves the key it checked in the request's state (None: refused).
            key: ApiKey | None = scope.get("state", {}).get("api_key")
            client = scope.get("client")
            await run_in_threadpool(
                self._store.record_audit, at=time.time(), key_id=key.key_id if key else "", method=scope["method"],
                key_name=key.name if key else "(no valid key)", role=key.role.value if key else "",
                path=scope["path"], status=status.code, client=client[0] if client else "")
