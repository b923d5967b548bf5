from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.cli import main
from edge_agent.config import load_agent_settings
from edge_agent.errors import ConfigError
from edge_agent.outbox import Durability


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_a_minimal_file_gets_documented_defaults(tmp_path: Path) -> None:
    settings = load_agent_settings(write(tmp_path, '[vehicle]\nid = "drone-1"\n'), environ={})
    assert settings.vehicle.id == "drone-1"
    assert settings.outbox.durability is Durability.FULL
    assert settings.mqtt.address.port == 1883 and not settings.mqtt.address.tls


@pytest.mark.parametrize(("text", "key"), [
    ('[vehicle]\nid = "d"\ncolour = 1\n', "vehicle.colour"),
    ('[vehicle]\nid = "d"\n[uplink]\nbatch_records = "many"\n', "uplink.batch_records"),
    ('[vehicle]\nid = "d"\n[outbox]\ncap_bytes = 10\n', "outbox.cap_bytes"),
    ('[vehicle]\nid = "a/b"\n', "vehicle.id"),
    ('[vehicle]\nid = "d"\n[mqtt]\nurl = "http://x"\n', "mqtt.url"),
    ('[vehicle]\nid = "d"\n[mqtt]\nca_file = "/nope.pem"\n', "mqtt.ca_file"),
    ("[outbox]\n", "vehicle"),
])
def test_errors_name_the_file_and_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_agent_settings(path, environ={})
    assert str(path) in str(caught.value) and key in str(caught.value)


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[vehicle]\nid = "d"\n[uplink]\nbatch_records = 10\n')
    settings = load_agent_settings(path, environ={"FLEETEDGE_AGENT__UPLINK__BATCH_RECORDS": "99",
                                                  "FLEETEDGE_AGENT__MQTT__URL": "mqtts://broker:8883"})
    assert settings.uplink.batch_records == 99
    assert settings.mqtt.address.tls and settings.mqtt.address.port == 8883


def test_missing_and_invalid_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_agent_settings(tmp_path / "nope.toml", environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_agent_settings(write(tmp_path, "[vehicle\n"), environ={})


def test_cli_reports_a_bad_key_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, '[vehicle]\nid = "d"\ncolour = 1\n')
    assert main(["config", "-c", str(path)]) == 2
    assert "vehicle.colour" in capsys.readouterr().err


def test_cli_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and "fleet-agent 0.1.0" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "--config" in capsys.readouterr().out


def test_a_profile_supplies_devices_and_the_site_file_overrides_it(tmp_path: Path) -> None:
    site = write(tmp_path, '[vehicle]\nid = "drone-3"\n[autopilot]\nheartbeat_timeout_s = 5.0\n'
                           '[autopilot.stream_rates_hz]\nATTITUDE = 25\n')
    settings = load_agent_settings(site, environ={}, profile="rpi-pixhawk-ardupilot")
    assert settings.autopilot.device == "serial:///dev/serial0?baud=921600"
    assert settings.autopilot.heartbeat_timeout_s == 5.0
    assert settings.autopilot.stream_rates_hz["ATTITUDE"] == 25 and settings.autopilot.stream_rates_hz["VFR_HUD"] == 4
    assert settings.outbox.flush_interval_ms == 200
    jetson = load_agent_settings(site, environ={}, profile="jetson-orin-px4")
    assert jetson.onnx.execution_providers[0] == "TensorrtExecutionProvider"
    # The profile names the hardware (what model rollouts match), unless the site file says otherwise.
    assert (settings.vehicle.hardware, jetson.vehicle.hardware) == ("rpi-pixhawk-ardupilot", "jetson-orin-px4")
    assert load_agent_settings(site, environ={}).vehicle.hardware == ""
    named = write(tmp_path, '[vehicle]\nid = "drone-3"\nhardware = "rpi5-custom"\n')
    assert load_agent_settings(named, environ={}, profile="rpi-pixhawk-ardupilot").vehicle.hardware == "rpi5-custom"


def test_every_shipped_profile_loads(tmp_path: Path) -> None:
    import hw_profiles

    site = write(tmp_path, '[vehicle]\nid = "v-1"\n')
    names = hw_profiles.profile_names()
    assert {"rpi-pixhawk-ardupilot", "jetson-orin-px4", "taxi-nmea-terminal", "rover-ardurover-udp"} <= set(names)
    for name in names:
        assert hw_profiles.describe(name), f"profile {name} has no description line"
        load_agent_settings(site, environ={}, profile=name)


@pytest.mark.parametrize(("text", "key"), [
    ('[vehicle]\nid = "d"\n[autopilot]\ndevice = "bluetooth://x"\n', "autopilot.device"),
    ('[vehicle]\nid = "d"\n[gps]\ndevice = "serial://"\n', "gps.device"),
    ('[vehicle]\nid = "d"\n[autopilot.stream_rates_hz]\nPOSITION = 5\n', "autopilot.stream_rates_hz"),
])
def test_device_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_agent_settings(write(tmp_path, text), environ={})


def test_unknown_profile_lists_the_shipped_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = write(tmp_path, '[vehicle]\nid = "d"\n')
    with pytest.raises(ConfigError, match="taxi-nmea-terminal"):
        load_agent_settings(site, environ={}, profile="raspberry")
    assert main(["profiles"]) == 0
    assert "jetson-orin-px4" in capsys.readouterr().out
