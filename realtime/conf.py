"""Settings of the real-time module: the `REALTIME` dict, its defaults, read through one object.

Modelled on rest_framework.settings: `realtime_settings.HEARTBEAT_INTERVAL_SECS` reads the
project's value or the default below, and the cache is dropped when tests override settings.
Keys may also be given in the contract's camelCase (`heartbeatIntervalSecs`).
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

DEFAULTS: dict[str, Any] = {
    # Seconds a connection opened without a token has to send its AUTHENTICATION message.
    "AUTH_TIMEOUT_SECS": 10.0,
    # Seconds between the server's HEARTBEAT to every client and its process heartbeat row.
    "HEARTBEAT_INTERVAL_SECS": 30.0,
    # A server process whose heartbeat is older than this many intervals is dead.
    "DEAD_AFTER_HEARTBEATS": 3,
    # Largest inbound message, in bytes (UTF-8); larger ones get ERROR message_too_large.
    "MAX_MESSAGE_BYTES": 64 * 1024,
    # Most topics one connection may hold; more get rejected with limit_exceeded.
    "MAX_TOPICS_PER_CONNECTION": 200,
    # Inbound rate limit, a token bucket: sustained messages per second and burst size.
    "RATE_LIMIT_PER_SEC": 20.0,
    "RATE_LIMIT_BURST": 60,
    # Messages refused with rate_limited, in a row, before the connection is closed with 4429.
    "RATE_LIMIT_MAX_STRIKES": 20,
    # Outbound buffer per connection: queued messages, and bytes the server's transport holds
    # unsent; past either the client is too slow and is closed with 4508.
    "SEND_BUFFER_MAX_MESSAGES": 2000,
    "SEND_BUFFER_MAX_BYTES": 4 * 1024 * 1024,
    # Positions in a symbol are marked to market at most once per this many seconds; the
    # latest tick of the window wins (MARKET_DATA itself is never conflated).
    "MARK_TO_MARKET_INTERVAL_SECS": 0.5,
    # Updates of one object (one order, say) take seqs in commit (version) order: a publisher
    # whose update is ahead of its predecessor waits at most this many seconds for it to be
    # published first (realtime.history); past that it publishes anyway, logged and counted.
    "REORDER_WAIT_SECS": 2.0,
    # Each topic's history (CONTRACT section 9): at least its last HISTORY_SIZE messages, none
    # older than HISTORY_TTL_SECS; a resume from further back is a reset.
    "HISTORY_SIZE": 1000,
    "HISTORY_TTL_SECS": 86400.0,
    # A committed update still unpublished after this many seconds (its publisher died, or
    # found Redis down) is published by a server's sweep of the outbox, every
    # PUBLISH_SWEEP_SECS.
    "PUBLISH_GRACE_SECS": 5.0,
    # Presence (CONTRACT section 10): a user whose last connection left a topic leaves its
    # presence after this many seconds without coming back; watched topics are re-read every
    # PRESENCE_INTERVAL_SECS.
    "PRESENCE_LEAVE_GRACE_SECS": 5.0,
    "PRESENCE_INTERVAL_SECS": 1.0,
    "PUBLISH_SWEEP_SECS": 2.0,
    # Seconds a user loaded to authenticate a token is reused for the same user's next tokens
    # (0: always load). Deactivations and deletions are applied at once regardless.
    "USER_CACHE_SECS": 5.0,
    # Origins allowed for browser connections; None means the hosts in ALLOWED_HOSTS.
    "ALLOWED_ORIGINS": None,
    # Seconds between the running server's sweeps of dead processes' connection records.
    "PRUNE_INTERVAL_SECS": 60.0,
    # Seconds between a server's checks that its channel layer still holds its groups (a Redis
    # restarted or flushed loses them silently: the process would wait for messages that can no
    # longer reach it). One cheap command per check and process.
    "LAYER_CHECK_INTERVAL_SECS": 1.0,
    # Subscribers handed one update per turn of the event loop; a topic with more local
    # subscribers is delivered in slices, so a huge topic cannot stall every other socket.
    "DELIVERY_SLICE": 1000,
    # Seconds between collections of the garbage collector's young generations (generation 1
    # every tenth time), so that each walks only what one interval left alive rather than tens
    # of thousands of objects at once (realtime.collector). 0: left to CPython's thresholds.
    "GC_YOUNG_INTERVAL_SECS": 0.1,
    # Items per SNAPSHOT message: a larger state is sent in several pages (each also kept under
    # 256 KiB of items, realtime.snapshots.PAGE_MAX_BYTES), so no message nears the 1 MiB limit.
    "SNAPSHOT_PAGE_SIZE": 500,
    # --- Abuse limits (CONTRACT section 13; docs/SECURITY.md). 0 turns a limit off. Held across
    # every server process when Redis is configured (realtime.limits), per process otherwise.
    # Open connections per user; the next one is closed with 4409.
    "MAX_CONNECTIONS_PER_USER": 20,
    # WebSocket handshakes per client IP per minute; more are refused (HTTP 403).
    "HANDSHAKES_PER_IP_PER_MIN": 600,
    # Failed authentications (bad tokens at the handshake or in-band, failed password logins)
    # per client IP within AUTH_FAILURE_WINDOW_SECS; at the limit the IP is blocked for
    # IP_BLOCK_SECS: its handshakes and password logins are refused.
    "AUTH_FAILURES_PER_IP": 20,
    "AUTH_FAILURE_WINDOW_SECS": 300.0,
    "IP_BLOCK_SECS": 300.0,
    # Password logins (POST /api/auth/token/) per minute, per client IP and per username each.
    "LOGINS_PER_MIN": 10,
    # Proxies whose X-Forwarded-For is believed (addresses or networks: "10.0.0.0/8"); the
    # client IP is the socket's peer otherwise. Empty by default: no header is trusted.
    "TRUSTED_PROXIES": [],
    # Seconds between writes of the aggregated security events to the database, and days they
    # are kept (older ones are deleted by the servers' maintenance and by ws_prune).
    "SECURITY_EVENT_FLUSH_SECS": 2.0,
    "SECURITY_EVENT_RETENTION_DAYS": 30,
}

# What each setting must be: (type, smallest, largest); None for no bound. Checked once, at
# start-up (realtime.checks, run by `manage.py check` and by tradingrt.asgi before serving), so
# a bad environment value stops the server with a message instead of killing a loop later.
_NUMBER = (int, float)
SPEC: dict[str, tuple[type | tuple[type, ...], float | None, float | None]] = {
    "AUTH_TIMEOUT_SECS": (_NUMBER, 0.01, 3600),
    "HEARTBEAT_INTERVAL_SECS": (_NUMBER, 0.01, 3600),
    "DEAD_AFTER_HEARTBEATS": (int, 2, 100),
    "MAX_MESSAGE_BYTES": (int, 256, 16 * 1024 * 1024),
    "MAX_TOPICS_PER_CONNECTION": (int, 1, 100_000),
    "RATE_LIMIT_PER_SEC": (_NUMBER, 0.01, 1_000_000),
    "RATE_LIMIT_BURST": (int, 1, 1_000_000),
    "RATE_LIMIT_MAX_STRIKES": (int, 0, 1_000_000),
    "SEND_BUFFER_MAX_MESSAGES": (int, 1, 10_000_000),
    "SEND_BUFFER_MAX_BYTES": (int, 1024, 1 << 40),
    "MARK_TO_MARKET_INTERVAL_SECS": (_NUMBER, 0, 3600),
    "REORDER_WAIT_SECS": (_NUMBER, 0, 60),
    "HISTORY_SIZE": (int, 1, 1_000_000),
    "HISTORY_TTL_SECS": (_NUMBER, 1, 365 * 86400),
    "PUBLISH_GRACE_SECS": (_NUMBER, 0, 3600),
    "PRESENCE_LEAVE_GRACE_SECS": (_NUMBER, 0, 3600),
    "PRESENCE_INTERVAL_SECS": (_NUMBER, 0.05, 3600),
    "PUBLISH_SWEEP_SECS": (_NUMBER, 0.05, 3600),
    "SNAPSHOT_PAGE_SIZE": (int, 1, 10_000),
    "USER_CACHE_SECS": (_NUMBER, 0, 3600),
    "ALLOWED_ORIGINS": ((list, tuple), None, None),
    "PRUNE_INTERVAL_SECS": (_NUMBER, 0.01, 86400),
    "LAYER_CHECK_INTERVAL_SECS": (_NUMBER, 0.01, 3600),
    "DELIVERY_SLICE": (int, 1, 1_000_000),
    "GC_YOUNG_INTERVAL_SECS": (_NUMBER, 0, 60),
    "MAX_CONNECTIONS_PER_USER": (int, 0, 1_000_000),
    "HANDSHAKES_PER_IP_PER_MIN": (int, 0, 100_000_000),
    "AUTH_FAILURES_PER_IP": (int, 0, 1_000_000),
    "AUTH_FAILURE_WINDOW_SECS": (_NUMBER, 1, 7 * 86400),
    "IP_BLOCK_SECS": (_NUMBER, 1, 365 * 86400),
    "LOGINS_PER_MIN": (int, 0, 1_000_000),
    "TRUSTED_PROXIES": ((list, tuple), None, None),
    "SECURITY_EVENT_FLUSH_SECS": (_NUMBER, 0.05, 3600),
    "SECURITY_EVENT_RETENTION_DAYS": (int, 1, 3650),
}

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _normalise_key(key: str) -> str:
    """`heartbeatIntervalSecs` -> `HEARTBEAT_INTERVAL_SECS`; upper-case keys pass unchanged."""
    return _CAMEL_BOUNDARY.sub("_", key).upper()


class RealtimeSettings:
    """Attribute access to REALTIME with defaults; unknown names are an error, not a None."""

    def __init__(self, defaults: dict[str, Any]) -> None:
        self.defaults = defaults
        self._cached: set[str] = set()
        self._user_settings: dict[str, Any] | None = None

    @property
    def user_settings(self) -> dict[str, Any]:
        if self._user_settings is None:
            configured = getattr(settings, "REALTIME", {}) or {}
            normalised = {_normalise_key(key): value for key, value in configured.items()}
            unknown = set(normalised) - set(self.defaults)
            if unknown:
                raise ValueError(
                    f"Unknown REALTIME setting(s) {sorted(unknown)}; "
                    f"the known ones are listed in realtime/conf.py: {sorted(self.defaults)}"
                )
            self._user_settings = normalised
        return self._user_settings

    def __getattr__(self, name: str) -> Any:
        if name not in self.defaults:
            raise AttributeError(f"Invalid REALTIME setting: {name!r}")
        value = self.user_settings.get(name, self.defaults[name])
        problem = setting_problem(name, value)
        if problem is not None:
            raise ImproperlyConfigured(problem)
        if isinstance(self.defaults[name], float) and isinstance(value, int):
            value = float(value)  # read as a float everywhere, whatever the environment said
        self._cached.add(name)
        setattr(self, name, value)
        return value

    def problems(self) -> list[str]:
        """What is wrong with the configured values, one sentence each (empty: all valid)."""
        try:
            configured = self.user_settings
        except ValueError as exc:
            return [str(exc)]
        return [
            problem
            for name in self.defaults
            if (problem := setting_problem(name, configured.get(name, self.defaults[name])))
        ]

    def reload(self) -> None:
        for name in self._cached:
            delattr(self, name)
        self._cached.clear()
        self._user_settings = None


def setting_problem(name: str, value: Any) -> str | None:
    """Why `value` is not valid for the setting `name`, or None when it is."""
    if name == "ALLOWED_ORIGINS" and value is None:
        return None
    if name not in SPEC:
        return f"REALTIME {name} has no entry in realtime.conf.SPEC; add its type and bounds there."
    kind, low, high = SPEC[name]
    checked: Any = value  # isinstance against a variable narrows to `object`; keep it Any
    if isinstance(checked, bool) or not isinstance(value, kind):
        wanted = {int: "a whole number", _NUMBER: "a number", (list, tuple): "a list"}[kind]
        return (
            f"REALTIME {name} must be {wanted}, not {value!r} (set REALTIME_{name} to a JSON "
            f"value, for example {DEFAULTS[name]!r})."
        )
    if name == "ALLOWED_ORIGINS":
        if not all(isinstance(origin, str) for origin in checked):
            return f"REALTIME ALLOWED_ORIGINS must be a list of origins (strings), not {value!r}."
        return None
    if name == "TRUSTED_PROXIES":
        return _trusted_proxies_problem(checked)
    if (low is not None and checked < low) or (high is not None and checked > high):
        return f"REALTIME {name} must be between {low:g} and {high:g}, not {value!r}."
    return None


def _trusted_proxies_problem(value: Any) -> str | None:
    import ipaddress

    for entry in value:
        try:
            ipaddress.ip_network(entry, strict=False)
        except (TypeError, ValueError):
            return (
                f"REALTIME TRUSTED_PROXIES must list IP addresses or networks "
                f'(["10.0.0.5", "10.1.0.0/16"]); {entry!r} is neither.'
            )
    return None


realtime_settings = RealtimeSettings(DEFAULTS)


def _reload_on_change(*, setting: str, **kwargs: Any) -> None:
    if setting == "REALTIME":
        realtime_settings.reload()


setting_changed.connect(_reload_on_change, dispatch_uid="realtime.conf.reload")
