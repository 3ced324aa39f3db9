"""A raw test client of the WebSocket protocol, on `websockets`: for protocol-level tests.

Malformed frames, exact error codes and close codes, raw frame kinds, limits, crafted
requests. A user's view (log in, subscribe, get updates, reconnect and resume) goes through the
project's Python client instead (tests/pyclient.py, the `bots` fixture).
"""

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


async def closed_with(ws: ClientConnection, *, timeout: float = DEFAULT_TIMEOUT) -> int | None:
    """Wait for the server to close the connection; its close code."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None
