"""A small test client for the WebSocket protocol, on the `websockets` library."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

DEFAULT_TIMEOUT = 5.0


async def connect(url: str, *, token: str | None = None, **kwargs: Any) -> ClientConnection:
    """Open a connection; with `token`, authenticated by the query parameter."""
    if token is not None:
        url = f"{url}?token={token}"
    return await websockets.connect(url, open_timeout=DEFAULT_TIMEOUT, **kwargs)


async def send(ws: ClientConnection, message_type: str, payload: Any = None, **extra: Any) -> None:
    message: dict[str, Any] = {"type": message_type, "timestamp": "2026-11-25T10:15:30.123Z"}
    if payload is not None:
        message["payload"] = payload
    message.update(extra)
    await ws.send(json.dumps(message))


async def receive(
    ws: ClientConnection, *, timeout: float = DEFAULT_TIMEOUT, heartbeats: bool = False
) -> dict[str, Any]:
    """The next message, skipping the server's unsolicited HEARTBEATs unless asked for them.

    `timeout` bounds the whole wait, however many heartbeats arrive meanwhile.
    """
    async with asyncio.timeout(timeout):
        while True:
            message = json.loads(await ws.recv())
            if heartbeats or message["type"] != "HEARTBEAT" or "id" in message:
                return message


async def receive_type(
    ws: ClientConnection, message_type: str, *, timeout: float = DEFAULT_TIMEOUT
) -> dict[str, Any]:
    """The next message of `message_type`; fails if another type comes first (not heartbeats)."""
    message = await receive(ws, timeout=timeout, heartbeats=message_type == "HEARTBEAT")
    assert message["type"] == message_type, message
    return message


async def request(
    ws: ClientConnection, message_type: str, payload: Any = None, *, id: Any = "r1"
) -> dict[str, Any]:
    """Send a message with an id and return the reply that echoes it."""
    await send(ws, message_type, payload, id=id)
    while True:
        message = await receive(ws)
        if message.get("id") == id:
            return message


async def subscribe(ws: ClientConnection, *topics: str) -> dict[str, Any]:
    reply = await request(ws, "SUBSCRIPTION", {"action": "subscribe", "topics": list(topics)})
    assert reply["type"] == "SUBSCRIPTION", reply
    return reply["payload"]


async def assert_silent(ws: ClientConnection, seconds: float = 0.5) -> None:
    """Nothing but heartbeats arrives for `seconds`."""
    try:
        message = await receive(ws, timeout=seconds)
    except TimeoutError:
        return
    raise AssertionError(f"expected no message, got {message}")


async def closed_with(ws: ClientConnection, *, timeout: float = DEFAULT_TIMEOUT) -> int | None:
    """Wait for the server to close the connection; its close code."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


async def listen(server: Any, user: Any, *topics: str) -> tuple[ClientConnection, str]:
    """A connection of `user` to a live server, subscribed to `topics`; and its connection id."""
    from asgiref.sync import sync_to_async

    from tests.conftest import access_token_for

    token = await sync_to_async(access_token_for)(user)
    ws = await connect(server.ws_url, token=token)
    hello = await receive_type(ws, "AUTHENTICATION")
    if topics:
        ack = await subscribe(ws, *topics)
        assert sorted(ack["topics"]) == sorted(topics), ack
    return ws, hello["payload"]["connectionId"]
