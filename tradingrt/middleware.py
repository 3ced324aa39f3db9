"""Project middleware: static files without a thread handoff for every other request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from whitenoise.middleware import WhiteNoiseMiddleware


class StaticFilesMiddleware:
    """WhiteNoise's static files, answered in a thread; every other request goes straight on.

    WhiteNoiseMiddleware is synchronous only, so under ASGI Django runs it in a worker thread
    and hops back to the event loop for the rest of the chain, for every request, static or
    not: two thread handoffs before an async view (the market-data intake, realtime.views)
    starts. This one is async-capable: it looks the path up as WhiteNoise does and serves a
    match in a thread; under WSGI (and Django's sync test client) it is WhiteNoise itself.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.whitenoise = WhiteNoiseMiddleware(get_response)
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self._acall(request)
        return self.whitenoise(request)

    async def _acall(self, request: Any) -> Any:
        whitenoise = self.whitenoise
        if whitenoise.autorefresh:  # DEBUG: WhiteNoise looks on disk for every request
            static_file = await sync_to_async(whitenoise.find_file)(request.path_info)
        else:
            static_file = whitenoise.files.get(request.path_info)
        if static_file is not None:
            return await sync_to_async(whitenoise.serve)(static_file, request)
        return await self.get_response(request)
