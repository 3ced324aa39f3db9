"""WebSocket URL routes: `/ws` and `/ws/`, behind the handshake guard (limits and blocks), the
Origin check and JWT authentication."""

from __future__ import annotations

import re
from collections.abc import Awaitable
from typing import Any

from channels.security.websocket import WebsocketDenier

from realtime.auth import HandshakeGate
from realtime.consumers import RealtimeConsumer

# Matched against the path without its root path and leading slashes, as Channels' URLRouter does.
WEBSOCKET_PATH = re.compile(r"^ws/?$")


def route(scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[None]:
    """`/ws` and `/ws/` to a new RealtimeConsumer; any other path refused (HTTP 403) rather than
    failed with a server error.

    A plain function returning the application's coroutine, not a coroutine itself: Channels'
    URLRouter and a consumer's `as_asgi()` each keep a coroutine frame, and the router a copy of
    the scope, for the whole life of the connection (1.2 KiB of every idle connection,
    tracemalloc); this keeps none.
    """
    path, root_path = scope["path"], scope.get("root_path", "")
    if path.startswith(root_path) and WEBSOCKET_PATH.match(path[len(root_path) :].lstrip("/")):
        return RealtimeConsumer()(scope, receive, send)
    return WebsocketDenier()(scope, receive, send)


def websocket_application() -> Any:
    """The ASGI application for the `websocket` protocol."""
    return HandshakeGate(route)
