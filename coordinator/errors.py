"""Errors of the coordinator.

    CoordinatorError          the root; ``fleet-coordinator`` prints it and exits non-zero
    ├── ConfigError           the settings file is wrong: fix the named key and start again
    ├── StoreError            the state store cannot be opened or written
    └── BrokerError           the MQTT broker (embedded or external) cannot be started or reached
"""

from __future__ import annotations


class CoordinatorError(Exception):
    """Root of the coordinator's errors."""


class ConfigError(CoordinatorError):
    """A settings file or value the coordinator cannot run with."""


class StoreError(CoordinatorError):
    """The state store failed."""


class BrokerError(CoordinatorError):
    """The MQTT broker failed."""
