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


COMMAND_KINDS: dict[str, type[_Params]] = {
    "goto": GotoParams,
    "return_to_launch": NoParams,
    "land": NoParams,
    "message": MessageParams,
}


def command_params(kind: str, params: dict[str, Any]) -> GotoParams | NoParams | MessageParams:
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
    return typed  # type: ignore[return-value]
