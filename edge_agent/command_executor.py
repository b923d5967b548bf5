"""Carries out admitted commands through the bridge, reporting each state to the command inbox.

- ``goto``: GUIDED, then (a copter on the ground) arm and climb to ``commands.takeoff_alt_m``, then
  DO_REPOSITION; *accepted* once the autopilot takes the reposition, *completed* on arrival within
  ``commands.arrival_radius_m``, *failed* if the mode is changed under it (a failsafe, the pilot) or it
  has not arrived within ``commands.goto_timeout_s``.
- ``return_to_launch`` / ``land``: *accepted* once the autopilot takes it, *completed* when the vehicle is
  disarmed on the ground (a rover: holding at home).
- ``message``: *accepted* once written to the driver terminal, *completed* when the terminal shows it.

A vehicle moves one way at a time: a new motion command supersedes the one running (which fails, naming
its successor). A command whose ``expires_at`` passed while it waited is rejected, never started.
Anything the vehicle refuses before it starts moving is *rejected* with the autopilot's reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from edge_agent.command_inbox import CommandInbox
from edge_agent.config import CommandSettings
from firmware_bridge import CommandResult, DriverTerminal, MavlinkAutopilot
from protocols import (
    AckState,
    Command,
    GotoParams,
    MalformedMessage,
    MessageParams,
    command_params,
    great_circle_m,
)

log = logging.getLogger(__name__)

MOTION = frozenset({"goto", "return_to_launch", "land"})
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
                 state_changed: Callable[[], None]) -> None:
        self._settings = settings
        self._inbox = inbox
        self._kind = vehicle_kind
        self._autopilot = autopilot
        self._terminal = terminal
        self._state_changed = state_changed
        self._queue: asyncio.Queue[Command] = asyncio.Queue(maxsize=settings.queue)
        self._motion: tuple[str, asyncio.Task[None]] | None = None
        self._superseded: dict[str, str] = {}
        self.counters = ExecutorCounters()

    def submit(self, command: Command) -> bool:
        """Queue an admitted command; False if the queue is full (the caller rejects it as busy)."""
        try:
            self._queue.put_nowait(command)
        except asyncio.QueueFull:
            return False
        return True

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            while True:
                command = await self._queue.get()
                name = f"command-{command.kind}-{command.command_id}"
                if command.kind in MOTION:
                    if self._motion is not None and not self._motion[1].done():
                        running_id, running = self._motion
                        self._superseded[running_id] = command.command_id
                        running.cancel()
                        # The old command must stop steering before the new one starts.
                        await asyncio.wait([running])
                    self._motion = (command.command_id, tg.create_task(self._execute(command), name=name))
                else:
                    tg.create_task(self._execute(command), name=name)

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
            else:
                await self._return_or_land(command)
        except _Finished as done:
            counter = {AckState.COMPLETED: "completed", AckState.FAILED: "failed"}.get(done.state, "rejected")
            setattr(self.counters, counter, getattr(self.counters, counter) + 1)
            await self._report(command, done.state, done.reason)
        except asyncio.CancelledError:
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
        returning = _ModeWatch({"RTL", "LAND", "SMART_RTL", "AUTO.RTL", "AUTO.LAND"})

        def done() -> bool:
            if not state.armed:
                return True
            if self._kind == "rover" and returning.entered and state.mode == "HOLD":
                return True  # ArduRover holds once it is home
            if returning.left(state.mode):
                raise _Finished(AckState.FAILED, f"the mode changed to {state.mode} before it was down")
            return False

        timeout = self._settings.landing_timeout_s
        await self._until(done, timeout, f"not down and disarmed within {timeout:g} s")
        raise _Finished(AckState.COMPLETED, "home and holding" if state.armed else "on the ground and disarmed")

    @staticmethod
    async def _until(condition: Callable[[], bool], timeout_s: float, failure: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise _Finished(AckState.FAILED, failure)
            await asyncio.sleep(POLL_S)

    # -- driver terminal ------------------------------------------------------------------------------

    async def _message(self, command: Command, params: MessageParams) -> None:
        if self._terminal is None:
            raise _Finished(AckState.REJECTED, "this vehicle has no driver terminal ([terminal] device is not set)")
        wait_s = _link_grace_s(command)
        try:
            async with asyncio.timeout(wait_s):
                await self._terminal.connected.wait()
        except TimeoutError:
            raise _Finished(AckState.REJECTED, f"the driver terminal is not connected (waited {wait_s:.0f} s); "
                                               "try again later") from None
        timeout = self._settings.message_seen_timeout_s
        await self._report(command, AckState.ACCEPTED)
        outcome = await self._terminal.message(command.command_id[:64], params.text, timeout_s=timeout)
        if outcome == "seen":
            raise _Finished(AckState.COMPLETED, "shown on the driver terminal")
        if outcome == "unreachable":
            raise _Finished(AckState.FAILED, "the driver terminal went away before it showed the message")
        raise _Finished(AckState.FAILED, f"the driver terminal did not show it within {timeout:g} s")
