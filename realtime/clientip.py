"""The client's IP address: the socket's peer, or X-Forwarded-For's first address behind a proxy
listed in REALTIME TRUSTED_PROXIES (CONTRACT section 13).

One rule for WebSocket handshakes (an ASGI scope) and HTTP requests (Django's META), so a limit
or a block applies to the same address on both doors. A header from any other peer is ignored:
anyone can write `X-Forwarded-For`.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

from realtime.conf import realtime_settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def is_trusted_proxy(peer: str) -> bool:
    """Whether `peer` is one of the configured trusted proxies."""
    entries = realtime_settings.TRUSTED_PROXIES
    if not entries or not peer:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in _networks(tuple(entries)))


def client_ip(peer: str, forwarded_for: str | None) -> str:
    """The client IP for a connection from `peer` carrying `forwarded_for` (or None)."""
    if forwarded_for and is_trusted_proxy(peer):
        first = forwarded_for.split(",", 1)[0].strip()
        if first.startswith("[") and "]" in first:  # "[2001:db8::1]:4711"
            first = first[1 : first.index("]")]
        elif first.count(":") == 1:  # "203.0.113.7:4711"
            first = first.split(":", 1)[0]
        try:
            return str(ipaddress.ip_address(first))
        except ValueError:
            return peer  # a proxy that sends garbage: fall back to what is known
    return peer


def scope_client_ip(scope: dict[str, Any]) -> str:
    """The client IP of an ASGI connection scope."""
    client = scope.get("client")
    peer = str(client[0]) if client else ""
    forwarded = None
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-for":
            forwarded = value.decode("latin1")
            break
    return client_ip(peer, forwarded)


def request_client_ip(request: Any) -> str:
    """The client IP of a Django (or DRF) request."""
    meta = request.META
    return client_ip(str(meta.get("REMOTE_ADDR") or ""), meta.get("HTTP_X_FORWARDED_FOR"))
