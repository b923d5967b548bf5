"""The embedded MQTT broker: one command works on a fresh machine with no broker installed.

It listens on loopback by default and accepts anonymous clients there; production deployments point
``broker.url`` at Mosquitto, EMQX or HiveMQ with per-device credentials and an ACL (``packaging/``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator

from coordinator.errors import BrokerError

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def embedded_broker(host: str, port: int) -> AsyncIterator[int]:
    """Run an in-process amqtt broker on ``host:port`` (0 picks a free port); yields the port."""
    from amqtt.broker import Broker

    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    # amqtt logs its own bookkeeping (late PUBACKs at shutdown and the like) as warnings; keep errors only.
    logging.getLogger("amqtt").setLevel(logging.ERROR)
    logging.getLogger("transitions").setLevel(logging.WARNING)
    broker = Broker(config)
    try:
        await broker.start()
    except Exception as exc:
        raise BrokerError(f"cannot start the embedded broker on {host}:{port}: {exc}; "
                          "free the port or set broker.embedded_port") from exc
    log.info("embedded MQTT broker listening on %s:%d", host, port)
    try:
        yield port
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await broker.shutdown()
