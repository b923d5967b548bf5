"""Errors of the coordinator.

    CoordinatorError          the root; ``fleet-coordinator`` prints it and exits non-zero
    ├── ConfigError           the settings file is wrong: fix the named key and start again
    ├── StoreError            the state store cannot be opened or written
    │   └── StoreUnavailable  a transient failure (busy file, Redis unreachable): retry
    ├── BrokerError           the MQTT broker (embedded or external) cannot be started or reached
    ├── IdempotencyConflict   an Idempotency-Key was reused for a different request
    └── RegistryError         a model upload or rollout request that cannot be done (says why)
"""

from __future__ import annotations


class CoordinatorError(Exception):
    """Root of the coordinator's errors."""


class ConfigError(CoordinatorError):
    """A settings file or value the coordinator cannot run with."""


class StoreError(CoordinatorError):
    """The state store failed."""


class StoreUnavailable(StoreError):
    """The store is busy or unreachable for now; the same call may succeed later."""


class BrokerError(CoordinatorError):
    """The MQTT broker failed."""


class IdempotencyConflict(CoordinatorError):
    """An idempotency key came back with a request other than the one it first named."""


class RegistryError(CoordinatorError):
    """A model upload or rollout request refused; ``status`` is the HTTP status that says so."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status
