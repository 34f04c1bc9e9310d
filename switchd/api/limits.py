"""Per-key token buckets: `rate` tokens a second up to `burst`; an empty bucket answers
429 with the seconds until the next token (Retry-After, rounded up)."""
from __future__ import annotations

import math
import time


class TokenBuckets:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.buckets: dict[int, tuple[float, float]] = {}    # key id -> (tokens, at)

    def take(self, key_id: int, rate: float, burst: int) -> int:
        """0 when a token was taken, else the whole seconds to wait (>= 1)."""
        now = self.clock()
        tokens, at = self.buckets.get(key_id, (float(burst), now))
        tokens = min(float(burst), tokens + (now - at) * rate)
        if tokens >= 1.0:
            self.buckets[key_id] = (tokens - 1.0, now)
            return 0
        self.buckets[key_id] = (tokens, now)
        return max(1, math.ceil((1.0 - tokens) / rate))
