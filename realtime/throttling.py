"""Rate limits: a connection's inbound token bucket with strikes before a 4429 close, and the
password login's DRF throttles per client IP and per username (CONTRACT section 13)."""

from __future__ import annotations

import hashlib
import time
from enum import Enum
from typing import Any

from rest_framework.throttling import SimpleRateThrottle

from realtime.clientip import request_client_ip
from realtime.conf import realtime_settings


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


# --- the password login (POST /api/auth/token/) ----------------------------------------------


def attempted_username(request: Any) -> str:
    """The username a login request names ("" when its body names none)."""
    try:
        data = request.data
    except Exception:  # an unparsable body: the view answers 400 itself
        return ""
    username = data.get("username") if isinstance(data, dict) else None
    return username if isinstance(username, str) else ""


class LoginThrottle(SimpleRateThrottle):
    """LOGINS_PER_MIN attempts a minute (0: no limit), in Django's cache: on Redis when it is
    configured, so every process counts together (tradingrt.settings CACHES)."""

    def get_rate(self) -> str | None:
        per_minute = realtime_settings.LOGINS_PER_MIN
        return f"{per_minute}/min" if per_minute > 0 else None


class LoginPerIPThrottle(LoginThrottle):
    """Password logins per client IP (realtime.clientip: the trusted-proxy rule)."""

    scope = "login_ip"

    def get_cache_key(self, request: Any, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": request_client_ip(request)}


class LoginPerUsernameThrottle(LoginThrottle):
    """Password logins per username, whichever IPs they come from (case folded, hashed)."""

    scope = "login_username"

    def get_cache_key(self, request: Any, view: Any) -> str | None:
        username = attempted_username(request).strip().casefold()
        if not username:
            return None
        ident = hashlib.sha256(username.encode()).hexdigest()[:32]
        return self.cache_format % {"scope": self.scope, "ident": ident}
