"""The MAVLink bridge against the simulated ArduPilot over real UDP sockets and a real pseudo-terminal."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from edge_agent.outbox import TelemetryOutbox
from firmware_bridge import MavlinkAutopilot, MissionItem, parse_device_url
from protocols import RecordClass
from sim_hw.autopilot import SimulatedAutopilot
from sim_hw.geo import distance_m, offset
from sim_hw.mavlink_server import AutopilotServer

SPEEDUP = 20.0


@contextlib.asynccontextmanager
async def flying(tmp_path: Path, endpoint: str, *, kind: str = "copter", link: Path | None = None,
                 url: str | None = None, **bridge_args: Any) -> AsyncIterator[tuple[SimulatedAutopilot, AutopilotServer,
                                                                                     MavlinkAutopilot, TelemetryOutbox]]:
    autopilot = SimulatedAutopilot(kind=kind, time_scale=SPEEDUP)
    outbox = TelemetryOutbox.open(tmp_path / "outbox.db", cap_bytes=64 * 1024 * 1024)
    async with AutopilotServer(autopilot, endpoint, link=link) as server:
        device = url.format(address=server.address) if url else (
            f"udp://{server.address}" if endpoint.startswith("udp") else f"serial://{link or server.address}?baud=57600")
        bridge = MavlinkAutopilot(parse_device_url(device), reconnect_max_s=0.5, **bridge_args)
        task = asyncio.create_task(bridge.run(outbox), name="bridge")
        try:
            await bridge.wait_connected(10)
            yield autopilot, server, bridge, outbox
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            outbox.commit()


def kinds(outbox: TelemetryOutbox) -> list[tuple[str, RecordClass, dict[str, Any]]]:
    outbox.commit()
    rows = outbox._db.execute("SELECT kind, cls, data FROM outbox ORDER BY seq").fetchall()
    return [(k, RecordClass(c), msgspec.msgpack.decode(d)) for k, c, d in rows]


async def until(predicate: Any, timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout} s waiting for {what}")


async def fly_the_full_profile(autopilot: SimulatedAutopilot, bridge: MavlinkAutopilot) -> None:
    assert (await bridge.set_mode("GUIDED")).ok
    assert (await bridge.arm()).ok
    assert (await bridge.takeoff(20)).ok
    await until(lambda: autopilot.alt > 19.5, 10, "the climb to 20 m")
    lat, lon = offset(autopilot.home[0], autopilot.home[1], 150, 50)
    assert (await bridge.goto(lat, lon, 20)).ok
    await until(lambda: distance_m(autopilot.lat, autopilot.lon, lat, lon) < 2, 10, "arrival at the go-to point")

    items = [MissionItem(*offset(autopilot.home[0], autopilot.home[1], 40 * (i % 5), 40 * (i // 5)), 25)
             for i in range(20)]
    result = await bridge.upload_mission(items)
    assert result.ok, result
    assert len(autopilot.mission) == 21 and autopilot.mission[20].x == round(items[19].lat * 1e7)
    assert (await bridge.set_mode("AUTO")).ok
    await until(lambda: autopilot.mission_seq >= 21, 30, "the 20-waypoint mission to complete")

    assert (await bridge.return_to_launch()).ok
    await until(lambda: distance_m(autopilot.lat, autopilot.lon, *autopilot.home[:2]) < 2, 20, "return to launch")
    assert (await bridge.land()).ok or not autopilot.armed
    await until(lambda: not autopilot.armed and autopilot.alt == 0.0, 20, "landing and auto-disarm")
    await until(lambda: bridge.state.armed is False, 5, "the disarmed heartbeat")


async def test_full_flight_over_udp_with_telemetry_in_the_outbox(tmp_path: Path) -> None:
    async with flying(tmp_path, "udp:127.0.0.1:0") as (autopilot, _, bridge, outbox):
        await fly_the_full_profile(autopilot, bridge)
        await asyncio.sleep(0.3)
        records = kinds(outbox)
    names = [k for k, _, _ in records]
    for kind in ("position", "gps", "attitude", "vfr_hud", "sys_status", "battery", "status"):
        assert kind in names, f"no {kind} records reached the outbox"
    reached = [d["seq"] for k, _, d in records if k == "mission.item_reached"]
    assert reached == list(range(1, 21)), "every waypoint is reported once, in order"
    events = [(k, d) for k, c, d in records if c is RecordClass.EVENT and k in ("armed", "disarmed", "mode.changed")]
    assert ("armed", {"mode": "GUIDED"}) in events and any(k == "disarmed" for k, _ in events)
    assert {"from": "GUIDED", "to": "AUTO"} in [d for k, d in events if k == "mode.changed"]
    position = next(d for k, _, d in reversed(records) if k == "position")
    assert abs(position["lat"] - autopilot.lat) < 1e-4


async def test_full_flight_over_a_57600_baud_serial_line(tmp_path: Path) -> None:
    async with flying(tmp_path, "pty:57600", link=tmp_path / "ttyACM0") as (autopilot, _, bridge, outbox):
        await fly_the_full_profile(autopilot, bridge)
        records = kinds(outbox)
    assert sum(1 for k, _, _ in records if k == "position") > 50


async def test_arming_without_gps_fix_is_rejected_with_the_autopilots_reason(tmp_path: Path) -> None:
    async with flying(tmp_path, "udp:127.0.0.1:0") as (autopilot, _, bridge, outbox):
        autopilot.failures.gps_lost = True
        await until(lambda: bridge.state.gps_fix is not None and bridge.state.gps_fix < 3, 5, "the fix to drop")
        result = await bridge.arm()
        assert result.state == "rejected"
        assert result.reason == "FAILED: PreArm: Need 3D Fix"
        takeoff = await bridge.takeoff(10)
        assert takeoff.state == "rejected" and "armed" in takeoff.reason
        assert not autopilot.armed
        autopilot.failures.gps_lost = False
        await until(lambda: bridge.state.gps_fix == 3, 5, "the fix to return")
        records = kinds(outbox)
    lost = [(k, c) for k, c, _ in records if k.startswith("gps.fix")]
    assert lost == [("gps.fix_lost", RecordClass.ALERT), ("gps.fix_regained", RecordClass.EVENT)]


async def test_unknown_mode_and_unsupported_commands(tmp_path: Path) -> None:
    from firmware_bridge import UnknownMode

    async with flying(tmp_path, "udp:127.0.0.1:0", kind="rover") as (_, __, bridge, ___):
        with pytest.raises(UnknownMode, match="no mode 'LOITER_FOREVER'"):
            await bridge.set_mode("LOITER_FOREVER")
        takeoff = await bridge.takeoff(10)
        assert takeoff.state == "rejected" and takeoff.reason.startswith("UNSUPPORTED")
        assert (await bridge.set_mode("GUIDED")).ok  # Rover's GUIDED is 15, not Copter's 4


async def test_silent_autopilot_is_a_lost_link_and_comes_back(tmp_path: Path) -> None:
    async with flying(tmp_path, "udp:127.0.0.1:0", heartbeat_timeout_s=1.0) as (autopilot, _, bridge, outbox):
        autopilot.failures.link_down = True
        await until(lambda: not bridge.connected.is_set(), 5, "the bridge to notice the silence")
        timed_out = await bridge.arm()
        assert timed_out.state == "timed_out"
        autopilot.failures.link_down = False
        await until(bridge.connected.is_set, 5, "the link to come back")
        assert (await bridge.set_mode("GUIDED")).ok
        records = kinds(outbox)
    names = [k for k, _, _ in records]
    assert "link.lost" in names and names.index("link.regained") > names.index("link.lost")


async def test_unplugged_serial_flight_controller_comes_back_without_restart(tmp_path: Path) -> None:
    link = tmp_path / "ttyACM0"
    async with flying(tmp_path, "pty:115200", link=link) as (autopilot, server, bridge, outbox):
        server.unplug()
        await until(lambda: bridge.counters.link_failures >= 1, 5, "the bridge to see the device vanish")
        await asyncio.sleep(0.5)
        server.replug()
        await until(lambda: bridge.counters.link_opens >= 2 and bridge.connected.is_set(), 10,
                    "the bridge to reopen the replugged device")
        before = sum(1 for k, _, _ in kinds(outbox) if k == "position")
        await asyncio.sleep(1.0)
        after = sum(1 for k, _, _ in kinds(outbox) if k == "position")
        assert after > before, "telemetry flows again after the replug"
        assert (await bridge.set_mode("GUIDED")).ok


async def test_garbage_and_truncated_frames_are_skipped_and_counted(tmp_path: Path) -> None:
    async with flying(tmp_path, "udp:127.0.0.1:0") as (autopilot, _, bridge, outbox):
        good = bridge.counters.received
        frame = bytearray(os.urandom(0))
        for _ in range(20):
            autopilot.send(os.urandom(64))
            autopilot.send(b"\xfd\x09\x00\x00\x01\x01\x01\x00\x00")  # a header promising bytes that never come
            frame.clear()
        bad_header = b"\xfd\x1c\x00\x00\x07\x01\x01\x21\x00\x00" + os.urandom(28) + b"\x00\x00"  # wrong CRC
        autopilot.send(bad_header)
        await asyncio.sleep(0.5)
        await until(lambda: bridge.counters.received > good + 20, 5, "good frames after the garbage")
        assert bridge.counters.bad_frames > 0
        assert (await bridge.set_mode("GUIDED")).ok


async def test_mission_upload_survives_packet_loss(tmp_path: Path) -> None:
    async with flying(tmp_path, "udp:127.0.0.1:0") as (autopilot, _, bridge, __):
        autopilot.failures.packet_loss = 0.2
        items = [MissionItem(*offset(autopilot.home[0], autopilot.home[1], 20 * i, 0), 30) for i in range(20)]
        result = await bridge.upload_mission(items, item_timeout_s=0.3, retries=10)
        assert result.ok, result
        assert [i.x for i in autopilot.mission[1:]] == [round(i.lat * 1e7) for i in items]


async def test_low_battery_and_failsafe_alerts(tmp_path: Path) -> None:
    async with flying(tmp_path, "udp:127.0.0.1:0") as (autopilot, _, bridge, outbox):
        assert (await bridge.set_mode("GUIDED")).ok
        assert (await bridge.arm()).ok
        assert (await bridge.takeoff(15)).ok
        await until(lambda: autopilot.alt > 14, 10, "the climb")
        autopilot.set_battery_pct(14)
        await until(lambda: autopilot.mode == "RTL", 5, "the battery failsafe")
        await until(lambda: {"battery.low", "failsafe"} <= {k for k, c, _ in kinds(outbox) if c is RecordClass.ALERT},
                    5, "the battery and failsafe alerts")
        records = kinds(outbox)
    alerts = {k for k, c, _ in records if c is RecordClass.ALERT}
    assert {"battery.low", "failsafe"} <= alerts
    assert any(k == "statustext" and d["text"] == "Battery 1 is low" for k, _, d in records)


async def test_tcp_link_like_sitl_port_5760(tmp_path: Path) -> None:
    async with flying(tmp_path, "tcp:127.0.0.1:0", url="tcp://{address}") as (autopilot, server, bridge, outbox):
        assert bridge.url.scheme == "tcp"
        assert (await bridge.set_mode("GUIDED")).ok
        assert (await bridge.arm()).ok and autopilot.armed
        assert (await bridge.disarm()).ok and not autopilot.armed


async def test_streams_follow_the_requested_rates(tmp_path: Path) -> None:
    rates = {"GLOBAL_POSITION_INT": 25.0, "ATTITUDE": 5.0, "SYS_STATUS": 0.0}
    async with flying(tmp_path, "udp:127.0.0.1:0", stream_rates_hz=rates) as (autopilot, _, bridge, outbox):
        await asyncio.sleep(0.5)
        before = kinds(outbox)
        await asyncio.sleep(2.0)
        window = kinds(outbox)[len(before):]
    count = {k: sum(1 for name, _, _ in window if name == k) for k in ("position", "attitude", "sys_status")}
    # Two seconds at 25 Hz and 5 Hz, with slack for a busy machine; 0 Hz turns a stream off.
    assert 35 <= count["position"] <= 60, count
    assert 6 <= count["attitude"] <= 14, count
    assert count["sys_status"] == 0, count
