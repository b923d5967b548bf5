"""The agent as a MAVLink companion computer: telemetry in, commands and missions out.

It sends its own HEARTBEAT (component MAV_COMP_ID_ONBOARD_COMPUTER), watches the autopilot's, asks for
the streams it needs with SET_MESSAGE_INTERVAL, and turns what arrives into records and events. Every
command ends as ``accepted``, ``rejected`` (with the autopilot's reason: the MAV_RESULT and its latest
STATUSTEXT) or ``timed_out``. A link that fails (a USB flight controller unplugged) is reopened with
backoff; the autopilot falling silent raises ``link.lost`` and its return ``link.regained``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pymavlink.dialects.v20 import ardupilotmega as mav

from firmware_bridge._errors import LinkError
from firmware_bridge._links import ByteLink, DeviceUrl, open_with_backoff
from firmware_bridge._mavlink_telemetry import TelemetryTranslator, VehicleState
from firmware_bridge._modes import is_px4, mode_request
from firmware_bridge._source import RecordSink, TelemetrySource
from protocols import RecordClass

log = logging.getLogger(__name__)

STREAM_IDS = {
    "GLOBAL_POSITION_INT": mav.MAVLINK_MSG_ID_GLOBAL_POSITION_INT,
    "GPS_RAW_INT": mav.MAVLINK_MSG_ID_GPS_RAW_INT,
    "ATTITUDE": mav.MAVLINK_MSG_ID_ATTITUDE,
    "VFR_HUD": mav.MAVLINK_MSG_ID_VFR_HUD,
    "SYS_STATUS": mav.MAVLINK_MSG_ID_SYS_STATUS,
    "BATTERY_STATUS": mav.MAVLINK_MSG_ID_BATTERY_STATUS,
    "HOME_POSITION": mav.MAVLINK_MSG_ID_HOME_POSITION,
    "EXTENDED_SYS_STATE": mav.MAVLINK_MSG_ID_EXTENDED_SYS_STATE,
}
DEFAULT_STREAM_RATES_HZ = {"GLOBAL_POSITION_INT": 10.0, "GPS_RAW_INT": 2.0, "ATTITUDE": 10.0, "VFR_HUD": 4.0,
                           "SYS_STATUS": 1.0, "BATTERY_STATUS": 1.0, "HOME_POSITION": 0.2, "EXTENDED_SYS_STATE": 1.0}
RESULT_NAMES = {v: k.removeprefix("MAV_RESULT_") for k, v in vars(mav).items()
                if k.startswith("MAV_RESULT_") and isinstance(v, int)}
MISSION_RESULT_NAMES = {v: k.removeprefix("MAV_MISSION_") for k, v in vars(mav).items()
                        if k.startswith("MAV_MISSION_") and isinstance(v, int) and not k.startswith("MAV_MISSION_TYPE")}
NAV_COMMANDS = {"waypoint": mav.MAV_CMD_NAV_WAYPOINT, "takeoff": mav.MAV_CMD_NAV_TAKEOFF,
                "land": mav.MAV_CMD_NAV_LAND, "rtl": mav.MAV_CMD_NAV_RETURN_TO_LAUNCH}


@dataclass(frozen=True, slots=True)
class CommandResult:
    """How a command ended."""

    command: str
    state: Literal["accepted", "rejected", "timed_out"]
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "accepted"


@dataclass(frozen=True, slots=True)
class MissionItem:
    """One step of a mission: ``waypoint``, ``takeoff``, ``land`` or ``rtl``; altitude above home."""

    lat: float
    lon: float
    alt_m: float
    command: Literal["waypoint", "takeoff", "land", "rtl"] = "waypoint"
    hold_s: float = 0.0


@dataclass(slots=True)
class BridgeCounters:
    received: int = 0
    bad_frames: int = 0
    link_opens: int = 0
    link_failures: int = 0
    autopilot_silences: int = 0


@dataclass(slots=True)
class _Waiter:
    future: asyncio.Future[Any]
    types: frozenset[str]
    match: dict[str, Any] = field(default_factory=dict)


class MavlinkAutopilot(TelemetrySource):
    """A link to one autopilot (ArduPilot or PX4).

    Args:
        url: where the autopilot is (see ``firmware_bridge.parse_device_url``).
        stream_rates_hz: message name -> rate to ask for; the defaults cover every record kind.
        heartbeat_timeout_s: silence after which the autopilot counts as lost.
        low_battery_pct: below this remaining charge a ``battery.low`` alert is raised.
    """

    def __init__(self, url: DeviceUrl, *, stream_rates_hz: dict[str, float] | None = None,
                 heartbeat_timeout_s: float = 3.0, low_battery_pct: float = 20.0,
                 system_id: int = 255, reconnect_max_s: float = 5.0) -> None:
        self.url = url
        self._rates = dict(DEFAULT_STREAM_RATES_HZ if stream_rates_hz is None else stream_rates_hz)
        unknown = set(self._rates) - set(STREAM_IDS)
        if unknown:
            raise ValueError(f"unknown stream names {sorted(unknown)}; known: {sorted(STREAM_IDS)}")
        self._timeout = heartbeat_timeout_s
        self._low_battery_pct = low_battery_pct
        self._reconnect_max_s = reconnect_max_s
        self._mav = mav.MAVLink(None, srcSystem=system_id, srcComponent=mav.MAV_COMP_ID_ONBOARD_COMPUTER)
        self._mav.robust_parsing = True
        self.state = VehicleState()
        self.counters = BridgeCounters()
        self.target_system = 1
        self.target_component = 1
        self._link: ByteLink | None = None
        self._waiters: list[_Waiter] = []
        self._last_heartbeat = 0.0
        self.connected = asyncio.Event()
        self._command_lock = asyncio.Lock()
        self._mission_lock = asyncio.Lock()

    # -- running -----------------------------------------------------------------------------------

    async def run(self, sink: RecordSink) -> None:
        translator = TelemetryTranslator(sink, self.state, low_battery_pct=self._low_battery_pct)
        while True:
            link = await open_with_backoff(self.url, max_delay_s=self._reconnect_max_s,
                                           on_failure=lambda _: self._count_link_failure())
            self._link = link
            self.counters.link_opens += 1
            log.info("MAVLink link open: %s", self.url)
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._read(link, translator, sink), name="mavlink-read")
                    tg.create_task(self._heartbeat(link), name="mavlink-heartbeat")
                    tg.create_task(self._watch(sink), name="mavlink-watchdog")
            except* LinkError as group:
                self.counters.link_failures += 1
                log.warning("MAVLink link to %s failed: %s", self.url, group.exceptions[0])
                sink.append("link.lost", {"device": str(self.url), "reason": str(group.exceptions[0])},
                            cls=RecordClass.ALERT)
            finally:
                link.close()
                self._link = None
                self.connected.clear()
                self._fail_waiters(LinkError("link closed"))

    def _count_link_failure(self) -> None:
        self.counters.link_failures += 1

    async def _read(self, link: ByteLink, translator: TelemetryTranslator, sink: RecordSink) -> None:
        while True:
            data = await link.receive()
            now = time.time()
            for msg in self._mav.parse_buffer(data) or []:
                if msg.get_type() == "BAD_DATA":
                    self.counters.bad_frames += 1
                    continue
                self.counters.received += 1
                if msg.get_srcComponent() != mav.MAV_COMP_ID_AUTOPILOT1 and msg.get_type() == "HEARTBEAT":
                    continue  # another GCS or companion on the same link
                if msg.get_type() == "HEARTBEAT":
                    await self._on_autopilot_heartbeat(msg, sink)
                translator.handle(msg, now)
                self._resolve_waiters(msg)

    async def _on_autopilot_heartbeat(self, msg: Any, sink: RecordSink) -> None:
        first = not self.connected.is_set()
        self._last_heartbeat = time.monotonic()
        self.target_system, self.target_component = msg.get_srcSystem(), msg.get_srcComponent()
        if first:
            self.connected.set()
            sink.append("link.regained" if self.counters.link_opens > 1 or self.counters.autopilot_silences else
                        "link.up", {"device": str(self.url), "autopilot": "px4" if is_px4(msg.autopilot) else
                                    "ardupilot"}, cls=RecordClass.EVENT)
            self._request_streams()

    def _request_streams(self) -> None:
        for name, hz in self._rates.items():
            interval_us = -1 if hz <= 0 else int(1e6 / hz)
            self._send(mav.MAVLink_command_long_message(
                self.target_system, self.target_component, mav.MAV_CMD_SET_MESSAGE_INTERVAL, 0,
                STREAM_IDS[name], interval_us, 0, 0, 0, 0, 0))

    async def _heartbeat(self, link: ByteLink) -> None:
        msg = mav.MAVLink_heartbeat_message(mav.MAV_TYPE_ONBOARD_CONTROLLER, mav.MAV_AUTOPILOT_INVALID, 0, 0,
                                            mav.MAV_STATE_ACTIVE, 3)
        while True:
            link.send(msg.pack(self._mav))
            await asyncio.sleep(1.0)

    async def _watch(self, sink: RecordSink) -> None:
        while True:
            await asyncio.sleep(self._timeout / 4)
            if self.connected.is_set() and time.monotonic() - self._last_heartbeat > self._timeout:
                self.connected.clear()
                self.counters.autopilot_silences += 1
                log.warning("autopilot silent for %.1f s on %s", self._timeout, self.url)
                sink.append("link.lost", {"device": str(self.url), "reason": f"no heartbeat for {self._timeout} s"},
                            cls=RecordClass.ALERT)

    def _send(self, msg: Any) -> None:
        if self._link is not None:
            self._link.send(msg.pack(self._mav))

    # -- waiting for answers -----------------------------------------------------------------------

    def _resolve_waiters(self, msg: Any) -> None:
        kind = msg.get_type()
        for waiter in list(self._waiters):
            if kind in waiter.types and not waiter.future.done() and all(
                    getattr(msg, k, None) == v for k, v in waiter.match.items()):
                waiter.future.set_result(msg)

    def _fail_waiters(self, exc: BaseException) -> None:
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_exception(exc)

    @contextlib.contextmanager
    def _expect(self, *types: str, **match: Any) -> Any:
        waiter = _Waiter(asyncio.get_running_loop().create_future(), frozenset(types), match)
        self._waiters.append(waiter)
        try:
            yield waiter
        finally:
            self._waiters.remove(waiter)

    async def wait_connected(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await self.connected.wait()

    # -- commands ----------------------------------------------------------------------------------

    async def command(self, name: str, command: int, params: Sequence[float], *, use_int: bool = False,
                      frame: int = mav.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT, timeout_s: float = 1.5,
                      retries: int = 3) -> CommandResult:
        """Send a command and wait for its COMMAND_ACK, resending on silence."""
        p = list(params) + [0.0] * (7 - len(params))
        async with self._command_lock:
            for attempt in range(retries):
                if use_int:
                    msg: Any = mav.MAVLink_command_int_message(
                        self.target_system, self.target_component, frame, command, 0, 0, p[0], p[1], p[2], p[3],
                        int(p[4]), int(p[5]), p[6])
                else:
                    msg = mav.MAVLink_command_long_message(self.target_system, self.target_component, command,
                                                           attempt, *p)
                sent_at = time.time()
                with self._expect("COMMAND_ACK", command=command) as waiter:
                    self._send(msg)
                    try:
                        async with asyncio.timeout(timeout_s):
                            while True:
                                ack = await waiter.future
                                if ack.result != mav.MAV_RESULT_IN_PROGRESS:
                                    break
                                waiter.future = asyncio.get_running_loop().create_future()
                    except TimeoutError:
                        continue
                    except LinkError as exc:
                        return CommandResult(name, "timed_out", f"link lost: {exc}")
                if ack.result == mav.MAV_RESULT_ACCEPTED:
                    return CommandResult(name, "accepted")
                await asyncio.sleep(0.05)  # the autopilot's STATUSTEXT explaining a refusal follows the ack
                reason = RESULT_NAMES.get(ack.result, str(ack.result))
                if self.state.last_statustext and self.state.last_statustext_at >= sent_at - 0.5:
                    reason += f": {self.state.last_statustext}"
                return CommandResult(name, "rejected", reason)
            return CommandResult(name, "timed_out", f"no COMMAND_ACK after {retries} tries of {timeout_s:.1f} s")

    async def arm(self, *, force: bool = False) -> CommandResult:
        return await self.command("arm", mav.MAV_CMD_COMPONENT_ARM_DISARM, [1, 21196 if force else 0])

    async def disarm(self, *, force: bool = False) -> CommandResult:
        return await self.command("disarm", mav.MAV_CMD_COMPONENT_ARM_DISARM, [0, 21196 if force else 0])

    async def set_mode(self, name: str) -> CommandResult:
        """Change flight mode by name (ArduPilot names, PX4 names, or the common intents)."""
        base, custom, sub = mode_request(self.state.autopilot, self.state.vehicle_type, name)
        return await self.command(f"set_mode {name}", mav.MAV_CMD_DO_SET_MODE, [base, custom, sub])

    async def takeoff(self, alt_m: float) -> CommandResult:
        """Climb to ``alt_m`` above home (GUIDED on ArduPilot, TAKEOFF on PX4)."""
        if is_px4(self.state.autopilot):
            home = self.state.home_amsl_m if not math.isnan(self.state.home_amsl_m) else 0.0
            return await self.command("takeoff", mav.MAV_CMD_NAV_TAKEOFF, [0, 0, 0, math.nan, math.nan, math.nan,
                                                                           home + alt_m])
        return await self.command("takeoff", mav.MAV_CMD_NAV_TAKEOFF, [0, 0, 0, 0, 0, 0, alt_m])

    async def goto(self, lat: float, lon: float, alt_m: float) -> CommandResult:
        """Fly (or drive) to a point, altitude above home."""
        return await self.command("goto", mav.MAV_CMD_DO_REPOSITION,
                                  [-1, mav.MAV_DO_REPOSITION_FLAGS_CHANGE_MODE, 0, math.nan, lat * 1e7, lon * 1e7,
                                   alt_m], use_int=True)

    async def return_to_launch(self) -> CommandResult:
        return await self.command("return_to_launch", mav.MAV_CMD_NAV_RETURN_TO_LAUNCH, [])

    async def land(self) -> CommandResult:
        return await self.command("land", mav.MAV_CMD_NAV_LAND, [0, 0, 0, math.nan, math.nan, math.nan, math.nan])

    async def start_mission(self, first_item: int = 0) -> CommandResult:
        return await self.command("start_mission", mav.MAV_CMD_MISSION_START, [first_item, 0])

    # -- missions ----------------------------------------------------------------------------------

    async def upload_mission(self, items: Sequence[MissionItem], *, item_timeout_s: float = 1.5,
                             retries: int = 5, timeout_s: float = 60.0) -> CommandResult:
        """Upload a mission with the MAVLink mission protocol (MISSION_COUNT, then item by item on request).

        ArduPilot keeps home in slot 0, so a home placeholder goes first there; PX4 takes the items as they are.
        A silence resends the last message; the autopilot's MISSION_ACK ends the transfer.
        """
        wire = [self._mission_item(i, item) for i, item in enumerate(self._with_home(items))]
        async with self._mission_lock:
            try:
                async with asyncio.timeout(timeout_s):
                    return await self._transfer(wire, item_timeout_s, retries)
            except TimeoutError:
                return CommandResult("upload_mission", "timed_out", f"mission upload took over {timeout_s:.0f} s")
            except LinkError as exc:
                return CommandResult("upload_mission", "timed_out", f"link lost: {exc}")

    def _with_home(self, items: Sequence[MissionItem]) -> list[MissionItem]:
        if is_px4(self.state.autopilot):
            return list(items)
        home = MissionItem(self.state.lat if not math.isnan(self.state.lat) else 0.0,
                           self.state.lon if not math.isnan(self.state.lon) else 0.0, 0.0)
        return [home, *items]

    def _mission_item(self, seq: int, item: MissionItem) -> Any:
        return mav.MAVLink_mission_item_int_message(
            self.target_system, self.target_component, seq, mav.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT,
            NAV_COMMANDS[item.command], 0, 1, item.hold_s, 0, 0, math.nan, round(item.lat * 1e7), round(item.lon * 1e7),
            item.alt_m, mav.MAV_MISSION_TYPE_MISSION)

    async def _transfer(self, wire: list[Any], item_timeout_s: float, retries: int) -> CommandResult:
        last: Any = mav.MAVLink_mission_count_message(self.target_system, self.target_component, len(wire),
                                                      mav.MAV_MISSION_TYPE_MISSION)
        tries = 0
        while True:
            with self._expect("MISSION_REQUEST_INT", "MISSION_REQUEST", "MISSION_ACK") as waiter:
                self._send(last)
                try:
                    async with asyncio.timeout(item_timeout_s):
                        answer = await waiter.future
                except TimeoutError:
                    tries += 1
                    if tries >= retries:
                        return CommandResult("upload_mission", "timed_out",
                                             f"the autopilot stopped answering after {tries} tries")
                    continue
            tries = 0
            if answer.get_type() == "MISSION_ACK":
                if answer.type == mav.MAV_MISSION_ACCEPTED:
                    return CommandResult("upload_mission", "accepted")
                reason = MISSION_RESULT_NAMES.get(answer.type, str(answer.type))
                return CommandResult("upload_mission", "rejected", reason)
            if not 0 <= answer.seq < len(wire):
                return CommandResult("upload_mission", "rejected", f"the autopilot asked for item {answer.seq}")
            last = wire[answer.seq]
