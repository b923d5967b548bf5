"""Broker addresses as both halves write them: ``mqtt://host:port`` or ``mqtts://host:port`` (TLS)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

SCHEMES = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    host: str
    port: int
    tls: bool


def parse_broker_url(url: str) -> BrokerUrl:
    """Split a broker URL; the port defaults to 1883, or 8883 for ``mqtts``.

    Raises:
        ValueError: the scheme is not ``mqtt`` or ``mqtts``, or the port is not a number.
    """
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"{url!r} must start with mqtt:// or mqtts://")
    try:
        port = parts.port or SCHEMES[parts.scheme]
    except ValueError:
        raise ValueError(f"{url!r} has a port that is not a number") from None
    return BrokerUrl(parts.hostname or "127.0.0.1", port, parts.scheme == "mqtts")
