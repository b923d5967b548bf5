"""What a :class:`~protocols.Command` can ask of a vehicle: its kinds and the params of each.

The coordinator only sends these; the agent checks a command's params against them before anything
runs, and rejects the command naming the field when they do not fit.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import msgspec

from protocols._errors import MalformedMessage

Latitude = Annotated[float, msgspec.Meta(ge=-90, le=90)]
Longitude = Annotated[float, msgspec.Meta(ge=-180, le=180)]


class _Params(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class GotoParams(_Params, frozen=True):
    """Fly or drive to a point; a copter on the ground takes off first."""

    lat: Latitude
    lon: Longitude
    alt_m: Annotated[float, msgspec.Meta(ge=0, le=500)] = 20.0
    """Height above home (ignored by ground vehicles)."""


class NoParams(_Params, frozen=True):
    pass


class MessageParams(_Params, frozen=True):
    """Show a message from dispatch on the driver terminal."""

    text: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


OrderId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class JobParams(_Params, frozen=True):
    """Serve an order: fly or drive pickup -> drop-off -> home (a vehicle with an autopilot, as a mission), or
    offer it to the driver on the terminal (a taxi), who accepts or declines."""

    order_id: OrderId
    pickup_lat: Latitude
    pickup_lon: Longitude
    dropoff_lat: Latitude
    dropoff_lon: Longitude
    alt_m: Annotated[float, msgspec.Meta(gt=0, le=500)] = 30.0
    """Mission altitude above home (ignored by ground vehicles)."""
    title: Annotated[str, msgspec.Meta(max_length=120)] = ""
    """Shown to the driver."""
    payload_kg: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    passengers: Annotated[int, msgspec.Meta(ge=0)] = 0
    deadline: float | None = None
    """Unix time the drop-off is due by (the vehicle's delivery-risk model watches it); None: no deadline."""


class CancelJobParams(_Params, frozen=True):
    """Stop serving an order: withdraw the offer, or abandon the mission and come home."""

    order_id: OrderId
    reason: Annotated[str, msgspec.Meta(max_length=200)] = ""


class RepositionParams(_Params, frozen=True):
    """Offer a human driver an incentive to wait in a cell where demand is expected. The driver accepts or
    declines on the terminal; once accepted, the command completes when the vehicle is within ``radius_m``
    of the point and fails when it is not there ``give_up_s`` after the driver accepted."""

    lat: Latitude
    lon: Longitude
    radius_m: Annotated[float, msgspec.Meta(gt=0, le=10_000)] = 300.0
    incentive: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    currency: Annotated[str, msgspec.Meta(min_length=3, max_length=3)] = "EUR"
    sla_s: Annotated[float, msgspec.Meta(gt=0)] = 900.0
    """Seconds from accepting to arriving for the whole incentive (shown to the driver)."""
    give_up_s: Annotated[float, msgspec.Meta(gt=0)] = 1800.0
    title: Annotated[str, msgspec.Meta(max_length=120)] = ""


Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
HttpUrl = Annotated[str, msgspec.Meta(pattern=r"^https?://", max_length=2048)]


class InstallModelParams(_Params, frozen=True):
    """Download a model version, check it (sha256, the fleet's signature, shapes, health check) and run it in
    place of the version running; on any failure the running one stays. A version installed before (a
    rollback) is taken from the vehicle's own copy."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
    version: Annotated[str, msgspec.Meta(pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$")]
    onnx_url: HttpUrl
    onnx_sha256: Sha256
    manifest_url: HttpUrl
    manifest_sha256: Sha256
    signature: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{128}$")]
    size_bytes: Annotated[int, msgspec.Meta(ge=1)]


CommandParams = (GotoParams | NoParams | MessageParams | JobParams | CancelJobParams | RepositionParams
                 | InstallModelParams)

COMMAND_KINDS: dict[str, type[_Params]] = {
    "goto": GotoParams,
    "return_to_launch": NoParams,
    "land": NoParams,
    "message": MessageParams,
    "job": JobParams,
    "cancel_job": CancelJobParams,
    "reposition": RepositionParams,
    "install_model": InstallModelParams,
}


def command_params(kind: str, params: dict[str, Any]) -> CommandParams:
    """The typed params of a command of ``kind``.

    Raises:
        MalformedMessage: the kind is unknown, or a param is missing, unknown or out of range (named).
    """
    schema = COMMAND_KINDS.get(kind)
    if schema is None:
        raise MalformedMessage("Command", f"unknown kind {kind!r}; known: {', '.join(COMMAND_KINDS)}")
    try:
        typed = msgspec.convert(params, schema)
    except msgspec.ValidationError as exc:
        raise MalformedMessage(f"{kind} params", str(exc)) from None
    if isinstance(typed, GotoParams) and not all(map(math.isfinite, (typed.lat, typed.lon, typed.alt_m))):
        raise MalformedMessage(f"{kind} params", "lat, lon and alt_m must be finite numbers")
    if isinstance(typed, RepositionParams) and not all(map(math.isfinite, (
            typed.lat, typed.lon, typed.radius_m, typed.incentive, typed.sla_s, typed.give_up_s))):
        raise MalformedMessage(f"{kind} params", "lat, lon, radius_m, incentive, sla_s and give_up_s must be finite")
    if isinstance(typed, JobParams) and not all(map(math.isfinite, (
            typed.pickup_lat, typed.pickup_lon, typed.dropoff_lat, typed.dropoff_lon, typed.alt_m, typed.payload_kg))):
        raise MalformedMessage(f"{kind} params", "positions, alt_m and payload_kg must be finite numbers")
    return typed  # type: ignore[return-value]
