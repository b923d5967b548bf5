"""The reposition loop: sends the planned moves and follows each one to its end.

Every ``supply.reposition_interval_s`` (or on demand) it takes the transport plan
(:meth:`coordinator.supply.heatmap_service.HeatmapService.suggestions`, within the incentive budget left
for the hour) and turns each planned move into a :class:`~coordinator.supply.moves.Move`: a taxi's driver
gets a ``reposition`` offer with its incentive on the terminal, a drone or robot a ``goto``, expiring after
``supply.reposition_offer_timeout_s``. Each move also lists the next candidates: the other idle vehicles
of its kind in surplus cells, nearest first.

Every ``dispatch.tick_s`` it moves the open moves along, from what the store holds:

- offered: the vehicle accepts -> ``moving`` (the SLA clock starts); it declines, does not answer in
  time, goes offline, or takes an order first -> the next candidate is asked (none left: ``unfilled``);
- moving: a position of the vehicle inside the target cell or within ``supply.reposition_arrival_radius_m``
  of its centre -> ``arrived`` (within the SLA: the whole incentive is earned) or ``late`` (within
  ``supply.incentive_late_grace_s`` after it: ``supply.incentive_late_credit`` of it); the vehicle taking
  an order on the way -> ``interrupted`` (``supply.incentive_order_credit``); no arrival by the end of the
  grace, the go-to failing or the vehicle lost -> ``missed`` / ``failed``, nothing earned.

Like dispatch, it runs in one coordinator at a time (a lease named ``reposition``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import h3
import msgspec

from coordinator.command_sender import CommandSender, SendOutcome, issue_command
from coordinator.config import CoordinatorSettings
from coordinator.dispatch.dispatcher import ANSWER_GRACE_S, vehicle_lost
from coordinator.lease import Lease
from coordinator.orders import OrderState
from coordinator.store import CommandState, FleetPosition, FleetStore
from coordinator.supply.heatmap_service import HeatmapService
from coordinator.supply.moves import Move, MoveOffer, MoveState, new_move_id
from coordinator.supply.reposition import HUMAN_DRIVEN, incentive
from protocols import GotoParams, RepositionParams, great_circle_m

log = logging.getLogger(__name__)

REPOSITIONER = "reposition"
"""``issued_by`` of the commands repositioning sends."""
LEASE_NAME = "reposition"
MIN_STEP_M = 10.0
"""Position changes shorter than this are GPS noise, not driving (empty km)."""


@dataclass(slots=True)
class RepositionCounters:
    plans: int = 0
    moves: int = 0
    offers: int = 0
    not_sent: int = 0
    conflicts: int = 0
    last_round_ms: float = 0.0
    leader: bool = False


class Repositioner:
    def __init__(self, store: FleetStore, settings: CoordinatorSettings, sender: CommandSender | None,
                 heatmaps: HeatmapService) -> None:
        self.store = store
        self.supply = settings.supply
        self.dispatch = settings.dispatch
        self.sender = sender
        self.heatmaps = heatmaps
        self.lease = Lease(store, LEASE_NAME, max(5.0, 5 * settings.dispatch.tick_s))
        self.counters = RepositionCounters()
        self._lock = threading.Lock()
        self._planned_at = -float("inf")

    async def run(self) -> None:
        """Follow the moves every tick and plan new ones on the schedule, until cancelled."""
        while True:
            await asyncio.sleep(self.dispatch.tick_s)
            try:
                self.counters.leader = await asyncio.to_thread(self.lease.hold)
                if self.counters.leader:
                    await asyncio.to_thread(self.round)
            except Exception:
                log.exception("reposition round failed; retrying at the next tick")

    def round(self, now: float | None = None, *, plan: bool | None = None) -> list[Move]:
        """Move the open moves along; plan and send new ones when due (``plan`` forces or skips that).
        Returns the moves created."""
        with self._lock:
            started = time.perf_counter()
            now = time.time() if now is None else now
            orders = self.store.open_orders()
            on_order = {o.vehicle_id: o.order_id for o in orders
                        if o.vehicle_id is not None and o.state in (OrderState.ACCEPTED, OrderState.PICKED_UP)}
            offered_order = {o.vehicle_id for o in orders if o.vehicle_id is not None and o.state.vehicle_bound}
            open_moves = self.store.moves(open_only=True, limit=1 << 30)
            engaged = {m.vehicle_id for m in open_moves if m.vehicle_id is not None}
            round_state = _Round(self, now, on_order, offered_order, engaged)
            for move in sorted(open_moves, key=lambda m: m.move_id):
                round_state.advance(move)
            created: list[Move] = []
            due = now - self._planned_at >= self.supply.reposition_interval_s
            if plan or (plan is None and self.supply.reposition_enabled and due):
                self._planned_at = now
                created = round_state.plan()
            self.counters.last_round_ms = (time.perf_counter() - started) * 1000
            return created

    # -- what the moves cost --------------------------------------------------------------------------

    def committed(self, now: float) -> float:
        """Incentives committed by moves created in the last hour: earned by the finished ones, offered by
        the open ones."""
        total = 0.0
        for move in self.store.moves(since=now - 3600, limit=1 << 30):
            total += move.earned if move.state.final else move.incentive
        return total

    def budget_left(self, now: float) -> float:
        """What the next plan may offer: the hour's budget not yet committed, at most an interval's share."""
        per_hour = self.supply.incentive_budget_per_hour
        share = per_hour * min(1.0, self.supply.reposition_interval_s / 3600)
        return max(0.0, min(share, per_hour - self.committed(now)))

    def sla_s(self, travel_s: float) -> float:
        return max(self.supply.reposition_sla_min_s, self.supply.reposition_sla_factor * travel_s)

    def travel_s(self, kind: str, lat: float, lon: float, to_lat: float, to_lon: float) -> float:
        profile = self.dispatch.kinds[kind]
        return great_circle_m(lat, lon, to_lat, to_lon) * profile.detour_factor / profile.speed_m_s


class _Round:
    """One round's view of the fleet, read once, and the saves it makes."""

    def __init__(self, owner: Repositioner, now: float, on_order: dict[str, str], offered_order: set[str],
                 engaged: set[str]) -> None:
        self.owner = owner
        self.store = owner.store
        self.supply = owner.supply
        self.now = now
        self.on_order = on_order
        self.offered_order = offered_order
        self.engaged = engaged
        self._fleet: dict[str, FleetPosition] | None = None

    @property
    def fleet(self) -> dict[str, FleetPosition]:
        """The online vehicles with a position (read at the first need)."""
        if self._fleet is None:
            self._fleet = {v.vehicle_id: v for v in self.store.positions()}
        return self._fleet

    def _save(self, old: Move, new: Move) -> Move | None:
        if self.store.replace_move(old, new):
            if new.state is not old.state:
                log.info("reposition %s (%s -> %s): %s -> %s%s", new.move_id, new.vehicle_id, new.to_cell,
                         old.state.value, new.state.value, f" ({new.reason})" if new.reason else "")
            return new
        self.owner.counters.conflicts += 1
        return None

    # -- following a move ---------------------------------------------------------------------------

    def advance(self, move: Move) -> None:
        offer = move.current
        assert offer is not None
        vid = offer.vehicle_id
        command = self.store.command(vid, offer.command_id)
        answer = command.state_at(self.now) if command is not None else None
        state = answer.state if answer is not None else CommandState.NOT_SENT
        why = answer.reason if answer is not None else "the command was never stored"
        if move.state is MoveState.OFFERED:
            if vid in self.on_order:
                self._next(move, move.answered("taken", f"took order {self.on_order[vid]} first", self.now))
            elif state in (CommandState.ACCEPTED, CommandState.COMPLETED):
                vehicle = self.store.vehicle(vid)
                start = (vehicle["lat"], vehicle["lon"]) if vehicle and vehicle["lat"] is not None else None
                self._save(move, move.answered("accepted", "", self.now, state=MoveState.MOVING,
                                               accepted_at=self.now, start=start,
                                               arrive_by=self.now + self.owner.sla_s(offer.travel_s)))
            elif state is CommandState.REJECTED:
                silent = "did not answer" in why
                self._next(move, move.answered("timed_out" if silent else "declined", why, self.now))
            elif state in (CommandState.FAILED, CommandState.EXPIRED, CommandState.NOT_SENT):
                outcome = "not_sent" if state is CommandState.NOT_SENT else "timed_out"
                self._next(move, move.answered(outcome, why or state.value, self.now))
            elif command is not None and self.now > command.expires_at + ANSWER_GRACE_S:
                self._next(move, move.answered("timed_out", "no answer in time", self.now))
            elif vehicle_lost(self.store.vehicle(vid), self.now, self.owner.dispatch.vehicle_lost_after_s):
                self._next(move, move.answered("offline", f"{vid} went offline", self.now))
            else:
                self.engaged.add(vid)
            return
        # moving
        assert move.accepted_at is not None and move.arrive_by is not None
        track = self._track(vid, move.accepted_at)
        arrived_at = next((t for t, lat, lon in track if self._inside(move, lat, lon)), None)
        grace_end = move.arrive_by + self.supply.incentive_late_grace_s
        if arrived_at is not None and arrived_at <= grace_end:
            on_time = arrived_at <= move.arrive_by
            credit = 1.0 if on_time else self.supply.incentive_late_credit
            late = "" if on_time else f" ({arrived_at - move.arrive_by:.0f} s after the SLA)"
            self._finish(move, MoveState.ARRIVED if on_time else MoveState.LATE, track, arrived_at,
                         f"arrived {arrived_at - move.accepted_at:.0f} s after accepting{late}", credit)
        elif vid in self.on_order:
            self._finish(move, MoveState.INTERRUPTED, track, None, f"took order {self.on_order[vid]} on the way",
                         self.supply.incentive_order_credit)
        elif self.now > grace_end:
            self._finish(move, MoveState.MISSED, track, None,
                         f"not within {self.supply.reposition_arrival_radius_m:g} m of the cell by the end of "
                         "the SLA and its grace", 0.0)
        elif (move.kind not in HUMAN_DRIVEN and state in (CommandState.FAILED, CommandState.REJECTED)
              and "superseded" not in why):
            # A go-to that failed (a failsafe, the pilot took over); a driver's own give-up is not the
            # coordinator's verdict: the geofence and the SLA are.
            self._finish(move, MoveState.FAILED, track, None, f"{vid}: {why}", 0.0)
        elif vehicle_lost(self.store.vehicle(vid), self.now, self.owner.dispatch.vehicle_lost_after_s):
            self._finish(move, MoveState.FAILED, track, None, f"{vid} went offline", 0.0)
        else:
            self.engaged.add(vid)

    def _inside(self, move: Move, lat: float, lon: float) -> bool:
        if great_circle_m(lat, lon, move.lat, move.lon) <= self.supply.reposition_arrival_radius_m:
            return True
        return bool(h3.latlng_to_cell(lat, lon, h3.get_resolution(move.to_cell)) == move.to_cell)

    def _track(self, vid: str, since: float) -> list[tuple[float, float, float]]:
        """``(ts, lat, lon)`` of ``vid`` since ``since``, oldest first."""
        out = []
        for record in self.store.telemetry(vid, since=since, until=None, limit=10_000, kind="position"):
            lat, lon = record["data"].get("lat"), record["data"].get("lon")
            if isinstance(lat, int | float) and isinstance(lon, int | float):
                out.append((float(record["ts"]), float(lat), float(lon)))
        out.sort()
        return out

    def _finish(self, move: Move, state: MoveState, track: list[tuple[float, float, float]],
                arrived_at: float | None, reason: str, credit: float) -> None:
        # Empty distance: the path the positions trace from acceptance to the end, ignoring GPS jitter.
        end = arrived_at if arrived_at is not None else self.now
        empty = 0.0
        last = move.start
        for ts, lat, lon in track:
            if ts > end:
                break
            if last is None:
                last = (lat, lon)
                continue
            step = great_circle_m(last[0], last[1], lat, lon)
            if step >= MIN_STEP_M:
                empty += step
                last = (lat, lon)
        self._save(move, move.next_version(state=state, finished_at=self.now, arrived_at=arrived_at, reason=reason,
                                           earned=round(move.incentive * credit, 2), empty_m=round(empty, 1)))

    def _next(self, stored: Move, move: Move) -> None:
        """Ask the next candidate still free; ``unfilled`` when there is none. ``move`` is ``stored`` with
        its current offer closed."""
        candidates = list(move.candidates)
        while candidates:
            vid = candidates.pop(0)
            vehicle = self.fleet.get(vid)
            if vehicle is None or vid in self.offered_order or vid in self.engaged:
                continue
            offer = self._offer(vehicle, move.kind, move.lat, move.lon, move.deficit)
            if offer is None:
                continue
            if self._save(stored, move.next_version(offers=(*move.offers, offer), candidates=tuple(candidates),
                                                    state=MoveState.OFFERED)) is not None:
                self.engaged.add(vid)
            return
        self._save(stored, move.next_version(state=MoveState.UNFILLED, finished_at=self.now,
                                           reason=f"no candidate left after {len(move.offers)} offers"))

    def _offer(self, vehicle: FleetPosition, kind: str, lat: float, lon: float, deficit: float) -> MoveOffer | None:
        """Send one vehicle its reposition command: an offer to a driver, a go-to to a drone or robot."""
        vid = vehicle.vehicle_id
        travel = self.owner.travel_s(kind, vehicle.lat, vehicle.lon, lat, lon)
        paid = 0.0
        if kind in HUMAN_DRIVEN:
            paid = incentive(self.supply, travel, deficit)
            sla = self.owner.sla_s(travel)
            params: dict[str, Any] = msgspec.to_builtins(RepositionParams(
                lat=lat, lon=lon, radius_m=self.supply.reposition_arrival_radius_m, incentive=paid,
                currency=self.supply.currency, sla_s=round(sla),
                give_up_s=round(sla + self.supply.incentive_late_grace_s),
                title=f"{paid:.2f} {self.supply.currency} to wait here within {sla / 60:.0f} min"))
            action = "reposition"
        else:
            params = msgspec.to_builtins(GotoParams(lat=lat, lon=lon, alt_m=self.owner.dispatch.mission_alt_m))
            action = "goto"
        record, outcome, why = issue_command(self.store, self.owner.sender, vehicle_id=vid, action=action,
                                             params=params, ttl_s=self.supply.reposition_offer_timeout_s,
                                             issued_by=REPOSITIONER)
        if outcome is SendOutcome.NOT_SENT:
            self.owner.counters.not_sent += 1
            log.warning("reposition: %s for %s not sent: %s", action, vid, why)
            return None
        self.owner.counters.offers += 1
        return MoveOffer(vehicle_id=vid, command_id=record.command_id, offered_at=self.now, incentive=paid,
                         travel_s=round(travel, 1))

    # -- planning -----------------------------------------------------------------------------------

    def plan(self) -> list[Move]:
        owner = self.owner
        owner.counters.plans += 1
        plan = owner.heatmaps.suggestions(self.now, budget=owner.budget_left(self.now))
        if not plan.moves:
            return []
        planned = {m.vehicle_id for m in plan.moves}
        # Next candidates: idle vehicles of surplus cells that the plan leaves where they are.
        spare = [v for vid, v in self.fleet.items() if vid not in planned and vid not in self.engaged
                 and vid not in self.offered_order and self._cell(v) in plan.surplus]
        created = []
        for pm in plan.moves:
            others = sorted((owner.travel_s(pm.kind, v.lat, v.lon, pm.lat, pm.lon), v.vehicle_id)
                            for v in spare if v.kind == pm.kind)
            queue = [pm.vehicle_id, *(vid for travel, vid in others if travel <= self.supply.reposition_max_travel_s)]
            queue = queue[:self.supply.reposition_candidates]
            deficit = plan.deficit.get(pm.to_cell, 1.0)
            offer = None
            while queue and offer is None:
                vid = queue.pop(0)
                vehicle = self.fleet.get(vid)
                if vehicle is not None and vid not in self.engaged:
                    offer = self._offer(vehicle, pm.kind, pm.lat, pm.lon, deficit)
            if offer is None:
                continue
            move = Move(move_id=new_move_id(self.now), created_at=self.now, kind=pm.kind, from_cell=pm.from_cell,
                        to_cell=pm.to_cell, lat=pm.lat, lon=pm.lon, currency=self.supply.currency, deficit=deficit,
                        offers=(offer,), candidates=tuple(queue))
            self.store.add_move(move)
            self.engaged.add(offer.vehicle_id)
            owner.counters.moves += 1
            created.append(move)
        return created

    def _cell(self, vehicle: FleetPosition) -> str:
        return str(h3.latlng_to_cell(vehicle.lat, vehicle.lon, self.supply.heatmap_resolution))
