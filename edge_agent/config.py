"""The agent's settings: a frozen tree loaded from ``agent.toml`` with ``FLEETEDGE_AGENT__*`` overrides.

Every key, its default and its meaning is listed in ``docs/agent-config.md``; ``fleet-agent config``
prints the effective settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec

from edge_agent.errors import ConfigError
from edge_agent.outbox import MIN_CAP_BYTES, Durability
from firmware_bridge import DeviceUrlError, parse_device_url
from firmware_bridge._mavlink import STREAM_IDS
from hw_profiles import load_profile
from protocols import BrokerUrl, SettingsError, load_settings, parse_broker_url, validate_vehicle_id
from protocols._topics import VEHICLE_ID_PATTERN

ENV_PREFIX = "FLEETEDGE_AGENT"

Positive = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class VehicleSettings(_Section, frozen=True):
    id: Annotated[str, msgspec.Meta(pattern=VEHICLE_ID_PATTERN)]
    """Unique id of this vehicle; names its MQTT namespace and is its MQTT user name."""
    kind: Literal["copter", "plane", "rover", "taxi"] = "copter"
    """What the vehicle is: ``copter``, ``plane``, ``rover`` or ``taxi``."""
    hardware: Annotated[str, msgspec.Meta(max_length=64)] = ""
    """The hardware profile this computer is (``--profile`` sets it when empty): model rollouts send it only
    models built for it, and it refuses any other."""


class OutboxSettings(_Section, frozen=True):
    path: str = "/var/lib/fleetedge/outbox.db"
    """SQLite file of the outbox; its directory must be writable."""
    cap_bytes: Annotated[int, msgspec.Meta(ge=MIN_CAP_BYTES)] = 512 * 1024 * 1024
    """Disk the outbox may use (database + WAL); past it the oldest telemetry is evicted."""
    durability: Durability = Durability.FULL
    """``full`` (fsync at each group commit) or ``normal`` (power loss may cost the last commits)."""
    flush_interval_ms: PositiveInt = 50
    """A group commit runs at least this often while records are pending."""
    flush_records: PositiveInt = 2000
    """...and as soon as this many records are pending."""


class MqttSettings(_Section, frozen=True):
    url: str = "mqtt://127.0.0.1:1883"
    """Broker address: ``mqtt://host:port`` or ``mqtts://host:port`` for TLS."""
    username: str = ""
    """MQTT user name; empty means the vehicle id (what a per-device ACL expects)."""
    password_file: str = ""
    """File holding the per-device password (kept out of the config file)."""
    ca_file: str = ""
    """CA bundle to verify the broker (mqtts); empty uses the system's."""
    cert_file: str = ""
    """Client certificate for mutual TLS (mqtts)."""
    key_file: str = ""
    """Private key of ``cert_file`` (if not inside it)."""
    keepalive_s: Annotated[int, msgspec.Meta(ge=5, le=3600)] = 30
    """MQTT keepalive; a dead link is noticed within 1.5 times this."""
    reconnect_min_s: Positive = 0.5
    """First reconnect delay; doubles (with jitter) up to ``reconnect_max_s``."""
    reconnect_max_s: Positive = 30.0
    """Longest wait between reconnect attempts."""

    @property
    def address(self) -> BrokerUrl:
        return parse_broker_url(self.url)


class UplinkSettings(_Section, frozen=True):
    batch_records: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1000
    """Most records in one MQTT message."""
    batch_bytes: Annotated[int, msgspec.Meta(ge=1024, le=512 * 1024)] = 128 * 1024
    """Most bytes of record data in one MQTT message."""
    inflight_batches: Annotated[int, msgspec.Meta(ge=1, le=64)] = 8
    """Batches published and awaiting the broker's PUBACK at once (keep <= the broker's limit)."""
    bandwidth_bytes_per_s: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Upload cap for metered links (cellular); 0 means no cap."""
    linger_ms: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 200
    """Once the backlog is sent, telemetry waits up to this long to fill a batch; alerts and events never wait."""
    publish_timeout_s: Positive = 15.0
    """A batch not acknowledged in this time counts as a lost link."""


class AutopilotSettings(_Section, frozen=True):
    device: str = ""
    """The MAVLink autopilot: ``serial:///dev/ttyACM0?baud=115200``, ``udp://HOST:PORT``,
    ``udpin://127.0.0.1:14550`` or ``tcp://HOST:PORT``. Empty: no autopilot."""
    heartbeat_timeout_s: Positive = 3.0
    """Autopilot silence after which the link counts as lost (a ``link.lost`` alert)."""
    low_battery_pct: Annotated[float, msgspec.Meta(ge=0, le=100)] = 20.0
    """Below this remaining charge a ``battery.low`` alert is raised."""
    stream_rates_hz: dict[str, Annotated[float, msgspec.Meta(ge=0, le=400)]] = {}
    """Message name -> rate asked for with SET_MESSAGE_INTERVAL (0 turns one off); empty: the defaults."""


class GpsSettings(_Section, frozen=True):
    device: str = ""
    """An NMEA 0183 GPS receiver, e.g. ``serial:///dev/ttyUSB0?baud=9600``. Empty: none."""


class TerminalSettings(_Section, frozen=True):
    device: str = ""
    """The driver terminal (MDT): ``serial:///dev/ttyUSB1?baud=115200`` or ``tcp://127.0.0.1:7070``. Empty: none."""


class CommandSettings(_Section, frozen=True):
    path: str = ""
    """SQLite file of received commands (what was seen, what state each reached, which acks are unsent);
    empty: ``commands.db`` beside the outbox."""
    queue: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 32
    """Commands waiting to run; beyond it new ones are rejected as busy."""
    takeoff_alt_m: Annotated[float, msgspec.Meta(gt=0, le=500)] = 20.0
    """A go-to for a copter on the ground first arms and climbs to this height above home."""
    arrival_radius_m: Annotated[float, msgspec.Meta(gt=0, le=1000)] = 3.0
    """A go-to is completed within this horizontal distance of its point."""
    goto_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 900.0
    """A go-to that has not arrived after this long has failed."""
    landing_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 900.0
    """A land or return-to-launch not on the ground and disarmed after this long has failed."""
    message_seen_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 120.0
    """A message to the driver not shown on the terminal after this long has failed."""
    job_hold_s: Annotated[float, msgspec.Meta(ge=0, le=600)] = 5.0
    """A job mission holds this long at the pickup (loading) and at the drop-off (release)."""
    job_arrival_radius_m: Annotated[float, msgspec.Meta(gt=0, le=1000)] = 30.0
    """A taxi this close to the drop-off (by its GPS) has completed the job."""
    job_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 7200.0
    """A job not completed this long after it was accepted has failed."""


class OnnxSettings(_Section, frozen=True):
    execution_providers: list[str] = msgspec.field(default_factory=lambda: ["CPUExecutionProvider"])
    """onnxruntime execution providers in order of preference; unavailable ones are skipped."""
    intra_op_threads: Annotated[int, msgspec.Meta(ge=0, le=64)] = 0
    """Threads per inference (0: onnxruntime's default)."""


class ModelSettings(_Section, frozen=True):
    enabled: list[str] = msgspec.field(default_factory=lambda: ["battery", "delivery_risk"])
    """On-board models to run (the agent ships ``battery`` and ``delivery_risk``); empty: none."""
    interval_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 1.0
    """Seconds between predictions; each goes into the outbox with its inputs, model and version."""
    risk_threshold: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.7
    """A job whose late probability passes this raises the critical event ``delivery.at_risk``."""
    battery_reserve_pct: Annotated[float, msgspec.Meta(ge=0, le=200)] = 20.0
    """The battery's range must cover the job's route left plus this share, or ``battery.range_short`` is
    raised."""
    cruise_speed_m_s: Annotated[float, msgspec.Meta(gt=0, le=100)] = 10.0
    """Speed that turns flight time left into range while the vehicle hovers or stands."""
    stats_every_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    """Seconds between ``model.stats`` records (calls, skipped, errors, p50/p99 latency per model)."""
    public_key: str = ""
    """The fleet's Ed25519 public key (PEM) that every model installed from the coordinator must be signed
    with; empty: installs are refused (the shipped models still run)."""
    dir: str = ""
    """Where installed model versions are kept; empty: ``models`` beside the outbox."""
    max_download_mb: Annotated[float, msgspec.Meta(gt=0, le=4096)] = 256.0
    """Largest model file the agent downloads."""
    download_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 120.0
    """A model download taking longer fails (the running version stays)."""


class SourceSettings(_Section, frozen=True):
    kind: Literal["simulated", "none"] = "none"
    """A built-in simulated vehicle (``simulated``) for demos and tests, or ``none``; real devices are
    configured in [autopilot], [gps] and [terminal]."""
    rate_hz: Annotated[float, msgspec.Meta(gt=0, le=10_000)] = 10.0
    """Telemetry records per second from the source."""
    seed: int = 0
    """Seed of the simulated source (0: derived from the vehicle id)."""
    home_lat: Annotated[float, msgspec.Meta(ge=-90, le=90)] = 52.52
    """Latitude the simulated vehicle roams around."""
    home_lon: Annotated[float, msgspec.Meta(ge=-180, le=180)] = 13.405
    """Longitude the simulated vehicle roams around."""


class AgentSettings(_Section, frozen=True):
    vehicle: VehicleSettings
    outbox: OutboxSettings = OutboxSettings()
    mqtt: MqttSettings = MqttSettings()
    uplink: UplinkSettings = UplinkSettings()
    source: SourceSettings = SourceSettings()
    autopilot: AutopilotSettings = AutopilotSettings()
    gps: GpsSettings = GpsSettings()
    terminal: TerminalSettings = TerminalSettings()
    commands: CommandSettings = CommandSettings()
    onnx: OnnxSettings = OnnxSettings()
    models: ModelSettings = ModelSettings()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level: ``debug``, ``info``, ``warning`` or ``error``."""

    @property
    def models_path(self) -> Path:
        """Where installed models live: ``models.dir``, or ``models`` beside the outbox."""
        return Path(self.models.dir) if self.models.dir else Path(self.outbox.path).parent / "models"

    @property
    def commands_path(self) -> Path:
        """Where the command inbox lives: ``commands.path``, or beside the outbox."""
        return Path(self.commands.path) if self.commands.path else Path(self.outbox.path).with_name("commands.db")


def load_agent_settings(path: str | Path | None, environ: dict[str, str] | None = None, *,
                        profile: str | None = None) -> AgentSettings:
    """Load and check the agent's settings: a hardware profile (if named), the site file over it, then
    environment overrides.

    Raises:
        ConfigError: naming the file and the key that is wrong, or the unknown profile.
    """
    try:
        base = load_profile(profile) if profile else None
        settings = load_settings(AgentSettings, path, env_prefix=ENV_PREFIX, environ=environ, base=base,
                                 base_name=f"profile {profile}")
        validate_vehicle_id(settings.vehicle.id)
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None
    if profile and not settings.vehicle.hardware:
        settings = msgspec.structs.replace(settings, vehicle=msgspec.structs.replace(settings.vehicle,
                                                                                      hardware=profile))
    where = str(path) if path else "settings"
    if profile:
        where = f"{where} over profile {profile}"
    for key in ("autopilot", "gps", "terminal"):
        device = getattr(settings, key).device
        if device:
            try:
                parse_device_url(device)
            except DeviceUrlError as exc:
                raise ConfigError(f"{where}: key '{key}.device': {exc}") from None
    unknown = set(settings.autopilot.stream_rates_hz) - set(STREAM_IDS)
    if unknown:
        raise ConfigError(f"{where}: key 'autopilot.stream_rates_hz': unknown messages {sorted(unknown)}; "
                          f"known: {sorted(STREAM_IDS)}")
    try:
        parse_broker_url(settings.mqtt.url)
    except ValueError as exc:
        raise ConfigError(f"{where}: key 'mqtt.url': {exc}") from None
    if settings.mqtt.reconnect_max_s < settings.mqtt.reconnect_min_s:
        raise ConfigError(f"{where}: key 'mqtt.reconnect_max_s' must be >= mqtt.reconnect_min_s")
    for key in ("password_file", "ca_file", "cert_file", "key_file"):
        value = getattr(settings.mqtt, key)
        if value and not Path(value).is_file():
            raise ConfigError(f"{where}: key 'mqtt.{key}': no such file {value!r}")
    if settings.models.public_key and not Path(settings.models.public_key).is_file():
        raise ConfigError(f"{where}: key 'models.public_key': no such file {settings.models.public_key!r}")
    return settings
