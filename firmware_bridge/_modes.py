"""Flight mode names of ArduPilot and PX4, and how to ask for them.

ArduPilot numbers its modes per vehicle type (Copter's GUIDED is 4, Rover's is 15). PX4 packs a main
and a sub mode into ``custom_mode``. Callers may use either family's names; the common intents
(GUIDED, AUTO, RTL, LAND, LOITER, HOLD) are translated to the PX4 mode that does the same job.
"""

from __future__ import annotations

from pymavlink import mavutil
from pymavlink.dialects.v20 import ardupilotmega as mav

from firmware_bridge._errors import UnknownMode

PX4_ALIASES = {"GUIDED": "LOITER", "HOLD": "LOITER", "AUTO": "MISSION", "AUTO.MISSION": "MISSION",
               "AUTO.LOITER": "LOITER", "AUTO.RTL": "RTL", "AUTO.LAND": "LAND", "AUTO.TAKEOFF": "TAKEOFF"}


def is_px4(autopilot: int) -> bool:
    return bool(autopilot == mav.MAV_AUTOPILOT_PX4)


def mode_name(autopilot: int, vehicle_type: int, custom_mode: int) -> str:
    """The mode's name as the autopilot's own tools show it (``GUIDED``; ``AUTO.MISSION`` on PX4)."""
    if is_px4(autopilot):
        main, sub = (custom_mode >> 16) & 0xFF, (custom_mode >> 24) & 0xFF
        for name, (_, m, s) in mavutil.px4_map.items():
            if m == main and s == sub:
                return name if m != 4 else f"AUTO.{name}"
        return f"PX4_{main}_{sub}"
    mapping = mavutil.mode_mapping_bynumber(vehicle_type) or {}
    return str(mapping.get(custom_mode, f"MODE_{custom_mode}"))


def mode_request(autopilot: int, vehicle_type: int, name: str) -> tuple[int, int, int]:
    """``(base_mode, custom_mode, custom_sub_mode)`` for MAV_CMD_DO_SET_MODE.

    Raises:
        UnknownMode: naming the modes this autopilot has.
    """
    wanted = name.upper()
    if is_px4(autopilot):
        key = PX4_ALIASES.get(wanted, wanted.removeprefix("AUTO."))
        if key not in mavutil.px4_map:
            raise UnknownMode(f"PX4 has no mode {name!r}; known: {', '.join(sorted(mavutil.px4_map))}")
        base, main, sub = mavutil.px4_map[key]
        return base, main, sub
    mapping = mavutil.mode_mapping_bynumber(vehicle_type) or {}
    for number, mode in mapping.items():
        if mode == wanted:
            return mav.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED, number, 0
    raise UnknownMode(f"this ArduPilot vehicle has no mode {name!r}; known: {', '.join(sorted(mapping.values()))}")
