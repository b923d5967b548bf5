"""Errors of the edge agent.

    AgentError                the root; ``fleet-agent`` prints it and exits non-zero
    ├── ConfigError           the settings file is wrong: fix the named key and start again
    ├── OutboxError           the outbox could not write or open: the disk is failing or full
    ├── InboxError            the command inbox could not open its file
    ├── LinkError             the MQTT link is down or refused: retried with backoff, never fatal
    └── ModelError            an ONNX model cannot run: unloadable, wrongly shaped, failed its health check
        └── InvalidInput      one prediction's inputs are unfit (shape, NaN, out of range): skipped, counted
"""

from __future__ import annotations


class AgentError(Exception):
    """Root of the edge agent's errors."""


class ConfigError(AgentError):
    """A settings file or value the agent cannot run with."""


class OutboxError(AgentError):
    """The outbox could not open, write or read its SQLite database."""


class InboxError(AgentError):
    """The command inbox could not open its SQLite database."""


class LinkError(AgentError):
    """The MQTT link to the coordinator failed."""


class ModelError(AgentError):
    """An ONNX model that must not run (or a prediction it got wrong)."""


class InvalidInput(ModelError):
    """Inputs that do not fit the model's manifest; the prediction is skipped."""
