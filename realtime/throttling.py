"""Inbound rate limiting of one connection: a token bucket, and strikes before a 4429 close."""

from __future__ import annotations

import time
from enum import Enum


class TokenBucket:
    """`rate` messages a second on average, bursts of up to `burst`."""

    clock = staticmethod(time.monotonic)

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.updated = self.clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Verdict(Enum):
    ALLOW = "allow"  # handle the message
    REFUSE = "refuse"  # answer ERROR rate_limited and drop it
    CLOSE = "close"  # too many refusals in a row: close with 4429


class MessageThrottle:
    """A connection's inbound limit: refuse over the bucket's rate, close after `max_strikes`
    refusals in a row (a client that slows down after `rate_limited` is never closed)."""

    __slots__ = ("bucket", "max_strikes", "strikes")

    def __init__(self, *, rate: float, burst: int, max_strikes: int) -> None:
        self.bucket = TokenBucket(rate, burst)
        self.max_strikes = max_strikes
        self.strikes = 0

    def check(self) -> Verdict:
        if self.bucket.take():
            self.strikes = 0
            return Verdict.ALLOW
        self.strikes += 1
        return Verdict.CLOSE if self.strikes > self.max_strikes else Verdict.REFUSE
