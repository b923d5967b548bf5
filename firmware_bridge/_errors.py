"""Errors of the firmware bridge.

    BridgeError                 the root
    ├── LinkError               the byte link to a device failed or cannot open: retry the link
    ├── UnknownMode             a flight mode this autopilot does not have: fix the request
    └── DeviceUrlError          a device address that cannot be parsed: fix the configuration
"""

from __future__ import annotations


class BridgeError(Exception):
    """Root of the firmware bridge's errors."""


class LinkError(BridgeError):
    """A device link failed; the caller reopens it with backoff."""


class UnknownMode(BridgeError):
    """The autopilot has no mode of that name."""


class DeviceUrlError(BridgeError):
    """A device URL such as ``serial:///dev/ttyACM0?baud=115200`` that cannot be used."""
