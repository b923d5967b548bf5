"""The on-board models at work: every ``models.interval_s`` the agent asks them about the vehicle and its job.

- ``battery`` (a vehicle with an autopilot, armed, reporting its battery): the flight time left at the present
  load, turned into range at the ground speed (at least ``models.cruise_speed_m_s``). When a job is under
  way and that range no longer covers its route left (to the drop-off, and home for a mission) plus
  ``models.battery_reserve_pct``, the critical alert ``battery.range_short`` is raised.
- ``delivery_risk`` (a job with a deadline): the probability it reaches the drop-off late; above
  ``models.risk_threshold`` the critical alert ``delivery.at_risk`` is raised, which the coordinator sees.

Installs from the coordinator (``install_model``) go through :class:`edge_agent.model_library.ModelLibrary`;
a version that passes every check replaces the running one between two predictions, one that fails leaves
it running. After each change (and at start) the record ``models`` says what runs and what failed to
install, and why: the coordinator's rollout view is built from it.

Each alert is raised once per job, and again only after the condition has cleared. Alerts and predictions go
into the outbox like any record, so they are kept while the link is down and synced when it returns: the
vehicle decides with no link. Every prediction is recorded (``prediction``: model, version, inputs, output);
a prediction whose inputs are unfit is skipped and counted; ``model.stats`` reports the counts and latency
per model every ``models.stats_every_s``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from edge_agent.active_job import ActiveJob
from edge_agent.config import ModelSettings
from edge_agent.errors import InvalidInput, ModelError
from edge_agent.model_library import ModelLibrary
from edge_agent.models import EdgeModel
from edge_agent.outbox import TelemetryOutbox
from firmware_bridge import MavlinkAutopilot, NmeaGps
from protocols import InstallModelParams, RecordClass

log = logging.getLogger(__name__)

RISK_CLEARS_BELOW = 0.1
"""A raised ``delivery.at_risk`` clears once the probability is this far under the threshold."""
PROBATION_CALLS = 200
ROLLBACK_AFTER_ERRORS = 3
"""A newly installed version that fails this many of its first ``PROBATION_CALLS`` predictions (inference
errors, outputs out of range) is rolled back to the version it replaced."""


class OnboardModels:
    def __init__(self, settings: ModelSettings, models: dict[str, EdgeModel], outbox: TelemetryOutbox, *,
                 autopilot: MavlinkAutopilot | None, gps: NmeaGps | None,
                 active_job: Callable[[], ActiveJob | None],
                 position: Callable[[], tuple[float, float] | None], library: ModelLibrary | None = None,
                 loader: Callable[[], dict[str, EdgeModel]] | None = None) -> None:
        self.settings = settings
        self.models = models
        self.library = library
        self._loader = loader
        self.failed: dict[str, dict[str, object]] = {}
        """Model name -> the last install that failed (version, reason, when)."""
        self._replaced: dict[str, EdgeModel] = {}
        """Model name -> the version a new install replaced, while the new one is on probation."""
        self._install_lock = asyncio.Lock()
        self.outbox = outbox
        self.autopilot = autopilot
        self.gps = gps
        self._active_job = active_job
        self._position = position
        self._raised: dict[str, str] = {}
        """Alert kind -> the order it was raised for."""
        self._stats_at = time.monotonic()

    def report(self) -> None:
        """Say what runs (and what failed to install) in the ``models`` record."""
        self.outbox.append("models", {
            "hardware": self.library.hardware if self.library is not None else "",
            "running": {name: m.version for name, m in self.models.items()},
            "providers": {name: m.providers for name, m in self.models.items()},
            "failed": self.failed}, cls=RecordClass.EVENT)

    async def install(self, params: InstallModelParams) -> str:
        """Install ``params``'s version and run it in place of the one running.

        Raises:
            ModelError: it was refused (the running version stays); reported in ``models`` too.
        """
        async with self._install_lock:
            running = self.models.get(params.name)
            if running is not None and running.version == params.version:
                return f"{params.name} {params.version} already runs"
            if self.library is None:
                raise ModelError("this agent installs no models")
            try:
                model = await asyncio.to_thread(self.library.install, params)
                await asyncio.to_thread(self.library.activate, model, running.version if running else None)
            except ModelError as exc:
                self.failed[params.name] = {"version": params.version, "reason": str(exc), "at": time.time()}
                kept = f"; {running.version} keeps running" if running else ""
                log.error("install of %s %s refused: %s%s", params.name, params.version, exc, kept)
                self.outbox.append("model.install_failed", {"model": params.name, "version": params.version,
                                                            "reason": str(exc)}, cls=RecordClass.EVENT)
                self.report()
                raise ModelError(f"{exc}{kept}") from None
            self.models[params.name] = model  # the next prediction uses it
            if running is not None:
                self._replaced[params.name] = running
            self.failed.pop(params.name, None)
            self.report()
            was = f" (was {running.version})" if running else ""
            log.info("model %s %s runs%s on %s", model.name, model.version, was, ", ".join(model.providers))
            return f"{model.name} {model.version} runs{was}: signature, sha256 and health check passed"

    async def run(self) -> None:
        if self._loader is not None:
            # Loaded here, not before the agent starts: recording begins at once, the models join a moment later.
            # Under the install lock: an install that came first is what the library now says runs.
            async with self._install_lock:
                self.models.update(await asyncio.to_thread(self._loader))
        self.report()
        while True:
            await asyncio.sleep(self.settings.interval_s)
            try:
                self.step(time.time())
            except Exception:
                log.exception("on-board models: step failed; trying again")
            if time.monotonic() - self._stats_at >= self.settings.stats_every_s:
                self._stats_at = time.monotonic()
                self.outbox.append("model.stats", self.stats())

    def stats(self) -> dict[str, object]:
        return {name: {"version": m.version, "providers": m.providers, **m.counters.snapshot()}
                for name, m in self.models.items()}

    def step(self, now: float) -> None:
        job = self._active_job()
        here = self._position()
        if job is not None and here is not None:
            job.update(here)
        for kind, order in list(self._raised.items()):
            if job is None or job.order_id != order:
                del self._raised[kind]  # a new job starts with a clean slate
        self._battery(job, here, now)
        self._risk(job, here, now)

    def _predict(self, name: str, inputs: list[float], now: float) -> float | None:
        model = self.models.get(name)
        if model is None:
            return None
        try:
            output = model.predict(inputs)
        except InvalidInput as exc:
            log.debug("%s", exc)
            return None
        except ModelError as exc:
            log.warning("%s", exc)
            self._on_probation_error(name, model, str(exc))
            return None
        if model.counters.calls >= PROBATION_CALLS:
            self._replaced.pop(name, None)
        self.outbox.append("prediction", {"model": name, "version": model.version, "inputs": inputs,
                                          "output": output}, ts=now)
        return output

    def _on_probation_error(self, name: str, model: EdgeModel, reason: str) -> None:
        """Roll a new version on probation back to the one it replaced once it has failed too often."""
        previous = self._replaced.get(name)
        if previous is None or model.counters.errors < ROLLBACK_AFTER_ERRORS:
            return
        del self._replaced[name]
        self.models[name] = previous
        if self.library is not None:
            try:
                self.library.activate(previous, None)
            except OSError as exc:
                log.error("rolling %s back to %s: %s", name, previous.version, exc)
        why = f"{model.counters.errors} of its first {model.counters.calls + model.counters.errors} predictions " \
              f"failed (last: {reason})"
        self.failed[name] = {"version": model.version, "reason": f"rolled back to {previous.version}: {why}",
                             "at": time.time()}
        log.error("model %s %s rolled back to %s: %s", name, model.version, previous.version, why)
        self.outbox.append("model.rolled_back", {"model": name, "version": model.version, "to": previous.version,
                                                 "reason": why}, cls=RecordClass.ALERT)
        self.report()

    def _battery(self, job: ActiveJob | None, here: tuple[float, float] | None, now: float) -> None:
        ap = self.autopilot
        if ap is None or "battery" not in self.models:
            return
        s = ap.state
        if not s.armed or s.battery_pct is None or s.voltage_v is None or s.current_a is None:
            return
        remaining_s = self._predict("battery", [float(s.battery_pct), s.voltage_v, s.current_a,
                                                s.groundspeed_m_s, s.climb_m_s], now)
        if remaining_s is None or job is None or here is None:
            return
        speed = s.groundspeed_m_s if math.isfinite(s.groundspeed_m_s) else 0.0
        range_m = remaining_s * max(speed, self.settings.cruise_speed_m_s)
        home = (s.home_lat, s.home_lon) if math.isfinite(s.home_lat) and math.isfinite(s.home_lon) else None
        route_m = job.route_m(here, home)
        needed = route_m * (1 + self.settings.battery_reserve_pct / 100)
        if range_m < needed:
            self._raise("battery.range_short", job, now, {
                "range_m": round(range_m), "route_m": round(route_m),
                "reserve_pct": self.settings.battery_reserve_pct, "remaining_s": round(remaining_s),
                "battery_pct": s.battery_pct, "model_version": self.models["battery"].version})
        elif range_m > needed * 1.1:
            self._raised.pop("battery.range_short", None)

    def _risk(self, job: ActiveJob | None, here: tuple[float, float] | None, now: float) -> None:
        if job is None or job.deadline is None or here is None or "delivery_risk" not in self.models:
            return
        speed, battery = 0.0, 100.0
        if self.autopilot is not None:
            s = self.autopilot.state
            speed = s.groundspeed_m_s
            battery = float(s.battery_pct) if s.battery_pct is not None else 100.0
        elif self.gps is not None:
            speed = self.gps.parser.fix.speed_m_s or 0.0
        distance = job.to_dropoff_m(here)
        time_left = job.deadline - now
        p = self._predict("delivery_risk", [distance, time_left, speed, float(job.stops_left), battery], now)
        if p is None:
            return
        threshold = self.settings.risk_threshold
        if p > threshold:
            self._raise("delivery.at_risk", job, now, {
                "late_probability": round(p, 4), "threshold": threshold, "distance_m": round(distance),
                "time_left_s": round(time_left), "model_version": self.models["delivery_risk"].version})
        elif p < threshold - RISK_CLEARS_BELOW:
            self._raised.pop("delivery.at_risk", None)

    def _raise(self, kind: str, job: ActiveJob, now: float, data: dict[str, object]) -> None:
        if self._raised.get(kind) == job.order_id:
            return
        self._raised[kind] = job.order_id
        log.warning("%s for order %s: %s", kind, job.order_id, data)
        self.outbox.append(kind, {"order_id": job.order_id, **data}, cls=RecordClass.ALERT, ts=now)
