"""The `websocket` protocol's route (realtime.routing): which paths reach the consumer."""

from __future__ import annotations

import inspect

import pytest
from channels.security.websocket import WebsocketDenier

from realtime.consumers import RealtimeConsumer
from realtime.routing import route


def routed_to(path: str, root_path: str = "") -> type:
    scope = {"type": "websocket", "path": path, "root_path": root_path}
    coroutine = route(scope, None, None)
    try:
        owner = coroutine.cr_frame.f_locals["self"]
        return type(owner)
    finally:
        coroutine.close()


@pytest.mark.parametrize(
    ("path", "root_path"), [("/ws", ""), ("/ws/", ""), ("//ws", ""), ("/api/rt/ws", "/api/rt")]
)
def test_the_websocket_path_reaches_a_new_consumer(path, root_path):
    assert routed_to(path, root_path) is RealtimeConsumer


@pytest.mark.parametrize(
    ("path", "root_path"),
    [("/", ""), ("/wsx", ""), ("/ws/status", ""), ("/ws//", ""), ("/ws", "/api/rt")],
)
def test_any_other_path_is_refused_not_failed(path, root_path):
    assert routed_to(path, root_path) is WebsocketDenier


def test_the_route_keeps_no_frame_of_its_own_for_the_connections_life():
    """A plain function handing back the application's coroutine: Channels' URLRouter and
    `as_asgi` kept two frames and a scope copy per connection (1.2 KiB of each idle one)."""
    assert not inspect.iscoroutinefunction(route)
