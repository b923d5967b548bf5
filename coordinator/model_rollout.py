"""Brings every online vehicle to the model versions its rollout names: every ``models.rollout_tick_s`` it
compares what each vehicle reports running (its latest ``models`` record) with what the rollout wants, and
sends ``install_model`` (QoS 1, expiring after ``models.install_ttl_s``) where they differ. An install the
vehicle failed (bad file, signature, health check) is not sent again for that version: the vehicle keeps its
previous version and says why, and an operator decides (roll back, or upload a fixed version). Nor is an
install the vehicle completed and then left on its own (its probation check rolled it back): only a later
install of another version, completed, makes the earlier one due again (a rollout moved on and came back). One
coordinator does this at a time (a lease)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec

from coordinator.command_sender import CommandSender, SendOutcome, issue_command
from coordinator.config import ModelRegistrySettings
from coordinator.lease import Lease
from coordinator.model_drift import drift_report, manifest_of
from coordinator.model_registry import ModelRegistry, built_for, reported_hardware, running_models
from coordinator.store import CommandEvent, CommandState, FleetStore

log = logging.getLogger(__name__)

ROLLOUT = "model-rollout"
"""``issued_by`` of the install commands, and the lease's name."""


class ModelRollout:
    def __init__(self, store: FleetStore, registry: ModelRegistry, settings: ModelRegistrySettings,
                 sender: CommandSender | None) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings
        self.sender = sender
        self.lease = Lease(store, ROLLOUT, max(10.0, 3 * settings.rollout_tick_s))
        self._sent: dict[tuple[str, str], dict[str, str]] = {}
        """``(vehicle, model)`` -> version -> the install command last sent for it."""
        self.installs_sent = 0
        self._drift_at = time.monotonic()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.rollout_tick_s)
            try:
                if await asyncio.to_thread(self.lease.hold):
                    await asyncio.to_thread(self.round)
                    if time.monotonic() - self._drift_at >= self.settings.drift_check_s:
                        self._drift_at = time.monotonic()
                        await asyncio.to_thread(check_drift, self.store, self.settings)
            except Exception:
                log.exception("model rollout check failed; retrying at the next tick")

    def round(self, now: float | None = None) -> int:
        """Send the installs due now; how many were sent."""
        now = time.time() if now is None else now
        rollouts = self.store.rollouts()
        if not rollouts:
            return 0
        sent = 0
        vehicles = self.store.vehicles(online=True)
        for rollout in rollouts:
            name = rollout["name"]
            for vehicle in vehicles:
                vid = vehicle["vehicle_id"]
                want = self.registry.desired(rollout, vid)
                if want is None or running_models(vehicle).get(name) == want:
                    continue
                if self._in_flight_or_failed(vid, name, want, now):
                    continue
                record = self.store.model(name, want)
                if record is None or not built_for(record, reported_hardware(vehicle)):
                    continue  # a model built for other hardware waits for none of these
                params = msgspec.to_builtins(self.registry.install_params(record))
                command, outcome, why = issue_command(self.store, self.sender, vehicle_id=vid, action="install_model",
                                                      params=params, ttl_s=self.settings.install_ttl_s,
                                                      issued_by=ROLLOUT)
                if outcome is SendOutcome.NOT_SENT:
                    log.warning("install of %s %s on %s not sent: %s", name, want, vid, why)
                    continue
                self._sent.setdefault((vid, name), {})[want] = command.command_id
                sent += 1
                log.info("%s: install %s %s", vid, name, want)
        self.installs_sent += sent
        return sent

    def _in_flight_or_failed(self, vehicle_id: str, name: str, version: str, now: float) -> bool:
        """Whether the install of ``version`` sent last must not be sent again now."""
        sent = self._sent.get((vehicle_id, name), {})
        answer = self._answer(vehicle_id, sent.get(version), now)
        if answer is None:
            return False
        if answer.state is CommandState.COMPLETED:
            # Installed, yet not running it: superseded by another version installed since (send again), or
            # rolled back by the vehicle's own probation check (it said why in its models record; not again).
            return not any((other := self._answer(vehicle_id, cid, now)) is not None and
                           other.state is CommandState.COMPLETED and other.at > answer.at
                           for v, cid in sent.items() if v != version)
        # Expired or never sent: send again. Failed or refused: the vehicle said why; not again.
        return answer.state not in (CommandState.EXPIRED, CommandState.NOT_SENT)

    def _answer(self, vehicle_id: str, command_id: str | None, now: float) -> CommandEvent | None:
        command = self.store.command(vehicle_id, command_id) if command_id is not None else None
        return command.state_at(now) if command is not None else None


def check_drift(store: FleetStore, settings: ModelRegistrySettings, now: float | None = None) -> list[dict[str, Any]]:
    """Drift reports of every version a rollout names (stable and canary) that has alerts; each is logged."""
    now = time.time() if now is None else now
    found = []
    for rollout in store.rollouts():
        versions = {rollout.get("stable"), (rollout.get("canary") or {}).get("version")} - {None}
        for version in sorted(str(v) for v in versions):
            manifest = manifest_of(store, rollout["name"], version)
            if manifest is None:
                continue
            report = drift_report(store, manifest, since=now - settings.drift_window_s,
                                  threshold=settings.drift_psi_alert, until=now)
            if report["alerts"]:
                log.warning("model %s %s drifts from its training data: %s", rollout["name"], version,
                            ", ".join(f"{a['what']} PSI {a['psi']}" for a in report["alerts"]))
                found.append(report)
    return found
