"""WebSocket URL routes: `/ws` and `/ws/`, behind the handshake guard (limits and blocks), the
Origin check and JWT authentication."""

from __future__ import annotations

from typing import Any

from channels.routing import URLRouter
from channels.security.websocket import WebsocketDenier
from django.urls import re_path

from realtime.auth import HandshakeGate
from realtime.consumers import RealtimeConsumer

websocket_urlpatterns = [
    re_path(r"^ws/?$", RealtimeConsumer.as_asgi()),
    # Any other path: refuse the handshake (HTTP 403) rather than fail it with a server error.
    re_path(r"", WebsocketDenier.as_asgi()),
]


def websocket_application() -> Any:
    """The ASGI application for the `websocket` protocol."""
    return HandshakeGate(URLRouter(websocket_urlpatterns))
