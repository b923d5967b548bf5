"""Reposition moves: one idle vehicle asked to wait in a deficit cell, and what came of it.

    offered ──> moving ──> arrived       (within the SLA: the whole incentive)
       │  ^        ├────> late          (within the late grace: ``supply.incentive_late_credit`` of it)
       │  │        ├────> missed        (not there by the end of the grace: nothing)
       │  │        ├────> interrupted   (took an order on the way: ``supply.incentive_order_credit`` of it)
       │  │        └────> failed        (went offline, the go-to failed: nothing)
       │  └─ declined, no answer, offline: the next candidate is asked
       └─────────────> unfilled        (no candidate left)

Arrival is the coordinator's to judge, from the vehicle's own positions (a geofence around the cell's
centre), never from what the vehicle or driver says. A :class:`Move` is immutable; the store saves a new
version only over the one it was made from (compare and set on ``version``).
"""

from __future__ import annotations

import enum
import secrets

import msgspec


class MoveState(enum.StrEnum):
    OFFERED = "offered"
    MOVING = "moving"
    ARRIVED = "arrived"
    LATE = "late"
    MISSED = "missed"
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    UNFILLED = "unfilled"

    @property
    def final(self) -> bool:
        return self not in (MoveState.OFFERED, MoveState.MOVING)


OPEN_MOVE_STATES = frozenset({MoveState.OFFERED, MoveState.MOVING})


class MoveOffer(msgspec.Struct, frozen=True, kw_only=True):
    """One vehicle asked: a driver's offer, or a drone's or robot's go-to."""

    vehicle_id: str
    command_id: str
    offered_at: float
    incentive: float
    travel_s: float
    """Expected travel from where the vehicle was to the cell."""
    outcome: str = "open"
    """``open``, ``accepted``, ``declined``, ``timed_out``, ``offline``, ``not_sent`` or ``taken`` (the
    vehicle took an order first)."""
    reason: str = ""
    answered_at: float | None = None


class Move(msgspec.Struct, frozen=True, kw_only=True):
    move_id: str
    created_at: float
    kind: str
    """Vehicle kind the move is for (each candidate is of it)."""
    from_cell: str
    to_cell: str
    lat: float
    lon: float
    """Where to wait: the centre of ``to_cell``."""
    currency: str
    deficit: float = 1.0
    """How many vehicles short the cell was when the move was planned (the incentive's urgency)."""
    state: MoveState = MoveState.OFFERED
    offers: tuple[MoveOffer, ...] = ()
    candidates: tuple[str, ...] = ()
    """Vehicles to ask next, in turn."""
    accepted_at: float | None = None
    arrive_by: float | None = None
    """End of the SLA, set on acceptance."""
    start: tuple[float, float] | None = None
    """Where the vehicle was when it accepted."""
    finished_at: float | None = None
    arrived_at: float | None = None
    earned: float = 0.0
    """Incentive the driver earned (what is paid)."""
    empty_m: float = 0.0
    """Distance driven without a load for the move, from the vehicle's positions."""
    reason: str = ""
    version: int = 1

    @property
    def current(self) -> MoveOffer | None:
        return self.offers[-1] if self.offers else None

    @property
    def vehicle_id(self) -> str | None:
        return self.offers[-1].vehicle_id if self.offers else None

    @property
    def incentive(self) -> float:
        """The incentive of the current (or last) offer."""
        return self.offers[-1].incentive if self.offers else 0.0

    def next_version(self, **changes: object) -> Move:
        return msgspec.structs.replace(self, version=self.version + 1, **changes)

    def answered(self, outcome: str, reason: str, at: float, **changes: object) -> Move:
        """The next version with the current offer closed as ``outcome``."""
        offer = self.offers[-1]
        closed = msgspec.structs.replace(offer, outcome=outcome, reason=reason[:300], answered_at=at)
        return self.next_version(offers=(*self.offers[:-1], closed), **changes)


def new_move_id(now: float) -> str:
    """Ids sort by creation time and never collide."""
    return f"mv-{int(now * 1_000_000):014x}{secrets.token_hex(4)}"


encode_move = msgspec.msgpack.Encoder().encode
decode_move = msgspec.msgpack.Decoder(Move).decode
