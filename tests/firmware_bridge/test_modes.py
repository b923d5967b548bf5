"""Mode names for both autopilot families, checked against pymavlink's own tables."""

from __future__ import annotations

import pytest
from pymavlink.dialects.v20 import ardupilotmega as mav

from firmware_bridge import UnknownMode
from firmware_bridge._modes import mode_name, mode_request

PX4 = mav.MAV_AUTOPILOT_PX4
APM = mav.MAV_AUTOPILOT_ARDUPILOTMEGA


@pytest.mark.parametrize(("name", "main", "sub"), [("AUTO.MISSION", 4, 4), ("AUTO", 4, 4), ("RTL", 4, 5),
                                                   ("LAND", 4, 6), ("GUIDED", 4, 3), ("POSCTL", 3, 0),
                                                   ("OFFBOARD", 6, 0)])
def test_px4_modes_pack_main_and_sub_mode(name: str, main: int, sub: int) -> None:
    base, custom, custom_sub = mode_request(PX4, mav.MAV_TYPE_QUADROTOR, name)
    assert base & mav.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED
    assert (custom, custom_sub) == (main, sub)
    shown = mode_name(PX4, mav.MAV_TYPE_QUADROTOR, (main << 16) | (sub << 24))
    assert shown in (name, f"AUTO.{name}") or (name in ("AUTO", "GUIDED") and shown.startswith("AUTO."))


def test_ardupilot_numbers_depend_on_the_vehicle_type() -> None:
    assert mode_request(APM, mav.MAV_TYPE_QUADROTOR, "GUIDED")[1] == 4
    assert mode_request(APM, mav.MAV_TYPE_GROUND_ROVER, "guided")[1] == 15
    assert mode_name(APM, mav.MAV_TYPE_GROUND_ROVER, 4) == "HOLD"
    with pytest.raises(UnknownMode, match="known:.*LOITER"):
        mode_request(APM, mav.MAV_TYPE_QUADROTOR, "HOVER")
    with pytest.raises(UnknownMode, match="PX4 has no mode"):
        mode_request(PX4, mav.MAV_TYPE_QUADROTOR, "SPORT")
