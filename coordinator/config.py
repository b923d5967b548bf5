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
    idempotency_key_hours: Annotated[float, msgspec.Meta(ge=0)] = 24.0
    """An order's Idempotency-Key is honoured this long after it was placed (0: forever); then forgotten."""
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


LatLon = Annotated[tuple[float, float], msgspec.Meta(description="[lat, lon] in WGS 84 degrees")]


class VehicleKindProfile(_Section, frozen=True):
    """What one kind of vehicle can do, as dispatch plans with it."""

    speed_m_s: Annotated[float, msgspec.Meta(gt=0)]
    """Mean speed while on a job (cruise for drones, city average for road vehicles)."""
    detour_factor: Annotated[float, msgspec.Meta(ge=1)] = 1.0
    """Route length over straight-line distance (1 for drones; about 1.3-1.5 on city roads)."""
    range_m: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """Distance on a full battery; 0: not limited (a taxi refuels between jobs)."""
    payload_kg: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """Heaviest payload it carries."""
    passengers: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Passenger seats."""
    flies: bool = False
    """Airborne: no-fly zones apply, and a job is flown as a mission."""


def _default_kinds() -> dict[str, VehicleKindProfile]:
    return {
        "copter": VehicleKindProfile(speed_m_s=12.0, range_m=15_000.0, payload_kg=2.5, flies=True),
        "rover": VehicleKindProfile(speed_m_s=1.8, detour_factor=1.4, range_m=25_000.0, payload_kg=30.0),
        "taxi": VehicleKindProfile(speed_m_s=8.0, detour_factor=1.35, payload_kg=100.0, passengers=4),
    }


class NoFlyZone(_Section, frozen=True):
    name: str
    """Shown in the 422 that refuses an order, and in logs."""
    polygon: Annotated[list[LatLon], msgspec.Meta(min_length=3)]
    """Corners as ``[lat, lon]`` pairs, in order; the polygon closes itself."""


class DispatchSettings(_Section, frozen=True):
    tick_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    """Seconds between batched matching rounds (a new order also starts one at once)."""
    candidates_per_kind: Annotated[int, msgspec.Meta(ge=1, le=64)] = 10
    """Nearest vehicles of each allowed kind considered for an order; the work grows with this, not the fleet."""
    split_above_orders: Annotated[int, msgspec.Meta(ge=0)] = 3000
    """A round with more open orders is solved as two halves of the city and their border (faster, within
    about 0.1 % of the round's optimum); 0: always one exact solve."""
    solver_processes: Annotated[int, msgspec.Meta(ge=0, le=64)] = 1
    """Worker processes solving the regions of a split round beside the dispatcher (started at the first
    such round); 0: the dispatcher solves every region itself."""
    search_threads: Annotated[int, msgspec.Meta(ge=0, le=256)] = 0
    """Threads for a round's nearest-vehicle searches (they run outside Python's lock); 0: one per core."""
    max_pickup_s: Annotated[float, msgspec.Meta(gt=0)] = 1200.0
    """No vehicle further than this (predicted pickup time) is sent; the order waits for a nearer one."""
    unassigned_cost_s: Annotated[float, msgspec.Meta(gt=0)] = 1800.0
    """Cost of leaving an order unassigned for a round, in seconds of pickup time (times 1 + priority)."""
    reassign_gain_s: Annotated[float, msgspec.Meta(ge=0)] = 120.0
    """An assignment not yet accepted moves to another vehicle only if that saves at least this many
    seconds of pickup time."""
    battery_reserve_pct: Annotated[float, msgspec.Meta(ge=0, le=100)] = 20.0
    """Battery a vehicle with limited range must still have after pickup, delivery and the way back."""
    accept_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    """A vehicle that has not accepted its job within this time loses it; the order goes back to the pool."""
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 5
    """An order declined (or not answered) by this many vehicles is rejected: nobody will take it."""
    vehicle_lost_after_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 60.0
    """A vehicle offline this long has lost its order: back to the pool before pickup, failed after."""
    arrival_radius_m: Annotated[float, msgspec.Meta(gt=0)] = 40.0
    """A vehicle this close to the pickup (drop-off) has arrived there: the order advances on its own."""
    eta_model: str = ""
    """ONNX model predicting pickup times (see ``scripts/train_eta_model.py``); empty: distance / speed."""
    mission_alt_m: Annotated[float, msgspec.Meta(gt=0, le=500)] = 30.0
    """Flight altitude of delivery missions above home."""
    service_area: list[LatLon] = []
    """Polygon of ``[lat, lon]`` corners where orders may be picked up and dropped off; empty: anywhere."""
    no_fly_zones: list[NoFlyZone] = []
    """Areas no flying vehicle may enter (``[[dispatch.no_fly_zones]]`` with ``name`` and ``polygon``)."""
    kinds: dict[str, VehicleKindProfile] = msgspec.field(default_factory=_default_kinds)
    """Per vehicle kind (``[dispatch.kinds.copter]``...): speed, detour, range, payload, seats, flies.
    Vehicles of a kind not listed are never dispatched."""


class SupplySettings(_Section, frozen=True):
    heatmap_resolution: Literal[7, 8, 9] = 8
    """H3 resolution of the heatmap when a request names none (7, 8 or 9), and of imbalance alerts."""
    heatmap_refresh_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    """Seconds between heatmap refreshes (``POST /v1/heatmap/refresh`` refreshes at once)."""
    recent_orders_s: Annotated[float, msgspec.Meta(gt=0)] = 1800.0
    """Orders placed within this many seconds count as demand in their pickup cell beside the open ones."""
    imbalance_min_ratio: Annotated[float, msgspec.Meta(ge=0)] = 0.5
    """Supply / demand below this is a deficit."""
    imbalance_max_ratio: Annotated[float, msgspec.Meta(ge=0)] = 4.0
    """Supply / demand above this is a surplus."""
    imbalance_min_demand: Annotated[int, msgspec.Meta(ge=1)] = 2
    """Cells with less demand than this never raise imbalance alerts (one order is no trend)."""
    imbalance_alert_after_s: Annotated[float, msgspec.Meta(ge=0)] = 600.0
    """A cell out of bounds this long raises an imbalance alert, standing until it comes back."""
    forecast_model: str = ""
    """ONNX demand model (``scripts/train_demand_model.py``); empty: the seasonal average plus declared events."""
    forecast_resolution: Literal[7, 8, 9] = 7
    """H3 resolution the model was trained at; other resolutions get the seasonal forecast."""
    forecast_refresh_s: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    """Seconds between forecasts (each reads the past four weeks of orders)."""
    reposition_enabled: bool = True
    """Plan moves every ``reposition_interval_s`` and send them (offers to drivers, go-tos to drones and
    robots); false: ``/v1/reposition/suggestions`` only, and ``POST /v1/reposition/run`` on demand."""
    reposition_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    """Seconds between repositioning plans."""
    reposition_offer_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0
    """How long a driver has to answer an offer (a drone or robot to take its go-to) before the next
    candidate is asked."""
    reposition_candidates: Annotated[int, msgspec.Meta(ge=1, le=20)] = 3
    """Vehicles asked in turn for one move (the planned one first, then the nearest other idle ones)."""
    reposition_arrival_radius_m: Annotated[float, msgspec.Meta(gt=0, le=10_000)] = 300.0
    """A vehicle within this distance of the cell's centre (or inside the cell) has arrived."""
    reposition_sla_factor: Annotated[float, msgspec.Meta(ge=1)] = 1.5
    """A move must arrive within this times its expected travel time after acceptance..."""
    reposition_sla_min_s: Annotated[float, msgspec.Meta(ge=0)] = 180.0
    """...and never less than this."""
    reposition_coverage: Annotated[float, msgspec.Meta(gt=0, le=10)] = 1.0
    """Idle vehicles a cell should hold per order expected there in the next 30 minutes."""
    reposition_value_s: Annotated[float, msgspec.Meta(gt=0)] = 900.0
    """What one vehicle waiting in a deficit cell is worth, in seconds of pickup time saved, when an order is
    sure to come for it there (a move is weighted by that chance); a move pays off when its travel is shorter.
    Below ``reposition_max_travel_s`` the longer moves allowed never happen: in ``bench/reposition.py`` 600
    instead of 900 halves the gain."""
    reposition_max_travel_s: Annotated[float, msgspec.Meta(gt=0)] = 900.0
    """No move takes longer than this."""
    reposition_max_share: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.3
    """Most of the idle fleet one plan moves."""
    incentive_base: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    """A human driver's incentive for a move: this..."""
    incentive_per_min: Annotated[float, msgspec.Meta(ge=0)] = 0.4
    """...plus this per minute of driving..."""
    incentive_urgency: Annotated[float, msgspec.Meta(ge=0)] = 0.5
    """...times 1 + this x the deficit's depth (0 to 1, full at 5 vehicles short)."""
    incentive_budget_per_hour: Annotated[float, msgspec.Meta(ge=0)] = 200.0
    """Incentives committed (offered, accepted or earned) in any hour at most."""
    incentive_late_grace_s: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    """An arrival this long after the SLA still earns ``incentive_late_credit``; later ones earn nothing."""
    incentive_late_credit: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5
    """Share of the incentive a late arrival earns."""
    incentive_order_credit: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0
    """Share earned by a driver who takes an order on the way (the move did its job: demand was served)."""
    currency: Annotated[str, msgspec.Meta(min_length=3, max_length=3)] = "EUR"
    """Currency of the incentives."""


class ModelRegistrySettings(_Section, frozen=True):
    public_key: str = ""
    """The fleet's Ed25519 public key (PEM, from ``fleet-coordinator models keygen``); uploads must be signed
    with its private key. Empty: the registry refuses uploads."""
    public_url: str = ""
    """Base URL vehicles download model files from (``https://fleet.example.com``); empty:
    ``http://api.host:api.port``."""
    url_key_file: str = ""
    """Secret that signs download links (created, 0600, when missing); empty: ``model-urls.key`` beside the
    embedded store. Coordinators sharing a store must share this file."""
    max_file_mb: Annotated[float, msgspec.Meta(gt=0, le=1024)] = 64.0
    """Largest ONNX file the registry takes."""
    link_ttl_s: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    """How long a download link sent to a vehicle stays valid."""
    install_ttl_s: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    """An install command not started by then never runs (it is sent again at the next check)."""
    rollout_tick_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0
    """Seconds between checks of which vehicle runs which version."""
    drift_psi_alert: Annotated[float, msgspec.Meta(gt=0)] = 0.2
    """A model version's input or score distribution this far (population stability index) from its
    training reference raises a drift alert."""
    drift_window_s: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    """Predictions of the past this many seconds make the distribution checked."""
    drift_check_s: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    """Seconds between drift checks of the versions in a rollout (``GET /v1/model-drift`` checks at once)."""


class CoordinatorSettings(_Section, frozen=True):
    broker: BrokerSettings = BrokerSettings()
    store: StoreSettings = StoreSettings()
    api: ApiSettings = ApiSettings()
    ingest: IngestSettings = IngestSettings()
    dispatch: DispatchSettings = DispatchSettings()
    supply: SupplySettings = SupplySettings()
    models: ModelRegistrySettings = ModelRegistrySettings()
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
    for section, key in (("broker", "password_file"), ("broker", "ca_file"), ("store", "redis_password_file"),
                         ("dispatch", "eta_model"), ("supply", "forecast_model"), ("models", "public_key")):
        value = getattr(getattr(settings, section), key)
        if value and not Path(value).is_file():
            raise ConfigError(f"{where}: key '{section}.{key}': no such file {value!r}")
    if settings.store.redis_url and not settings.store.redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{where}: key 'store.redis_url': {settings.store.redis_url!r} must start with "
                          "redis://, rediss:// or unix://")
    if settings.supply.imbalance_min_ratio >= settings.supply.imbalance_max_ratio:
        raise ConfigError(f"{where}: key 'supply.imbalance_min_ratio': must be below supply.imbalance_max_ratio")
    area = settings.dispatch.service_area
    if area and len(area) < 3:
        raise ConfigError(f"{where}: key 'dispatch.service_area': a polygon needs at least 3 corners, got {len(area)}")
    return settings
