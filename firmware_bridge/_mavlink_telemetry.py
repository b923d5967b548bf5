"""MAVLink messages into telemetry records and the events an operator cares about.

Records (class telemetry): ``position``, ``gps``, ``attitude``, ``vfr_hud``, ``sys_status``, ``battery``,
``home``, ``status`` (mode, armed, system status; on each autopilot heartbeat).
Events: ``mode.changed``, ``armed``, ``disarmed``, ``mission.item_reached``, ``statustext``;
alerts: ``failsafe``, ``battery.low``, ``gps.fix_lost`` (and the event ``gps.fix_regained``),
``statustext`` of severity critical or worse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pymavlink.dialects.v20 import ardupilotmega as mav

from firmware_bridge._modes import mode_name
from firmware_bridge._source import RecordSink
from protocols import RecordClass

FAILSAFE_STATES = {mav.MAV_STATE_CRITICAL: "critical", mav.MAV_STATE_EMERGENCY: "emergency"}
SEVERITY = {v: k.removeprefix("MAV_SEVERITY_").lower() for k, v in vars(mav).items() if k.startswith("MAV_SEVERITY_")
            and isinstance(v, int)}


@dataclass(slots=True)
class VehicleState:
    """What the translator has seen of the autopilot; the command side reads it too."""

    autopilot: int = mav.MAV_AUTOPILOT_ARDUPILOTMEGA
    vehicle_type: int = mav.MAV_TYPE_QUADROTOR
    mode: str = ""
    armed: bool | None = None
    system_status: int = 0
    gps_fix: int | None = None
    battery_pct: float | None = None
    voltage_v: float | None = None
    current_a: float | None = None
    groundspeed_m_s: float = math.nan
    climb_m_s: float = math.nan
    lat: float = math.nan
    lon: float = math.nan
    alt_rel_m: float = math.nan
    home_amsl_m: float = math.nan
    home_lat: float = math.nan
    home_lon: float = math.nan
    landed: bool = True
    last_statustext: str = ""
    last_statustext_at: float = 0.0


class TelemetryTranslator:
    """Feeds records and events to ``sink`` for each message from the autopilot."""

    def __init__(self, sink: RecordSink, state: VehicleState, *, low_battery_pct: float = 20.0) -> None:
        self._sink = sink
        self.state = state
        self._low_battery_pct = low_battery_pct
        self._low_battery_raised = False
        self._failsafe = ""

    def handle(self, msg: Any, now: float) -> None:
        handler = getattr(self, f"_on_{msg.get_type().lower()}", None)
        if handler is not None:
            handler(msg, now)

    def _append(self, kind: str, data: dict[str, Any], now: float, cls: RecordClass = RecordClass.TELEMETRY) -> None:
        self._sink.append(kind, data, cls=cls, ts=now)

    def _on_heartbeat(self, msg: Any, now: float) -> None:
        s = self.state
        s.autopilot, s.vehicle_type = msg.autopilot, msg.type
        mode = mode_name(msg.autopilot, msg.type, msg.custom_mode)
        armed = bool(msg.base_mode & mav.MAV_MODE_FLAG_SAFETY_ARMED)
        if s.mode and mode != s.mode:
            self._append("mode.changed", {"from": s.mode, "to": mode}, now, RecordClass.EVENT)
        if s.armed is not None and armed != s.armed:
            self._append("armed" if armed else "disarmed", {"mode": mode}, now, RecordClass.EVENT)
        failsafe = FAILSAFE_STATES.get(msg.system_status, "")
        if failsafe != self._failsafe:
            if failsafe:
                self._append("failsafe", {"state": failsafe, "mode": mode, "reason": s.last_statustext}, now,
                             RecordClass.ALERT)
            else:
                self._append("failsafe.cleared", {"mode": mode}, now, RecordClass.EVENT)
            self._failsafe = failsafe
        s.mode, s.armed, s.system_status = mode, armed, msg.system_status
        self._append("status", {"mode": mode, "armed": armed, "system_status": msg.system_status}, now)

    def _on_global_position_int(self, msg: Any, now: float) -> None:
        s = self.state
        s.lat, s.lon, s.alt_rel_m = msg.lat / 1e7, msg.lon / 1e7, msg.relative_alt / 1000
        self._append("position", {
            "lat": s.lat, "lon": s.lon, "alt_m": msg.alt / 1000, "rel_alt_m": s.alt_rel_m,
            "vn_m_s": msg.vx / 100, "ve_m_s": msg.vy / 100, "vd_m_s": msg.vz / 100,
            "heading_deg": msg.hdg / 100 if msg.hdg != 65535 else None}, now)

    def _on_gps_raw_int(self, msg: Any, now: float) -> None:
        s = self.state
        has_fix = msg.fix_type >= 3
        if s.gps_fix is not None:
            had_fix = s.gps_fix >= 3
            if had_fix and not has_fix:
                self._append("gps.fix_lost", {"fix_type": msg.fix_type, "satellites": msg.satellites_visible}, now,
                             RecordClass.ALERT)
            elif has_fix and not had_fix:
                self._append("gps.fix_regained", {"fix_type": msg.fix_type, "satellites": msg.satellites_visible},
                             now, RecordClass.EVENT)
        s.gps_fix = msg.fix_type
        self._append("gps", {"fix_type": msg.fix_type, "satellites": msg.satellites_visible,
                             "eph": msg.eph, "lat": msg.lat / 1e7, "lon": msg.lon / 1e7}, now)

    def _on_attitude(self, msg: Any, now: float) -> None:
        self._append("attitude", {"roll_deg": math.degrees(msg.roll), "pitch_deg": math.degrees(msg.pitch),
                                  "yaw_deg": math.degrees(msg.yaw)}, now)

    def _on_vfr_hud(self, msg: Any, now: float) -> None:
        self.state.groundspeed_m_s, self.state.climb_m_s = msg.groundspeed, msg.climb
        self._append("vfr_hud", {"airspeed_m_s": msg.airspeed, "groundspeed_m_s": msg.groundspeed,
                                 "heading_deg": msg.heading, "throttle_pct": msg.throttle, "alt_m": msg.alt,
                                 "climb_m_s": msg.climb}, now)

    def _on_sys_status(self, msg: Any, now: float) -> None:
        remaining = msg.battery_remaining if msg.battery_remaining >= 0 else None
        self._battery_level(remaining, msg.voltage_battery / 1000, now)
        self.state.voltage_v = msg.voltage_battery / 1000
        self.state.current_a = msg.current_battery / 100 if msg.current_battery >= 0 else None
        self._append("sys_status", {"voltage_v": msg.voltage_battery / 1000, "current_a": msg.current_battery / 100,
                                    "remaining_pct": remaining, "load_pct": msg.load / 10,
                                    "sensors_health": msg.onboard_control_sensors_health}, now)

    def _on_battery_status(self, msg: Any, now: float) -> None:
        cells = [v for v in msg.voltages if v not in (65535, 0)]
        voltage = sum(cells) / 1000 if cells else None
        remaining = msg.battery_remaining if msg.battery_remaining >= 0 else None
        self._battery_level(remaining, voltage, now)
        self._append("battery", {"voltage_v": voltage, "current_a": msg.current_battery / 100 if msg.current_battery >= 0
                                 else None, "consumed_mah": msg.current_consumed, "remaining_pct": remaining,
                                 "time_remaining_s": msg.time_remaining or None}, now)

    def _battery_level(self, remaining: float | None, voltage: float | None, now: float) -> None:
        if remaining is None:
            return
        self.state.battery_pct = remaining
        if remaining < self._low_battery_pct and not self._low_battery_raised:
            self._low_battery_raised = True
            self._append("battery.low", {"remaining_pct": remaining, "voltage_v": voltage}, now, RecordClass.ALERT)
        elif remaining > self._low_battery_pct + 5:
            self._low_battery_raised = False

    def _on_home_position(self, msg: Any, now: float) -> None:
        self.state.home_amsl_m = msg.altitude / 1000
        self.state.home_lat, self.state.home_lon = msg.latitude / 1e7, msg.longitude / 1e7
        self._append("home", {"lat": msg.latitude / 1e7, "lon": msg.longitude / 1e7, "alt_m": msg.altitude / 1000},
                     now)

    def _on_extended_sys_state(self, msg: Any, now: float) -> None:
        self.state.landed = msg.landed_state == mav.MAV_LANDED_STATE_ON_GROUND

    def _on_statustext(self, msg: Any, now: float) -> None:
        text = msg.text if isinstance(msg.text, str) else msg.text.decode(errors="replace")
        text = text.rstrip("\x00")
        self.state.last_statustext, self.state.last_statustext_at = text, now
        cls = RecordClass.ALERT if msg.severity <= mav.MAV_SEVERITY_CRITICAL else RecordClass.EVENT
        self._append("statustext", {"severity": SEVERITY.get(msg.severity, str(msg.severity)), "text": text}, now, cls)

    def _on_mission_item_reached(self, msg: Any, now: float) -> None:
        self._append("mission.item_reached", {"seq": msg.seq}, now, RecordClass.EVENT)
