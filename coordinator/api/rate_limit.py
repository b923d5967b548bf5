"""A request budget per API key: a token bucket, so a short burst is fine and a flood gets 429."""

from __future__ import annotations

import math
import threading
import time


class KeyRateLimiter:
    """``rate_per_s`` requests a second per key, with bursts up to ``burst``. Thread-safe.

    Buckets of keys not seen for ten minutes are dropped, so memory stays bounded by the active keys.
    """

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = max(burst, 1)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._last_sweep = time.monotonic()

    def check(self, key_id: str) -> float:
        """Take one request from ``key_id``'s budget: 0 if allowed, else the seconds to wait."""
        if self.rate_per_s <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, stamp = self._buckets.get(key_id, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - stamp) * self.rate_per_s)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                allowed = 0.0
            else:
                self._buckets[key_id] = (tokens, now)
                allowed = (1.0 - tokens) / self.rate_per_s
            if now - self._last_sweep > 600:
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 600}
                self._last_sweep = now
        return allowed


def retry_after_header(wait_s: float) -> str:
    return str(max(1, math.ceil(wait_s)))
