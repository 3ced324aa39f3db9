"""The servers' own floor: an ASGI application that does, per connection, what the baseline does.

`python -m bench connections --bare` serves this instead of `tradingrt.asgi:application` under
the same server (Daphne, uvicorn or Granian) and the same garbage-collector settings: each
WebSocket is accepted and sent the baseline's AUTHENTICATION envelope, and nothing else. No
token is checked, no user loaded, no record written, no hub, no limits: what a connect costs
the server, Twisted, autobahn and asyncio alone. It shows how near the baseline the platform
could come if every feature were free; a figure measured on it is never a target's figure
(issue 18: features switched off count only as an extra row).
"""

from __future__ import annotations

import gc
import uuid
from typing import Any

from bench.baseline_server import envelope, now_timestamp

# What tradingrt.asgi does once the application is built: the same collector settings.
gc.collect()
gc.freeze()
gc.set_threshold(10_000, 10, 10_000)


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "websocket":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    while True:
        event = await receive()
        if event["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
            hello = {
                "status": "authenticated",
                "userId": 0,
                "username": "baseline",
                "connectionId": uuid.uuid4().hex,
                "expiresAt": now_timestamp(),
            }
            await send({"type": "websocket.send", "text": envelope("AUTHENTICATION", hello)})
        elif event["type"] == "websocket.disconnect":
            return
