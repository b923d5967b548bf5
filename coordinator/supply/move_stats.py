"""What repositioning achieved over a window: offers and their answers, arrivals within the SLA, money and
empty kilometres."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from coordinator.supply.moves import Move, MoveState


def move_stats(moves: Sequence[Move], *, currency: str) -> dict[str, Any]:
    offers = Counter(o.outcome for m in moves for o in m.offers)
    states = Counter(m.state.value for m in moves)
    answered = offers["accepted"] + offers["declined"] + offers["timed_out"]
    accepted_finished = [m for m in moves if m.accepted_at is not None and m.state.final]
    on_time = states[MoveState.ARRIVED.value]
    arrivals = [m.arrived_at - m.accepted_at for m in moves
                if m.arrived_at is not None and m.accepted_at is not None]
    human = [m for m in moves if any(o.incentive > 0 for o in m.offers)]
    decline_reasons = Counter(o.reason.split(":")[-1].strip() or "unspecified"
                              for m in moves for o in m.offers if o.outcome == "declined")
    return {
        "moves": len(moves),
        "by_state": {s.value: states[s.value] for s in MoveState},
        "offers": sum(offers.values()),
        "offers_by_outcome": dict(offers),
        "acceptance_rate": round(offers["accepted"] / answered, 4) if answered else None,
        "decline_reasons": dict(decline_reasons),
        "arrived_within_sla": on_time,
        "arrived_late": states[MoveState.LATE.value],
        "arrival_within_sla_rate": round(on_time / len(accepted_finished), 4) if accepted_finished else None,
        "mean_arrival_s": round(sum(arrivals) / len(arrivals), 1) if arrivals else None,
        "incentive_offered": round(sum(m.incentive for m in human if m.accepted_at is not None), 2),
        "incentive_spent": round(sum(m.earned for m in moves), 2),
        "currency": currency,
        "empty_km": round(sum(m.empty_m for m in moves) / 1000, 3),
    }
