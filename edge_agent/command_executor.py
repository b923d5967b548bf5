"""Carries out admitted commands through the bridge, reporting each state to the command inbox.

- ``goto``: GUIDED, then (a copter on the ground) arm and climb to ``commands.takeoff_alt_m``, then
  DO_REPOSITION; *accepted* once the autopilot takes the reposition, *completed* on arrival within
  ``commands.arrival_radius_m``, *failed* if the mode is changed under it (a failsafe, the pilot) or it
  has not arrived within ``commands.goto_timeout_s``.
- ``return_to_launch`` / ``land``: *accepted* once the autopilot takes it, *completed* when the vehicle is
  disarmed on the ground (a rover: holding at home).
- ``message``: *accepted* once written to the driver terminal, *completed* when the terminal shows it.
- ``job`` (an order to serve): a vehicle with an autopilot gets a mission (pickup with a hold for loading,
  drop-off with a hold for release, return to launch), a copter on the ground taking off first;
  *accepted* once it flies it in AUTO, *completed* when home and disarmed (a rover: holding at home).
  A taxi's driver gets the offer on the terminal until the job's expiry: *accepted* or *rejected* with the
  driver's reason (or no answer), then *completed* when the GPS shows the taxi at the pickup and then at
  the drop-off.
- ``reposition`` (a taxi): the driver gets the offer with its incentive on the terminal until the command's
  expiry: *accepted* or *rejected* with the driver's reason (or no answer); then *completed* when the GPS
  shows the taxi within ``radius_m`` of the point, *failed* when it is not there ``give_up_s`` after the
  driver accepted. Accepting a job on the way ends it (*failed*, naming the job). Drones and robots are
  repositioned with ``goto``.
- ``install_model``: *accepted* at once, then *completed* when the new version runs (downloaded, sha256,
  signature, shapes and health check passed), *failed* with the reason when it was refused (the running
  version stays).
- ``cancel_job``: stops the job for that order, if one is running: a vehicle in the air comes home, a
  driver's offer is withdrawn; the job *fails* saying it was cancelled, the cancel_job *completes*.

A vehicle moves one way at a time: a new motion command (a job too, for a vehicle with an autopilot; a
reposition for a taxi) supersedes the one running (which fails, naming
its successor). A command whose ``expires_at`` passed while it waited is rejected, never started.
Anything the vehicle refuses before it starts moving is *rejected* with the autopilot's reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from edge_agent.active_job import ActiveJob
from edge_agent.command_inbox import CommandInbox
from edge_agent.config import CommandSettings
from edge_agent.errors import ModelError
from firmware_bridge import CommandResult, DriverTerminal, MavlinkAutopilot, MissionItem
from protocols import (
    AckState,
    CancelJobParams,
    Command,
    GotoParams,
    InstallModelParams,
    JobParams,
    MalformedMessage,
    MessageParams,
    RepositionParams,
    command_params,
    great_circle_m,
)
from protocols._terminal import Offer, Point

log = logging.getLogger(__name__)

MOTION = frozenset({"goto", "return_to_launch", "land"})
RETURN_MODES = frozenset({"RTL", "LAND", "SMART_RTL", "AUTO.RTL", "AUTO.LAND"})
MISSION_MODES = frozenset({"AUTO", "AUTO.MISSION"})
CANCELLED_ORDERS_KEPT = 1000
POLL_S = 0.2
CLIMB_TIMEOUT_S = 120.0
LINK_GRACE_S = 10.0


class _Finished(Exception):
    """Ends a command early with its final state."""

    def __init__(self, state: AckState, reason: str) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason


def _link_grace_s(command: Command) -> float:
    """How long to wait for a device that is not connected: a link blip should not fail a command, but
    the wait never runs past the command's expiry."""
    return max(0.0, min(LINK_GRACE_S, command.expires_at - time.time()))


class _ModeWatch:
    """Whether the autopilot left the modes a command runs in, once its heartbeat showed it entered them
    (heartbeats lag the command's ack, so the old mode may still show for a moment)."""

    def __init__(self, modes: set[str]) -> None:
        self._modes = modes
        self.entered = False

    def left(self, mode: str) -> bool:
        if mode in self._modes:
            self.entered = True
            return False
        return self.entered


@dataclass(slots=True)
class ExecutorCounters:
    started: int = 0
    completed: int = 0
    failed: int = 0
    rejected: int = 0
    superseded: int = 0


class CommandExecutor:
    """Runs admitted commands; :meth:`submit` hands one over, :meth:`run` is the agent's task."""

    def __init__(self, settings: CommandSettings, inbox: CommandInbox, *, vehicle_kind: str,
                 autopilot: MavlinkAutopilot | None, terminal: DriverTerminal | None,
                 state_changed: Callable[[], None],
                 position: Callable[[], tuple[float, float] | None] | None = None,
                 install_model: Callable[[InstallModelParams], Awaitable[str]] | None = None) -> None:
        self._settings = settings
        self._inbox = inbox
        self._kind = vehicle_kind
        self._autopilot = autopilot
        self._terminal = terminal
        self._state_changed = state_changed
        self._queue: asyncio.Queue[Command] = asyncio.Queue(maxsize=settings.queue)
        self._motion: tuple[str, asyncio.Task[None]] | None = None
        self._superseded: dict[str, str] = {}
        self._cancelled: dict[str, str] = {}
        self._jobs: dict[str, tuple[str, asyncio.Task[None]]] = {}
        self._cancelled_orders: dict[str, None] = {}  # insertion-ordered: the oldest go first
        self._position = position or (lambda: None)
        self._install_model = install_model
        self.counters = ExecutorCounters()
        self.active_job: ActiveJob | None = None
        """The job under way once accepted (the on-board models watch it)."""

    def submit(self, command: Command) -> bool:
        """Queue an admitted command; False if the queue is full (the caller rejects it as busy)."""
        try:
            self._queue.put_nowait(command)
        except asyncio.QueueFull:
            return False
        return True

    def _moves(self, command: Command) -> bool:
        if command.kind == "job":
            return self._autopilot is not None
        if command.kind == "reposition":
            # A driver's reposition steers the car; one the vehicle cannot take must not stop what runs.
            return self._terminal is not None and self._autopilot is None
        return command.kind in MOTION

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            while True:
                command = await self._queue.get()
                name = f"command-{command.kind}-{command.command_id}"
                if self._moves(command):
                    if self._motion is not None and not self._motion[1].done():
                        self._supersede_motion(command.command_id)
                        # The old command must stop steering before the new one starts.
                        await asyncio.wait([self._motion[1]])
                    task = tg.create_task(self._execute(command), name=name)
                    self._motion = (command.command_id, task)
                else:
                    task = tg.create_task(self._execute(command), name=name)
                order_id = command.params.get("order_id")
                if command.kind == "job" and isinstance(order_id, str):
                    self._jobs[order_id] = (command.command_id, task)
                    task.add_done_callback(functools.partial(self._forget_job, order_id, command.command_id))

    def _supersede_motion(self, successor: str) -> None:
        """Stop the motion command running (if any) because ``successor`` takes the vehicle."""
        if self._motion is None or self._motion[1].done():
            return
        running_id, running = self._motion
        self._superseded[running_id] = successor
        running.cancel()

    def _forget_job(self, order_id: str, command_id: str, _task: asyncio.Task[None]) -> None:
        running = self._jobs.get(order_id)
        if running is not None and running[0] == command_id:
            del self._jobs[order_id]

    async def _report(self, command: Command, state: AckState, reason: str = "") -> None:
        await asyncio.to_thread(self._inbox.update, command.command_id, state, reason)
        self._state_changed()
        log.info("command %s (%s): %s%s", command.command_id, command.kind, state.value,
                 f": {reason}" if reason else "")

    async def _execute(self, command: Command) -> None:
        self.counters.started += 1
        try:
            if time.time() >= command.expires_at:
                raise _Finished(AckState.REJECTED, "expired while it waited to run; it never started")
            try:
                params = command_params(command.kind, command.params)
            except MalformedMessage as exc:
                raise _Finished(AckState.REJECTED, str(exc)) from None
            if isinstance(params, GotoParams):
                await self._goto(command, params)
            elif isinstance(params, MessageParams):
                await self._message(command, params)
            elif isinstance(params, JobParams):
                if params.order_id in self._cancelled_orders:
                    raise _Finished(AckState.REJECTED, f"order {params.order_id} was cancelled before it started")
                await (self._fly_job(command, params) if self._autopilot is not None
                       else self._offer_job(command, params))
            elif isinstance(params, CancelJobParams):
                await self._cancel_job(params)
            elif isinstance(params, RepositionParams):
                await self._offer_reposition(command, params)
            elif isinstance(params, InstallModelParams):
                await self._install(command, params)
            else:
                await self._return_or_land(command)
        except _Finished as done:
            counter = {AckState.COMPLETED: "completed", AckState.FAILED: "failed"}.get(done.state, "rejected")
            setattr(self.counters, counter, getattr(self.counters, counter) + 1)
            await self._report(command, done.state, done.reason)
        except asyncio.CancelledError:
            why = self._cancelled.pop(command.command_id, None)
            if why is not None:
                self.counters.failed += 1
                await self._abandon(command)
                await self._report(command, AckState.FAILED, f"cancelled by dispatch: {why}")
                return
            successor = self._superseded.pop(command.command_id, None)
            if successor is None:
                # The agent is stopping: say so now; a restart would fail it anyway.
                self._inbox.update(command.command_id, AckState.FAILED, "the agent stopped before it finished")
                raise
            self.counters.superseded += 1
            await self._report(command, AckState.FAILED, f"superseded by command {successor}")

    # -- motion -------------------------------------------------------------------------------------

    async def _connected_autopilot(self, command: Command) -> MavlinkAutopilot:
        if self._autopilot is None:
            raise _Finished(AckState.REJECTED, "this vehicle has no autopilot ([autopilot] device is not set)")
        wait_s = _link_grace_s(command)
        try:
            await self._autopilot.wait_connected(wait_s)
        except TimeoutError:
            raise _Finished(AckState.REJECTED, f"the autopilot is not connected (no heartbeat for {wait_s:.0f} s); "
                                               "try again later") from None
        return self._autopilot

    @staticmethod
    async def _step(request: Awaitable[CommandResult], refused_as: AckState, what: str) -> None:
        result = await request
        if not result.ok:
            raise _Finished(refused_as, f"{what} ({result.state}): {result.reason}")

    async def _goto(self, command: Command, params: GotoParams) -> None:
        ap = await self._connected_autopilot(command)
        state = ap.state
        await self._step(ap.set_mode("GUIDED"), AckState.REJECTED, "switching to GUIDED was refused")
        if not state.armed:
            if self._kind == "plane":
                raise _Finished(AckState.REJECTED, "a plane must be flying before it can be sent somewhere")
            await self._step(ap.arm(), AckState.REJECTED, "arming was refused")
        if self._kind == "copter" and (state.landed or not state.alt_rel_m > 1.0):
            climb = self._settings.takeoff_alt_m
            await self._step(ap.takeoff(climb), AckState.REJECTED, "take-off was refused")
            await self._until(lambda: state.alt_rel_m >= 0.9 * climb, CLIMB_TIMEOUT_S,
                              f"did not climb to {climb:g} m within {CLIMB_TIMEOUT_S:g} s")
        await self._step(ap.goto(params.lat, params.lon, params.alt_m), AckState.FAILED, "the go-to was refused")
        await self._report(command, AckState.ACCEPTED)
        radius = self._settings.arrival_radius_m

        guided = _ModeWatch({"GUIDED"})

        def arrived() -> bool:
            if guided.left(state.mode):
                raise _Finished(AckState.FAILED, f"the mode changed to {state.mode} before arrival")
            return great_circle_m(state.lat, state.lon, params.lat, params.lon) <= radius

        timeout = self._settings.goto_timeout_s
        await self._until(arrived, timeout, f"did not arrive within {timeout:g} s")
        raise _Finished(AckState.COMPLETED, f"arrived within {radius:g} m")

    async def _return_or_land(self, command: Command) -> None:
        ap = await self._connected_autopilot(command)
        state = ap.state
        if not state.armed and state.landed:
            raise _Finished(AckState.COMPLETED, "already on the ground and disarmed")
        if command.kind == "land":
            await self._step(ap.land(), AckState.REJECTED, "landing was refused")
        else:
            await self._step(ap.return_to_launch(), AckState.REJECTED, "return to launch was refused")
        await self._report(command, AckState.ACCEPTED)
        timeout = self._settings.landing_timeout_s
        await self._until_home(ap, RETURN_MODES, "before it was down", timeout,
                               f"not down and disarmed within {timeout:g} s")
        raise _Finished(AckState.COMPLETED, "home and holding" if state.armed else "on the ground and disarmed")

    async def _until_home(self, ap: MavlinkAutopilot, allowed: frozenset[str], changed: str, timeout_s: float,
                          failure: str) -> None:
        """Until the vehicle is down and disarmed (a rover: holding after its return), failing if the mode
        leaves ``allowed`` on the way (a failsafe, the pilot taking over)."""
        state = ap.state
        allowed_modes, returned = _ModeWatch(set(allowed)), _ModeWatch(set(RETURN_MODES))

        def done() -> bool:
            if not state.armed:
                return True
            returned.left(state.mode)  # notes when the return begins
            if self._kind == "rover" and returned.entered and state.mode == "HOLD":
                return True  # ArduRover holds once it is home
            if allowed_modes.left(state.mode):
                raise _Finished(AckState.FAILED, f"the mode changed to {state.mode} {changed}")
            return False

        await self._until(done, timeout_s, failure)

    @staticmethod
    async def _until(condition: Callable[[], bool], timeout_s: float, failure: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise _Finished(AckState.FAILED, failure)
            await asyncio.sleep(POLL_S)

    # -- jobs -------------------------------------------------------------------------------------------

    async def _fly_job(self, command: Command, params: JobParams) -> None:
        if self._kind not in ("copter", "rover"):
            raise _Finished(AckState.REJECTED, f"a {self._kind} does not fly delivery missions")
        ap = await self._connected_autopilot(command)
        state = ap.state
        hold = self._settings.job_hold_s
        mission = [MissionItem(params.pickup_lat, params.pickup_lon, params.alt_m, hold_s=hold),
                   MissionItem(params.dropoff_lat, params.dropoff_lon, params.alt_m, hold_s=hold),
                   MissionItem(0.0, 0.0, 0.0, command="rtl")]
        await self._step(ap.upload_mission(mission), AckState.REJECTED, "the mission upload failed")
        if not state.armed:
            await self._step(ap.set_mode("GUIDED"), AckState.REJECTED, "switching to GUIDED was refused")
            await self._step(ap.arm(), AckState.REJECTED, "arming was refused")
        if self._kind == "copter" and (state.landed or not state.alt_rel_m > 1.0):
            await self._step(ap.takeoff(params.alt_m), AckState.REJECTED, "take-off was refused")
            await self._until(lambda: state.alt_rel_m >= 0.9 * params.alt_m, CLIMB_TIMEOUT_S,
                              f"did not climb to {params.alt_m:g} m within {CLIMB_TIMEOUT_S:g} s")
        await self._step(ap.set_mode("AUTO"), AckState.FAILED, "switching to AUTO was refused")
        await self._step(ap.start_mission(1), AckState.FAILED, "the mission did not start")
        await self._report(command, AckState.ACCEPTED)
        timeout = self._settings.job_timeout_s
        with self._job_under_way(params, returns_home=True):
            await self._until_home(ap, MISSION_MODES | RETURN_MODES, "during the job", timeout,
                                   f"not back home within {timeout:g} s")
        raise _Finished(AckState.COMPLETED, f"order {params.order_id}: picked up, delivered and back home")

    async def _offer_job(self, command: Command, params: JobParams) -> None:
        terminal = await self._connected_terminal(command)
        here = self._position()
        pickup = Point(params.pickup_lat, params.pickup_lon)
        distance = great_circle_m(here[0], here[1], pickup.lat, pickup.lon) if here else 0.0
        await self._driver_accepts(terminal, Offer(
            id=command.command_id[:64], kind="job", title=params.title or f"Order {params.order_id}", pickup=pickup,
            dropoff=Point(params.dropoff_lat, params.dropoff_lon), distance_m=distance,
            expires_at=command.expires_at))
        # The driver now drives this job: a reposition under way is over.
        self._supersede_motion(command.command_id)
        await self._report(command, AckState.ACCEPTED)
        radius = self._settings.job_arrival_radius_m
        picked_up = False

        def at_dropoff() -> bool:
            # The drop-off counts only after the pickup: a ride may end near where the taxi was offered it.
            nonlocal picked_up
            now = self._position()
            if now is None:
                return False
            if not picked_up:
                picked_up = great_circle_m(now[0], now[1], params.pickup_lat, params.pickup_lon) <= radius
                return False
            return great_circle_m(now[0], now[1], params.dropoff_lat, params.dropoff_lon) <= radius

        timeout = self._settings.job_timeout_s
        with self._job_under_way(params, returns_home=False):
            await self._until(at_dropoff, timeout, f"not at the drop-off within {timeout:g} s")
        raise _Finished(AckState.COMPLETED, f"order {params.order_id}: at the drop-off")

    @contextlib.contextmanager
    def _job_under_way(self, params: JobParams, *, returns_home: bool) -> Iterator[ActiveJob]:
        job = ActiveJob(params.order_id, ((params.pickup_lat, params.pickup_lon),
                                          (params.dropoff_lat, params.dropoff_lon)),
                        params.deadline, returns_home, self._settings.job_arrival_radius_m)
        self.active_job = job
        try:
            yield job
        finally:
            if self.active_job is job:
                self.active_job = None

    async def _install(self, command: Command, params: InstallModelParams) -> None:
        if self._install_model is None:
            raise _Finished(AckState.REJECTED, "this agent runs no on-board models ([models] enabled is empty)")
        await self._report(command, AckState.ACCEPTED)
        try:
            done = await self._install_model(params)
        except ModelError as exc:
            raise _Finished(AckState.FAILED, str(exc)) from None
        raise _Finished(AckState.COMPLETED, done)

    async def _offer_reposition(self, command: Command, params: RepositionParams) -> None:
        terminal = await self._connected_terminal(command)
        here = self._position()
        target = Point(params.lat, params.lon)
        distance = great_circle_m(here[0], here[1], target.lat, target.lon) if here else 0.0
        title = params.title or f"Wait near {params.lat:.4f}, {params.lon:.4f}"
        await self._driver_accepts(terminal, Offer(
            id=command.command_id[:64], kind="reposition", title=title, pickup=target, distance_m=distance,
            incentive=params.incentive, currency=params.currency, expires_at=command.expires_at))
        await self._report(command, AckState.ACCEPTED)

        def arrived() -> bool:
            now = self._position()
            return now is not None and great_circle_m(now[0], now[1], params.lat, params.lon) <= params.radius_m

        await self._until(arrived, params.give_up_s, f"not within {params.radius_m:g} m of the point "
                                                     f"{params.give_up_s:g} s after accepting")
        raise _Finished(AckState.COMPLETED, f"arrived within {params.radius_m:g} m")

    @staticmethod
    async def _driver_accepts(terminal: DriverTerminal, offer: Offer) -> None:
        """Show ``offer``; returns once the driver accepts, else ends the command *rejected*, saying why."""
        outcome = await terminal.offer(offer)
        if outcome.state == "declined":
            raise _Finished(AckState.REJECTED, f"the driver declined: {outcome.reason}")
        if outcome.state == "timed_out":
            raise _Finished(AckState.REJECTED, "the driver did not answer before the offer expired")
        if outcome.state == "unreachable":
            raise _Finished(AckState.REJECTED, f"the driver terminal is unreachable: {outcome.reason}")

    async def _cancel_job(self, params: CancelJobParams) -> None:
        # Remembered even when nothing runs: a job for this order arriving later (overtaken on the way, or
        # redelivered) must not start.
        self._cancelled_orders[params.order_id] = None
        while len(self._cancelled_orders) > CANCELLED_ORDERS_KEPT:
            del self._cancelled_orders[next(iter(self._cancelled_orders))]
        running = self._jobs.get(params.order_id)
        if running is None or running[1].done():
            raise _Finished(AckState.COMPLETED, f"no job for order {params.order_id} is running")
        job_id, task = running
        self._cancelled[job_id] = params.reason or "no reason given"
        task.cancel()
        await asyncio.wait([task])
        raise _Finished(AckState.COMPLETED, f"stopped the job for order {params.order_id} (command {job_id})")

    async def _abandon(self, command: Command) -> None:
        """After a job is cancelled: a vehicle away from home comes back (a driver's offer is withdrawn by the
        terminal as its wait is cancelled)."""
        ap = self._autopilot
        if command.kind != "job" or ap is None or not ap.state.armed:
            return
        result = await ap.return_to_launch()
        if not result.ok:
            log.error("after cancelling %s the return to launch was refused: %s", command.command_id, result.reason)

    # -- driver terminal ------------------------------------------------------------------------------

    async def _connected_terminal(self, command: Command) -> DriverTerminal:
        if self._terminal is None:
            raise _Finished(AckState.REJECTED, "this vehicle has no driver terminal ([terminal] device is not set)")
        wait_s = _link_grace_s(command)
        try:
            async with asyncio.timeout(wait_s):
                await self._terminal.connected.wait()
        except TimeoutError:
            raise _Finished(AckState.REJECTED, f"the driver terminal is not connected (waited {wait_s:.0f} s); "
                                               "try again later") from None
        return self._terminal

    async def _message(self, command: Command, params: MessageParams) -> None:
        terminal = await self._connected_terminal(command)
        timeout = self._settings.message_seen_timeout_s
        await self._report(command, AckState.ACCEPTED)
        outcome = await terminal.message(command.command_id[:64], params.text, timeout_s=timeout)
        if outcome == "seen":
            raise _Finished(AckState.COMPLETED, "shown on the driver terminal")
        if outcome == "unreachable":
            raise _Finished(AckState.FAILED, "the driver terminal went away before it showed the message")
        raise _Finished(AckState.FAILED, f"the driver terminal did not show it within {timeout:g} s")
