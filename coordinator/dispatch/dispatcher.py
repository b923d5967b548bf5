"""The dispatch loop: every ``dispatch.tick_s`` (and at once when an order is placed) it moves every open
order along and assigns the ones waiting for a vehicle.

For each open order, from what the store holds:

- past its deadline -> ``expired`` (a vehicle holding it is told to drop it);
- ``assigned``: the job command's acks decide: accepted -> ``accepted``; declined, failed, expired, never
  sent or unanswered ``accept_timeout_s`` after it was due -> back to ``pending``, that vehicle excluded
  (after ``max_attempts`` vehicles: ``rejected``);
- ``accepted`` / ``picked_up``: a position record within ``arrival_radius_m`` of the pickup ->
  ``picked_up``, then of the drop-off -> ``delivered`` (a vehicle reporting its job completed counts as
  delivered too); the job failing, or the vehicle offline for ``vehicle_lost_after_s``, puts the order
  back in the pool before pickup and fails it after.

Then one matching round (:class:`coordinator.dispatch.matcher.Matcher`) over the pending orders, the
assigned ones not yet accepted (which move only for ``reassign_gain_s``) and the online vehicles that hold
no accepted order. Each new assignment becomes a ``job`` command (QoS 1, expiring when the vehicle must
have accepted); a vehicle that loses an order is sent ``cancel_job``.

Every transition is saved by compare-and-set, so a cancellation over REST in the same moment wins or
loses whole; the loser sees the new version at the next round. Coordinators sharing a store take turns by
a lease: one runs the rounds, the others stand by and take over within ``LEASE_TICKS`` ticks (at least
``MIN_LEASE_S``) of its last round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import msgspec

from coordinator.command_sender import CommandSender, SendOutcome, issue_command
from coordinator.config import DispatchSettings
from coordinator.dispatch.eta_model import OnnxEtaModel
from coordinator.dispatch.matcher import DispatchOrder, DispatchVehicle, Matcher
from coordinator.lease import Lease
from coordinator.orders import Order, OrderState
from coordinator.store import CommandState, FleetStore
from protocols import CancelJobParams, JobParams, great_circle_m

log = logging.getLogger(__name__)

DISPATCHER = "dispatch"
"""``issued_by`` of the commands dispatch sends."""
ANSWER_GRACE_S = 10.0
LEASE_NAME = "dispatch"
LEASE_TICKS = 5
MIN_LEASE_S = 5.0
"""How long past a job's expiry dispatch still waits for the vehicle's own word (a decline or time-out)."""


@dataclass(slots=True)
class DispatchCounters:
    rounds: int = 0
    assigned: int = 0
    reassigned: int = 0
    returned_to_pool: int = 0
    delivered: int = 0
    failed: int = 0
    expired: int = 0
    rejected: int = 0
    conflicts: int = 0
    last_round_ms: float = 0.0
    last_match_ms: float = 0.0
    leader: bool = False


class Dispatcher:
    def __init__(self, store: FleetStore, settings: DispatchSettings, sender: CommandSender | None) -> None:
        self.store = store
        self.settings = settings
        self.sender = sender
        self.matcher = Matcher(settings, OnnxEtaModel(settings.eta_model) if settings.eta_model else None)
        self.counters = DispatchCounters()
        self.lease = Lease(store, LEASE_NAME, max(MIN_LEASE_S, LEASE_TICKS * settings.tick_s))
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Rounds run on a worker thread; one at a time, whoever asks.
        self._round_lock = threading.Lock()

    def wake(self) -> None:
        """Start a round now (an order was placed or cancelled); safe from any thread."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        """Run rounds until cancelled; a failing round is logged and the next one tries again."""
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.tick_s):
                        await self._wake.wait()
                self._wake.clear()
                try:
                    if await asyncio.to_thread(self._lead):
                        await asyncio.to_thread(self.round)
                except Exception:
                    log.exception("dispatch round failed; retrying at the next tick")
        finally:
            self.matcher.close()

    def _lead(self) -> bool:
        """Whether this coordinator runs dispatch now (holding or taking the shared lease)."""
        self.counters.leader = self.lease.hold()
        return self.counters.leader

    # -- one round --------------------------------------------------------------------------------------

    def round(self, now: float | None = None) -> None:
        with self._round_lock:
            started = time.perf_counter()
            now = time.time() if now is None else now
            open_orders = self.store.open_orders()
            # Only the vehicles holding orders are read to move those along; the fleet's free vehicles only
            # when some order waits for one. A quiet round reads next to nothing.
            held = {o.vehicle_id for o in open_orders if o.state.vehicle_bound and o.vehicle_id is not None}
            vehicles = {vid: v for vid in held if (v := self.store.vehicle(vid)) is not None}
            orders = [o for o in (self._advance(o, vehicles, now) for o in open_orders) if o is not None]
            if any(o.state in (OrderState.PENDING, OrderState.ASSIGNED) for o in orders):
                vehicles.update((v["vehicle_id"], v) for v in self.store.vehicles(online=True))
                self._match(orders, vehicles, now)
            self.counters.rounds += 1
            self.counters.last_round_ms = (time.perf_counter() - started) * 1000

    def _save(self, old: Order, new: Order) -> Order | None:
        """``new`` if saved; None if another writer got there first (the next round sees theirs)."""
        if self.store.replace_order(old, new):
            log.info("order %s: %s -> %s%s", new.order_id, old.state.value, new.state.value,
                     f" ({new.history[-1].reason})" if new.history[-1].reason else "")
            return new
        self.counters.conflicts += 1
        return None

    def _lost(self, vehicle: dict[str, Any] | None, now: float) -> bool:
        return vehicle_lost(vehicle, now, self.settings.vehicle_lost_after_s)

    def _advance(self, order: Order, vehicles: dict[str, dict[str, Any]], now: float) -> Order | None:
        """The order after whatever happened to it since the last round (None if it left the pool)."""
        if order.deadline is not None and now > order.deadline:
            self._cancel_job(order, "the order expired")
            self.counters.expired += 1
            return self._save(order, order.moved(OrderState.EXPIRED, "the deadline passed before delivery", at=now))
        if order.state is OrderState.PENDING:
            return order
        vid = order.vehicle_id
        assert vid is not None and order.command_id is not None
        command = self.store.command(vid, order.command_id)
        answer = command.state_at(now) if command is not None else None
        state = answer.state if answer is not None else CommandState.NOT_SENT
        why = f": {answer.reason}" if answer is not None and answer.reason else ""
        vehicle = vehicles.get(vid)
        if order.state is OrderState.ASSIGNED:
            if state in (CommandState.ACCEPTED, CommandState.COMPLETED):
                return self._save(order, order.moved(OrderState.ACCEPTED, f"{vid} accepted", at=now))
            if state in (CommandState.REJECTED, CommandState.FAILED, CommandState.EXPIRED, CommandState.NOT_SENT):
                verb = {CommandState.REJECTED: "declined", CommandState.FAILED: "failed"}.get(state, "never answered")
                return self._back_to_pool(order, f"{vid} {verb}{why}", now)
            if command is not None and now > command.expires_at + ANSWER_GRACE_S:
                self._cancel_job(order, "no answer in time")
                return self._back_to_pool(order, f"{vid} did not answer within {self.settings.accept_timeout_s:g} s",
                                          now)
            if self._lost(vehicle, now):
                self._cancel_job(order, "the vehicle went offline")
                return self._back_to_pool(order, f"{vid} went offline", now, exclude=False)
            return order
        # accepted or picked up: the vehicle is on its way
        if state in (CommandState.FAILED, CommandState.REJECTED) or self._lost(vehicle, now):
            cause = f"{vid} failed the job{why}" if state in (CommandState.FAILED, CommandState.REJECTED) else (
                f"{vid} has been offline for {self.settings.vehicle_lost_after_s:g} s")
            if order.state is OrderState.PICKED_UP:
                self._cancel_job(order, "the order failed")
                self.counters.failed += 1
                return self._save(order, order.moved(OrderState.FAILED, f"{cause} with the load aboard", at=now))
            self._cancel_job(order, "the order went to another vehicle")
            return self._back_to_pool(order, f"{cause} before pickup", now)
        current = order
        if current.state is OrderState.ACCEPTED and self._reached(vid, current, current.pickup, now):
            saved = self._save(current, current.moved(OrderState.PICKED_UP, f"{vid} reached the pickup", at=now))
            if saved is None:
                return None
            current = saved
        if current.state is OrderState.PICKED_UP and self._reached(vid, current, current.dropoff, now):
            self.counters.delivered += 1
            return self._save(current, current.moved(OrderState.DELIVERED, f"{vid} reached the drop-off", at=now))
        if state is CommandState.COMPLETED:
            self.counters.delivered += 1
            return self._save(current, current.moved(OrderState.DELIVERED, f"{vid} reports the job done", at=now))
        return current

    def _reached(self, vid: str, order: Order, place: Any, now: float) -> bool:
        """Any position of ``vid`` since the order's last transition within the arrival radius of ``place``."""
        since = order.history[-1].at - 5.0 if order.history else order.created_at
        for record in self.store.telemetry(vid, since=since, until=None, limit=10_000, kind="position"):
            lat, lon = record["data"].get("lat"), record["data"].get("lon")
            if isinstance(lat, int | float) and isinstance(lon, int | float) and great_circle_m(
                    place.lat, place.lon, lat, lon) <= self.settings.arrival_radius_m:
                return True
        return False

    def _back_to_pool(self, order: Order, reason: str, now: float, *, exclude: bool = True) -> Order | None:
        self.counters.returned_to_pool += 1
        excluded = order.excluded
        if exclude and order.vehicle_id and order.vehicle_id not in excluded:
            excluded = (*excluded, order.vehicle_id)
        if order.attempts >= self.settings.max_attempts:
            self.counters.rejected += 1
            return self._save(order, order.moved(
                OrderState.REJECTED, f"{reason}; {order.attempts} vehicles have had it, none will take it", at=now,
                excluded=excluded))
        return self._save(order, order.moved(OrderState.PENDING, reason, at=now, excluded=excluded))

    # -- matching ---------------------------------------------------------------------------------------

    def _match(self, orders: list[Order], vehicles: dict[str, dict[str, Any]], now: float) -> None:
        busy = {o.vehicle_id for o in orders if o.state in (OrderState.ACCEPTED, OrderState.PICKED_UP)}
        pool = [o for o in orders if o.state in (OrderState.PENDING, OrderState.ASSIGNED)]
        free = [v for vid, v in vehicles.items() if vid not in busy and v["online"] and v["lat"] is not None
                and v["kind"] in self.settings.kinds]
        by_id = {o.order_id: o for o in pool}
        started = time.perf_counter()
        result = self.matcher.match([_dispatch_order(o) for o in pool], [_dispatch_vehicle(v) for v in free], now)
        self.counters.last_match_ms = (time.perf_counter() - started) * 1000
        for a in result.assignments:
            order = by_id[a.order_id]
            if order.state is OrderState.ASSIGNED and order.vehicle_id == a.vehicle_id:
                continue
            if order.state is OrderState.ASSIGNED:
                self._cancel_job(order, "the order went to a nearer vehicle")
                self.counters.reassigned += 1
            vehicle = vehicles[a.vehicle_id]
            distance = great_circle_m(vehicle["lat"], vehicle["lon"], order.pickup.lat, order.pickup.lon)
            self._assign(order, a.vehicle_id, a.pickup_eta_s, distance, now)
        for oid, reason in result.unassigned.items():
            order = by_id[oid]
            if order.state is OrderState.ASSIGNED:
                # Its vehicle went to a more pressing order: this one waits again.
                self._cancel_job(order, "the vehicle is needed elsewhere")
                self._save(order, order.moved(OrderState.PENDING, f"{order.vehicle_id} reassigned: {reason}", at=now))

    def _assign(self, order: Order, vehicle_id: str, eta_s: float, distance_m: float, now: float) -> None:
        params = JobParams(order_id=order.order_id, pickup_lat=order.pickup.lat, pickup_lon=order.pickup.lon,
                           dropoff_lat=order.dropoff.lat, dropoff_lon=order.dropoff.lon,
                           alt_m=self.settings.mission_alt_m, payload_kg=order.payload_kg,
                           passengers=order.passengers, deadline=order.deadline,
                           title=f"Order {order.order_id[-8:]}: pickup in {eta_s / 60:.0f} min")
        record, outcome, reason = issue_command(self.store, self.sender, vehicle_id=vehicle_id, action="job",
                                                params=msgspec.to_builtins(params),
                                                ttl_s=self.settings.accept_timeout_s, issued_by=DISPATCHER)
        if outcome is SendOutcome.NOT_SENT:
            log.warning("order %s: job for %s not sent (%s); it stays in the pool", order.order_id, vehicle_id, reason)
            return
        if self._save(order, order.moved(OrderState.ASSIGNED, f"pickup in {eta_s:.0f} s", at=now,
                                         vehicle_id=vehicle_id, command_id=record.command_id, assigned_at=now,
                                         assigned_distance_m=distance_m, assigned_eta_s=eta_s,
                                         attempts=order.attempts + 1)) is None:
            # Cancelled (or changed) over REST meanwhile: the vehicle must not start it.
            self._cancel_job(msgspec.structs.replace(order, vehicle_id=vehicle_id, command_id=record.command_id),
                             "the order changed while it was being assigned")
            return
        self.counters.assigned += 1

    def _cancel_job(self, order: Order, reason: str) -> None:
        """Tell the vehicle holding ``order`` (if any) to drop it."""
        if not order.state.vehicle_bound or order.vehicle_id is None:
            return
        cancel_job(self.store, self.sender, order, reason)


def vehicle_lost(vehicle: dict[str, Any] | None, now: float, after_s: float) -> bool:
    """Whether ``vehicle`` (as the store shows it) is unknown or has been offline for ``after_s``."""
    if vehicle is None:
        return True
    if vehicle["online"] is not False:
        return False
    # A Last Will carries the time the agent connected, not when it went away; the coordinator's own
    # receipt of the latest message (the will included) says when the vehicle was last heard of.
    since = max(vehicle["status_ts"] or 0.0, vehicle["last_seen"] or 0.0)
    return bool(now - since >= after_s)


def cancel_job(store: FleetStore, sender: CommandSender | None, order: Order, reason: str) -> SendOutcome:
    """Send ``cancel_job`` for ``order`` to the vehicle that holds it."""
    assert order.vehicle_id is not None
    params = CancelJobParams(order_id=order.order_id, reason=reason[:200])
    _, outcome, why = issue_command(store, sender, vehicle_id=order.vehicle_id, action="cancel_job",
                                    params=msgspec.to_builtins(params), ttl_s=3600.0, issued_by=DISPATCHER)
    if outcome is SendOutcome.NOT_SENT:
        log.warning("order %s: cancel_job for %s not sent: %s", order.order_id, order.vehicle_id, why)
    return outcome


def _dispatch_order(order: Order) -> DispatchOrder:
    return DispatchOrder(
        order.order_id, (order.pickup.lat, order.pickup.lon), (order.dropoff.lat, order.dropoff.lon),
        payload_kg=order.payload_kg, passengers=order.passengers, priority=order.priority,
        kinds=frozenset(order.vehicle_kinds) if order.vehicle_kinds is not None else None,
        deadline=order.deadline if order.deadline is not None else math.inf,
        assigned_to=order.vehicle_id if order.state is OrderState.ASSIGNED else None,
        excluded=frozenset(order.excluded))


def _dispatch_vehicle(v: dict[str, Any]) -> DispatchVehicle:
    battery = None
    for kind in ("battery", "sys_status"):
        pct = v["latest"].get(kind, {}).get("remaining_pct")
        if isinstance(pct, int | float):
            battery = float(pct)
            break
    return DispatchVehicle(v["vehicle_id"], v["kind"], v["lat"], v["lon"], battery)
