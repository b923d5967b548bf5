"""Work that must run in one coordinator at a time (dispatch rounds, reposition rounds) when several share
a store: each holds a named lease while it works, and another takes over within the lease's time to live
of its last renewal."""

from __future__ import annotations

import logging
import os
import socket
import uuid

from coordinator.store import FleetStore

log = logging.getLogger(__name__)


class Lease:
    def __init__(self, store: FleetStore, name: str, ttl_s: float) -> None:
        self.store = store
        self.name = name
        self.ttl_s = ttl_s
        self.holder = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.held = False

    def hold(self) -> bool:
        """Take or renew the lease; whether this coordinator holds it now."""
        held = self.store.hold_lease(self.name, self.holder, self.ttl_s)
        if held != self.held:
            log.info("%s: %s", self.name, "this coordinator leads" if held else
                     "another coordinator leads; standing by")
        self.held = held
        return held
