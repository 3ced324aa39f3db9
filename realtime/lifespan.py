"""ASGI lifespan: servers that send it (uvicorn) register the hub at start and remove it at stop.

Daphne sends no lifespan events; there the hub starts with the first WebSocket and an atexit
hook removes the process's records on a clean exit (realtime.hub).
"""

from __future__ import annotations

import logging
from typing import Any

from realtime.hub import current_hub, get_hub

logger = logging.getLogger(__name__)


async def lifespan_application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await get_hub()
            except Exception as exc:
                logger.exception("The realtime hub could not start")
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            hub = current_hub()
            if hub is not None:
                try:
                    await hub.stop()
                except Exception:
                    logger.exception("The realtime hub did not stop cleanly")
            await send({"type": "lifespan.shutdown.complete"})
            return
