"""An upload bandwidth cap for metered links: a token bucket over bytes."""

from __future__ import annotations

import asyncio
import time


class BandwidthCap:
    """Lets ``rate`` bytes per second through, with bursts up to ``burst`` bytes.

    A rate of 0 means no cap. A single take larger than the burst is let through once the bucket is
    full and leaves it in debt, so a large batch is never stuck.
    """

    def __init__(self, rate: int, burst: int) -> None:
        self._rate = rate
        self._burst = max(burst, 1)
        self._tokens = float(self._burst)
        self._stamp = time.monotonic()

    async def take(self, nbytes: int) -> None:
        if self._rate <= 0:
            return
        while True:
            now = time.monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now
            if self._tokens >= min(nbytes, self._burst):
                self._tokens -= nbytes
                return
            await asyncio.sleep((min(nbytes, self._burst) - self._tokens) / self._rate)
