"""How many bytes the server holds unsent for one connection (slow-consumer detection).

ASGI gives an application no view of the socket: Daphne's `send` never blocks, it hands the
frame to Twisted, which buffers without bound. Daphne passes `partial(handle_reply, protocol)`
as `send`, so the protocol's Twisted transport, and its write buffer, can be read from it.
Under other servers (uvicorn) `send` applies backpressure itself, the per-connection queue
fills instead, and no probe is needed.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any


def unsent_bytes_probe(send: Any) -> Callable[[], int] | None:
    """A function returning the transport's unsent bytes, or None when it cannot be known."""
    if not isinstance(send, functools.partial) or not send.args:
        return None
    transport = getattr(send.args[0], "transport", None)
    if transport is None or not all(
        hasattr(transport, name) for name in ("dataBuffer", "offset", "_tempDataLen")
    ):
        return None

    def unsent_bytes() -> int:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen

    return unsent_bytes


class _Resume:
    """Awaitable that carries on a coroutine which suspended outside any task."""

    def __init__(self, coroutine: Any, suspended_on: Any) -> None:
        self.coroutine = coroutine
        self.suspended_on = suspended_on

    def __await__(self) -> Any:
        value = yield self.suspended_on
        while True:
            try:
                pending = self.coroutine.send(value)
            except StopIteration as done:
                return done.value
            value = yield pending


def send_now(send: Callable[[dict[str, Any]], Any], message: dict[str, Any]) -> Any:
    """Run `await send(message)` to completion here if it never suspends; else a Task to await.

    Daphne's `send` never suspends (it hands the frame to Twisted and returns), so a broadcast
    can write to each of its sockets without creating a task per socket and message. A `send`
    that does suspend (backpressure, another server) is carried on by a task, which is returned.
    """
    coroutine = send(message)
    try:
        suspended_on = coroutine.send(None)
    except StopIteration:
        return None

    async def carry_on() -> Any:
        return await _Resume(coroutine, suspended_on)

    return asyncio.get_running_loop().create_task(carry_on())
