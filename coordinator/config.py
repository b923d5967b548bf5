"""The coordinator's settings: a frozen tree from ``coordinator.toml`` with ``FLEETEDGE_COORDINATOR__*`` overrides.

Every key is listed in ``docs/coordinator-config.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec

from coordinator.errors import ConfigError
from protocols import BrokerUrl, SettingsError, load_settings, parse_broker_url

ENV_PREFIX = "FLEETEDGE_COORDINATOR"

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class BrokerSettings(_Section, frozen=True):
    url: str = ""
    """External broker, ``mqtt://host:port`` or ``mqtts://host:port``. Empty: start the embedded broker."""
    embedded_host: str = "127.0.0.1"
    """Interface the embedded broker listens on (loopback by default: nothing is exposed)."""
    embedded_port: Port = 1883
    """Port of the embedded broker (0: any free port)."""
    username: str = "coordinator"
    """MQTT user name of the coordinator at an external broker."""
    password_file: str = ""
    """File holding the coordinator's MQTT password."""
    ca_file: str = ""
    """CA bundle to verify an ``mqtts://`` broker; empty uses the system's."""
    client_id: str = "fleetedge-coordinator"
    """MQTT client id; the broker keeps this persistent session's queued telemetry while we are down."""
    shared_group: str = ""
    """If set, subscribe with ``$share/<group>/...`` so several coordinators split the ingest."""

    @property
    def address(self) -> BrokerUrl:
        """The external broker's address; only meaningful when ``url`` is set."""
        return parse_broker_url(self.url)


class StoreSettings(_Section, frozen=True):
    path: str = "fleetedge-coordinator.db"
    """Embedded store: SQLite file with fleet state, telemetry history, commands and API keys."""
    redis_url: str = ""
    """If set (``redis://host:port/db`` or ``rediss://`` for TLS), keep state in Redis instead of ``path``,
    so several coordinators can share it."""
    redis_password_file: str = ""
    """File holding the Redis password (``AUTH``); empty: none, or the one in ``redis_url``."""
    redis_key_prefix: str = "fleetedge:"
    """Prefix of every Redis key, so one Redis can hold several fleets."""
    h3_resolution: Annotated[int, msgspec.Meta(ge=0, le=15)] = 8
    """H3 resolution of each vehicle's cell (8: about 0.7 km² hexagons)."""
    telemetry_retention_days: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    """Telemetry history older than this is deleted (0: keep forever); latest state and counters stay."""


class ApiSettings(_Section, frozen=True):
    host: str = "127.0.0.1"
    """Interface the REST API listens on."""
    port: Port = 8080
    """Port of the REST API."""
    max_telemetry_page: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 10_000
    """Most records one telemetry request returns."""
    rate_limit_per_s: Annotated[float, msgspec.Meta(ge=0)] = 50.0
    """Requests per second per API key (0: no limit); beyond it requests get 429 with Retry-After."""
    rate_limit_burst: Annotated[int, msgspec.Meta(ge=1)] = 100
    """Requests a key may make at once before the rate applies."""
    key_cache_s: Annotated[float, msgspec.Meta(ge=0, le=300)] = 5.0
    """Seconds a verified API key is trusted without asking the store again. A revocation through this
    coordinator's API applies at once; one by the CLI or another coordinator within this time."""


class IngestSettings(_Section, frozen=True):
    queue_messages: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1024
    """Received MQTT messages waiting for the writer; when full, reading from the broker pauses."""
    commit_interval_ms: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 20
    """The writer commits at least this often while messages wait; each commit then acknowledges them."""
    max_messages_per_commit: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 500
    """Most MQTT messages written (and then acknowledged) in one transaction."""


class CoordinatorSettings(_Section, frozen=True):
    broker: BrokerSettings = BrokerSettings()
    store: StoreSettings = StoreSettings()
    api: ApiSettings = ApiSettings()
    ingest: IngestSettings = IngestSettings()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level: ``debug``, ``info``, ``warning`` or ``error``."""
    log_format: Literal["json", "text"] = "json"
    """``json``: one object per line (ts, level, logger, msg) for log pipelines; ``text`` for people."""


def load_coordinator_settings(path: str | Path | None, environ: dict[str, str] | None = None) -> CoordinatorSettings:
    """Load and check the coordinator's settings.

    Raises:
        ConfigError: naming the file and the key that is wrong.
    """
    try:
        settings = load_settings(CoordinatorSettings, path, env_prefix=ENV_PREFIX, environ=environ)
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None
    where = str(path) if path else "settings"
    if settings.broker.url:
        try:
            parse_broker_url(settings.broker.url)
        except ValueError as exc:
            raise ConfigError(f"{where}: key 'broker.url': {exc}") from None
    for section, key in (("broker", "password_file"), ("broker", "ca_file"), ("store", "redis_password_file")):
        value = getattr(getattr(settings, section), key)
        if value and not Path(value).is_file():
            raise ConfigError(f"{where}: key '{section}.{key}': no such file {value!r}")
    if settings.store.redis_url and not settings.store.redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{where}: key 'store.redis_url': {settings.store.redis_url!r} must start with "
                          "redis://, rediss:// or unix://")
    return settings
