"""How many bytes the server holds unsent for one connection (slow-consumer detection).

ASGI gives an application no view of the socket: Daphne's `send` never blocks, it hands the
frame to Twisted, which buffers without bound. Daphne passes `partial(handle_reply, protocol)`
as `send`, so the protocol's Twisted transport, and its write buffer, can be read from it.
Under other servers (uvicorn) `send` applies backpressure itself, the per-connection queue
fills instead, and no probe is needed.
"""

from __future__ import annotations

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
