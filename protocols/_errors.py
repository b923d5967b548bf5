"""Errors raised while reading the wire contract.

    ProtocolError                 anything the contract refuses
    ├── MalformedMessage          a payload that does not decode to its schema: drop it, count it
    ├── TopicError                a topic outside the layout, or naming another vehicle
    └── SettingsError             a settings file that is missing, unreadable or wrong
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Root of every error this package raises."""


class MalformedMessage(ProtocolError):
    """A payload that is not a valid message of the expected schema.

    Attributes:
        schema: the message type that was expected (``"TelemetryBatch"``...).
        reason: what is wrong, naming the field where the decoder found it
            (``"Expected `int`, got `str` - at `$.records[0].seq`"``).
    """

    def __init__(self, schema: str, reason: str) -> None:
        super().__init__(f"malformed {schema}: {reason}")
        self.schema = schema
        self.reason = reason


class TopicError(ProtocolError):
    """A topic that does not belong to the FleetEdge layout or to the sender."""


class SettingsError(ProtocolError):
    """A settings file that cannot be used; the message names the file and the key."""

    def __init__(self, path: str, key: str | None, reason: str) -> None:
        where = f"{path}: key '{key}'" if key else path
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.key = key
        self.reason = reason
