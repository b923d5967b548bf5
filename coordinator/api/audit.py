"""The audit log: every state-changing REST call (who, what, when, and how it ended), refused ones included."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from coordinator.auth import ApiKey
from coordinator.store import FleetStore

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def audit_middleware(store: FleetStore) -> Callable[[Request, Callable[[Request], Awaitable[Response]]],
                                                     Awaitable[Response]]:
    async def record(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        if request.method in STATE_CHANGING:
            key: ApiKey | None = getattr(request.state, "api_key", None)
            client = request.client.host if request.client else ""
            await run_in_threadpool(
                store.record_audit, at=time.time(), key_id=key.key_id if key else "", method=request.method,
                key_name=key.name if key else "(no valid key)", role=key.role.value if key else "",
                path=request.url.path, status=response.status_code, client=client)
        return response

    return record
