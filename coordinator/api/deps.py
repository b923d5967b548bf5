"""Dependencies shared by the routes: the store and API-key authentication with roles.

They are ``async`` and do no blocking work on the common path (a cached key), so a request pays for one
worker-thread hop at most: its route's own store call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import msgspec
from fastapi import Depends, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from coordinator.api.rate_limit import KeyRateLimiter, retry_after_header
from coordinator.auth import ApiKey, KeyCache, Role
from coordinator.ingest_counters import IngestCounters
from coordinator.store import FleetStore

_json = msgspec.json.Encoder()


def unix_seconds(moment: datetime | None) -> float | None:
    """A query's time (Unix seconds or ISO 8601, parsed by pydantic) as Unix seconds; no zone means UTC."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def json_response(body: Any, status_code: int = 200) -> Response:
    """A JSON response encoded straight from the store's dicts: the hot routes skip pydantic's second pass
    (their shape is the route's declared model; the API tests hold them to it)."""
    return Response(_json.encode(body), status_code=status_code, media_type="application/json")


Q = TypeVar("Q", bound=BaseModel)


def query_of(model: type[Q], request: Request) -> Q:
    """The request's query parameters validated by ``model``, for hot routes that skip FastAPI's per-request
    parameter introspection (most of a cheap request's time); a bad one is the same 422 FastAPI sends."""
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("query", *e["loc"])}
                                      for e in exc.errors(include_url=False)]) from None


def query_openapi(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting ``model``'s fields as the route's query parameters (see :func:`query_of`)."""
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    parameters = []
    for name, field in schema["properties"].items():
        parameters.append({"name": name, "in": "query", "required": name in required, "schema": field,
                           **({"description": field["description"]} if "description" in field else {})})
    return {"parameters": parameters}


async def get_store(request: Request) -> FleetStore:
    store: FleetStore = request.app.state.store
    return store


async def get_ingest_counters(request: Request) -> IngestCounters:
    counters: IngestCounters = request.app.state.ingest_counters
    return counters


StoreDep = Annotated[FleetStore, Depends(get_store)]
IngestCountersDep = Annotated[IngestCounters, Depends(get_ingest_counters)]


def require(role: Role) -> Callable[..., Awaitable[ApiKey]]:
    """A dependency that admits keys of ``role`` or higher."""

    # Headers are read here rather than declared as parameters: FastAPI's per-parameter parsing costs more
    # than the rest of a cached key check, and every request pays it.
    async def check(request: Request) -> ApiKey:
        authorization = request.headers.get("authorization")
        presented = request.headers.get("x-api-key")
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise HTTPException(status.HTTP_401_UNAUTHORIZED,
                                    "Authorization header must be 'Bearer <api key>'",
                                    headers={"WWW-Authenticate": "Bearer"})
            presented = token.strip()
        if not presented:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED,
                                "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'; "
                                "create one with `fleet-coordinator keys create --role viewer`",
                                headers={"WWW-Authenticate": "Bearer"})
        keys: KeyCache = request.app.state.keys
        key = await keys.verify(presented)
        request.state.api_key = key
        if key is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "the API key is unknown or revoked",
                                headers={"WWW-Authenticate": "Bearer"})
        if not key.role.allows(role):
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"this needs the {role.value} role; key {key.name!r} has {key.role.value}")
        limiter: KeyRateLimiter = request.app.state.rate_limiter
        wait_s = limiter.check(key.key_id)
        if wait_s:
            raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                                f"key {key.name!r} is over its limit of {limiter.rate_per_s:g} requests/s "
                                f"(bursts of {limiter.burst}); retry after {wait_s:.2f} s",
                                headers={"Retry-After": retry_after_header(wait_s)})
        return key

    return check


ViewerKey = Annotated[ApiKey, Depends(require(Role.VIEWER))]
OperatorKey = Annotated[ApiKey, Depends(require(Role.OPERATOR))]
AdminKey = Annotated[ApiKey, Depends(require(Role.ADMIN))]
