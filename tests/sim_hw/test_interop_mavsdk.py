"""Proof the simulator speaks MAVLink, not just our reading of it: MAVSDK (its C++ core, an independent
implementation) connects over UDP, reads telemetry, uploads a mission, arms and runs it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sim_hw.autopilot import SimulatedAutopilot
from sim_hw.geo import offset
from sim_hw.mavlink_server import AutopilotServer

mavsdk = pytest.importorskip("mavsdk", reason="MAVSDK comes with the dev extra")

HOME = (47.397, 8.545, 488.0)


def ground_station(port: int, waypoints: list[tuple[float, float]]) -> dict[str, Any]:
    """MAVSDK's blocking API, run in a thread beside the simulator's event loop."""
    from mavsdk import ComponentType, Configuration, Mavsdk
    from mavsdk.plugins.action import Action
    from mavsdk.plugins.mission_raw import MissionItem, MissionRaw
    from mavsdk.plugins.telemetry import Telemetry

    gcs = Mavsdk(Configuration.create_with_component_type(ComponentType.GROUND_STATION))
    try:
        assert int(gcs.add_any_connection(f"udpout://127.0.0.1:{port}")) == 0
        system = gcs.first_autopilot(10.0)
        assert system is not None, "MAVSDK did not discover the simulated autopilot"
        telemetry = Telemetry(system)
        position = telemetry.position()
        for _ in range(50):
            if abs(position.latitude_deg) > 1:
                break
            import time

            time.sleep(0.1)
            position = telemetry.position()
        frame = 3  # MAV_FRAME_GLOBAL_RELATIVE_ALT
        items = [MissionItem(0, 0, 16, 1, 1, 0, 0, 0, 0, round(HOME[0] * 1e7), round(HOME[1] * 1e7), 0, 0),
                 MissionItem(1, frame, 22, 0, 1, 0, 0, 0, 0, 0, 0, 20, 0)]
        items += [MissionItem(i + 2, frame, 16, 0, 1, 0, 0, 0, 0, round(lat * 1e7), round(lon * 1e7), 20, 0)
                  for i, (lat, lon) in enumerate(waypoints)]
        mission = MissionRaw(system)
        uploaded = mission.upload_mission(items)
        downloaded = mission.download_mission()
        armed = Action(system).arm()
        started = mission.start_mission()
        return {"lat": position.latitude_deg, "lon": position.longitude_deg, "uploaded": int(uploaded),
                "downloaded": [(i.seq, i.command, i.x, i.y) for i in downloaded], "armed": int(armed),
                "started": int(started)}
    finally:
        gcs.destroy()


async def test_mavsdk_reads_telemetry_and_flies_an_uploaded_mission() -> None:
    autopilot = SimulatedAutopilot(kind="copter", home=HOME, time_scale=20)
    waypoints = [offset(HOME[0], HOME[1], 40 * i, 15 * i) for i in range(1, 6)]
    async with AutopilotServer(autopilot, "udp:127.0.0.1:0") as server:
        port = int(server.address.rsplit(":", 1)[1])
        seen = await asyncio.to_thread(ground_station, port, waypoints)
        async with asyncio.timeout(30):
            while autopilot.mission_seq < len(autopilot.mission):
                await asyncio.sleep(0.05)
    assert seen["lat"] == pytest.approx(HOME[0], abs=1e-6) and seen["lon"] == pytest.approx(HOME[1], abs=1e-6)
    assert seen["uploaded"] == seen["armed"] == seen["started"] == 1  # MAVSDK's SUCCESS
    assert [x for _, _, x, _ in seen["downloaded"][2:]] == [round(lat * 1e7) for lat, _ in waypoints]
    assert len(autopilot.mission) == 7 and autopilot.mode == "AUTO"
    last = autopilot.mission[-1]
    assert abs(autopilot.lat - last.x / 1e7) < 5e-5 and abs(autopilot.lon - last.y / 1e7) < 5e-5
