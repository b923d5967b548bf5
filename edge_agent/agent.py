"""The edge agent: a telemetry source, the group committer and the uplink, as one structured task group."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

from edge_agent import __version__
from edge_agent.active_job import ActiveJob
from edge_agent.command_executor import CommandExecutor
from edge_agent.command_inbox import CommandInbox
from edge_agent.config import AgentSettings
from edge_agent.errors import ModelError, OutboxError
from edge_agent.inference import OnboardModels
from edge_agent.model_library import ModelLibrary
from edge_agent.models import EdgeModel
from edge_agent.outbox import TelemetryOutbox
from edge_agent.systemd_notify import keep_watchdog_fed, notify, watchdog_interval_s
from edge_agent.uplink import Uplink
from firmware_bridge import DriverTerminal, MavlinkAutopilot, NmeaGps, TelemetrySource
from protocols import InstallModelParams, SignatureError, read_key

log = logging.getLogger(__name__)


class _StopRequested(Exception):
    pass


def build_sources(settings: AgentSettings) -> dict[str, TelemetrySource]:
    """The devices the settings name, by the task name they run under."""
    sources: dict[str, TelemetrySource] = {}
    src = settings.source
    if src.kind == "simulated":
        from sim_hw.telemetry_source import SimulatedTelemetrySource

        sources["simulated-source"] = SimulatedTelemetrySource(
            settings.vehicle.id, kind=settings.vehicle.kind, rate_hz=src.rate_hz, seed=src.seed,
            home=(src.home_lat, src.home_lon))
    ap = settings.autopilot
    if ap.device:
        from firmware_bridge import MavlinkAutopilot, parse_device_url

        sources["autopilot"] = MavlinkAutopilot(parse_device_url(ap.device), stream_rates_hz=ap.stream_rates_hz or None,
                                                heartbeat_timeout_s=ap.heartbeat_timeout_s,
                                                low_battery_pct=ap.low_battery_pct)
    if settings.gps.device:
        from firmware_bridge import NmeaGps, parse_device_url

        sources["gps"] = NmeaGps(parse_device_url(settings.gps.device, default_baud=9600))
    if settings.terminal.device:
        from firmware_bridge import DriverTerminal, parse_device_url

        sources["terminal"] = DriverTerminal(parse_device_url(settings.terminal.device, default_baud=115200))
    return sources


class EdgeAgent:
    """Owns the outbox and every loop of the agent. Use as an async context manager, then :meth:`run`.

    Leaving the context commits what is pending and closes the outbox.
    """

    def __init__(self, settings: AgentSettings, sources: dict[str, TelemetrySource] | None = None) -> None:
        self.settings = settings
        self.sources = sources if sources is not None else build_sources(settings)
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._records_committed = asyncio.Event()
        self._urgent_committed = asyncio.Event()
        self._commit_now = asyncio.Event()
        self._acks_ready = asyncio.Event()
        self.outbox: TelemetryOutbox | None = None
        self.inbox: CommandInbox | None = None
        self.executor: CommandExecutor | None = None
        self.uplink: Uplink | None = None
        self.onboard: OnboardModels | None = None
        self.commit_errors = 0
        self._commit_loop_at = time.monotonic()
        """When the group commit last went round (the watchdog's sign of life)."""

    async def __aenter__(self) -> EdgeAgent:
        ob = self.settings.outbox
        loop = asyncio.get_running_loop()
        self.outbox = await loop.run_in_executor(
            self._db, lambda: TelemetryOutbox.open(ob.path, cap_bytes=ob.cap_bytes, durability=ob.durability))
        self.inbox = await loop.run_in_executor(self._db, CommandInbox, self.settings.commands_path,
                                                self.settings.vehicle.id)
        unfinished = await loop.run_in_executor(self._db, self.inbox.fail_unfinished,
                                                "the agent restarted before it finished; send it again if still wanted")
        if unfinished:
            log.warning("%d commands were cut short by the last stop and are reported failed: %s", len(unfinished),
                        ", ".join(unfinished))
        autopilot, terminal = self.sources.get("autopilot"), self.sources.get("terminal")
        self.executor = CommandExecutor(
            self.settings.commands, self.inbox, vehicle_kind=self.settings.vehicle.kind,
            autopilot=autopilot if isinstance(autopilot, MavlinkAutopilot) else None,
            terminal=terminal if isinstance(terminal, DriverTerminal) else None, state_changed=self._acks_ready.set,
            position=self._position,
            install_model=self._install_model if self.settings.models.enabled else None)
        gps = self.sources.get("gps")
        library = self._library()
        self.onboard = OnboardModels(
            self.settings.models, {}, self.outbox,
            autopilot=autopilot if isinstance(autopilot, MavlinkAutopilot) else None,
            gps=gps if isinstance(gps, NmeaGps) else None, active_job=lambda: self._executor_job(),
            position=self._position, library=library, loader=self._load_models)
        self.uplink = Uplink(self.settings, self.outbox, self._db, self._records_committed, __version__,
                             inbox=self.inbox, executor=self.executor, acks_ready=self._acks_ready,
                             urgent_committed=self._urgent_committed)
        return self

    def _library(self) -> ModelLibrary | None:
        m = self.settings.models
        if not m.enabled:
            return None
        try:
            public_key = read_key(m.public_key) if m.public_key else None
        except SignatureError as exc:
            log.error("models.public_key: %s; no model will be installed", exc)
            public_key = None
        onnx = self.settings.onnx
        return ModelLibrary(self.settings.models_path, providers=onnx.execution_providers,
                            threads=onnx.intra_op_threads, public_key=public_key,
                            max_bytes=int(m.max_download_mb * 2**20), timeout_s=m.download_timeout_s,
                            ca_file=self.settings.mqtt.ca_file, hardware=self.settings.vehicle.hardware)

    def _load_models(self) -> dict[str, EdgeModel]:
        """The enabled models that load and pass their checks (run by the models' task, so telemetry and
        commands never wait on a model); one that does not is left out, and said so."""
        assert self.onboard is not None and self.onboard.library is not None
        loaded: dict[str, EdgeModel] = {}
        for name in self.settings.models.enabled:
            try:
                model = loaded[name] = self.onboard.library.load(name)
            except ModelError as exc:
                log.error("model %s not loaded: %s", name, exc)
                continue
            log.info("model %s %s on %s", name, model.version, ", ".join(model.providers))
        return loaded

    async def _install_model(self, params: InstallModelParams) -> str:
        if self.onboard is None:
            raise ModelError("the on-board models are not running")
        return await self.onboard.install(params)

    def _executor_job(self) -> ActiveJob | None:
        return self.executor.active_job if self.executor is not None else None

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self.outbox is not None:
            outbox = self.outbox
            await asyncio.get_running_loop().run_in_executor(self._db, outbox.close)
        if self.inbox is not None:
            await asyncio.get_running_loop().run_in_executor(self._db, self.inbox.close)
        self._db.shutdown(wait=True)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run every loop until ``stop`` is set (or forever)."""
        assert self.outbox is not None and self.uplink is not None and self.executor is not None, (
            "use EdgeAgent as an async context manager")
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._commit_loop(), name="group-commit")
                tg.create_task(self.uplink.run(), name="uplink")
                tg.create_task(self.executor.run(), name="command-executor")
                if self.onboard is not None and self.onboard.library is not None:
                    tg.create_task(self.onboard.run(), name="onboard-models")
                for name, source in self.sources.items():
                    tg.create_task(source.run(self._sink()), name=name)
                if stop is not None:
                    tg.create_task(self._stop_when(stop), name="stop-watch")
                watchdog = watchdog_interval_s()
                if watchdog is not None:
                    stale = max(30.0, 10 * self.settings.outbox.flush_interval_ms / 1000)
                    tg.create_task(keep_watchdog_fed(watchdog, lambda: self._commit_loop_at, stale),
                                   name="systemd-watchdog")
                notify(f"READY=1\nSTATUS=recording {self.settings.vehicle.id} into {self.settings.outbox.path}")
        except* _StopRequested:
            notify("STOPPING=1")
            log.info("stopping: committing pending records")

    def _position(self) -> tuple[float, float] | None:
        """Where the vehicle is now, by its autopilot or else its GPS receiver; None without a fix."""
        autopilot, gps = self.sources.get("autopilot"), self.sources.get("gps")
        lat: float | None
        lon: float | None
        if isinstance(autopilot, MavlinkAutopilot):
            lat, lon = autopilot.state.lat, autopilot.state.lon
        elif isinstance(gps, NmeaGps):
            lat, lon = gps.parser.fix.lat, gps.parser.fix.lon
        else:
            return None
        if lat is None or lon is None or math.isnan(lat) or math.isnan(lon):
            return None
        return lat, lon

    def _sink(self) -> TelemetryOutbox:
        assert self.outbox is not None
        return self.outbox

    async def _stop_when(self, stop: asyncio.Event) -> None:
        await stop.wait()
        raise _StopRequested

    async def _commit_loop(self) -> None:
        """Group commit: every ``flush_interval_ms``, or sooner when ``flush_records`` are pending."""
        assert self.outbox is not None
        outbox = self.outbox
        interval = self.settings.outbox.flush_interval_ms / 1000
        threshold = self.settings.outbox.flush_records
        loop = asyncio.get_running_loop()
        outbox.notify_when_pending(threshold, lambda: loop.call_soon_threadsafe(self._commit_now.set))
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._commit_now.wait()
            self._commit_now.clear()
            self._commit_loop_at = time.monotonic()
            if not outbox.pending and not outbox.acknowledged:
                continue
            try:
                written = await loop.run_in_executor(self._db, outbox.commit)
            except OutboxError as exc:
                # The records stay pending; a failing disk is retried, never a reason to stop recording.
                self.commit_errors += 1
                log.error("%s; retrying", exc)
                await asyncio.sleep(min(1.0, interval * 10))
                continue
            if written:
                self._records_committed.set()
                if outbox.last_commit_urgent:
                    self._urgent_committed.set()


async def run_agent(settings: AgentSettings) -> None:
    """Run an agent until SIGINT or SIGTERM, then shut down cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with EdgeAgent(settings) as agent:
        log.info("agent %s for vehicle %s: outbox %s, broker %s", __version__, settings.vehicle.id,
                 settings.outbox.path, settings.mqtt.url)
        await agent.run(stop)
