"""`POST /api/market-data/` answered on the event loop, without Django's request cycle.

A market-data feed posts ticks many times a second, and every tick is fanned out to every
subscriber of its symbol, so what the request itself costs is paid on every update. Through
Django's ASGI handler it costs five hand-offs to a request thread and back (the
`request_started` receivers, the middleware chain, `process_view`, rendering, `close`), a
task listening for the client's disconnect and the middleware chain itself: about half a
publish's CPU and 2 ms before the first subscriber hears of the tick (docs/BENCHMARKS.md).

`MarketDataEndpoint` wraps Django's ASGI application and answers, by itself, only the request
whose answer it knows to be exactly Django's: a POST of a JSON body of valid ticks, with an
`Authorization: Bearer` access token that authenticates a user allowed to publish, on an
allowed host, not to be redirected. It authenticates with the WebSocket handshake's cached
check (`realtime.auth`), checks the view's own permissions, validates with the view's
serializer, publishes with the view's function, and adds the headers Django's response
middleware would, by calling that middleware. Anything else (no token, a refused one, a
session, a bad tick, another content type or Accept, a body over Django's limit, an
unexpected middleware list) goes to Django unchanged, body and all, so every refusal is
Django's and DRF's own. A publish that fails after it began (the history or the channel layer
down) cannot go to Django too (the ticks before the failure went out): it is answered here
with DRF's 503, as the view would.

The two paths are counted in `realtime.stats` (`market_data_direct`, `market_data_via_django`),
so `/metrics` shows which one a feed takes.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse
from django.urls import reverse
from rest_framework.exceptions import ValidationError
from rest_framework.renderers import JSONRenderer
from rest_framework_simplejwt.settings import api_settings as jwt_settings

from market.ticks import Tick
from realtime import stats
from realtime.auth import TokenRejected, authenticate_token_async
from realtime.serializers import MAX_TICKS_PER_REQUEST, TickSerializer
from realtime.views import MarketDataNotPublished, MarketDataView, publish_ticks

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# The middleware this module knows the effect of on an authenticated JSON POST to the view; with
# any other list, every request goes through Django.
KNOWN_MIDDLEWARE = (
    "tradingrt.middleware.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "tradingrt.middleware.SessionMiddleware",
    "tradingrt.middleware.CommonMiddleware",
    "tradingrt.middleware.CsrfViewMiddleware",
    "tradingrt.middleware.AuthenticationMiddleware",
    "tradingrt.middleware.MessageMiddleware",
    "tradingrt.middleware.XFrameOptionsMiddleware",
)
# Header names read here: a request repeating one of them goes to Django, which joins repeats.
_READ = frozenset({b"authorization", b"content-type", b"content-length", b"accept", b"cookie"})
_ACCEPTED = frozenset({"", "*/*", "application/json", "application/*"})


class _NotHere(Exception):
    """This request is Django's to answer."""


def _unused_response(request: Any) -> HttpResponse:  # middleware built only for their hooks
    raise AssertionError("middleware hooks are called directly")


class MarketDataEndpoint:
    """ASGI: `POST /api/market-data/` answered here when Django's answer is known; else Django."""

    def __init__(self, django_app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.django_app = django_app
        self._ready: bool | None = None  # None: not looked at yet
        self._path = ""

    def _prepare(self) -> bool:
        """Build the middleware hooks once; False (and said once) where this cannot answer."""
        from tradingrt import middleware

        if tuple(settings.MIDDLEWARE) != KNOWN_MIDDLEWARE or MarketDataView.throttle_classes:
            logger.info(
                "POST %s goes through Django's request cycle: MIDDLEWARE or the view's "
                "throttles are not the ones realtime.market_data_http knows",
                reverse("market-data"),
            )
            return False
        self._path = reverse("market-data")
        self._security = middleware.SecurityMiddleware(_unused_response)
        self._common = middleware.CommonMiddleware(_unused_response)
        self._xframe = middleware.XFrameOptionsMiddleware(_unused_response)
        view = MarketDataView()
        self._view_headers = dict(view.default_response_headers)
        self._permissions: list[Any] = [
            permission() for permission in MarketDataView.permission_classes
        ]
        if not all(hasattr(permission, "ahas_permission") for permission in self._permissions):
            logger.info("POST %s goes through Django: a permission cannot be awaited", self._path)
            return False
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._ready is None:
            self._ready = self._prepare()
        if not (
            self._ready
            and scope["type"] == "http"
            and scope.get("method") == "POST"
            and scope.get("path") == self._path
            and not scope.get("root_path")
        ):
            await self.django_app(scope, receive, send)
            return
        received: list[dict[str, Any]] = []
        try:
            body = await self._read_body(receive, received)
            response = await self._answer(scope, body)
        except _NotHere:
            stats.count("market_data_via_django")
            await self.django_app(scope, _replaying(received, receive), send)
            return
        stats.count("market_data_direct")
        await _send_response(response, send)

    @staticmethod
    async def _read_body(receive: Receive, received: list[dict[str, Any]]) -> bytes:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        size = 0
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":
                raise _NotHere  # a disconnect: Django's handler sees it and stops
            size += len(message.get("body", b""))
            if limit is not None and size > limit:
                raise _NotHere  # Django answers 400 (RequestDataTooBig)
            if not message.get("more_body", False):
                return b"".join(m.get("body", b"") for m in received)

    async def _answer(self, scope: Scope, body: bytes) -> HttpResponse:
        headers = _headers(scope)
        if headers.get(b"content-length") != str(len(body)).encode():
            raise _NotHere  # DRF reads no body without a Content-Length
        raw_token = _bearer_token(headers.get(b"authorization", b""))
        if not _is_json(headers.get(b"content-type", b"")) or not _accepts_json(
            headers.get(b"accept", b"")
        ):
            raise _NotHere
        try:
            request = ASGIRequest(scope, io.BytesIO(body))
            # Django's request-side checks: the host, the HTTPS redirect, user agents, www.
            redirected = self._security.process_request(request) or self._common.process_request(
                request
            )
        except Exception:  # DisallowedHost, PermissionDenied, a path that is not UTF-8 ...
            raise _NotHere from None
        if redirected:
            raise _NotHere
        try:
            authenticated = await authenticate_token_async(raw_token)
        except TokenRejected:
            raise _NotHere from None  # Django's 401, with DRF's code and message
        request.user = authenticated.user
        for permission in self._permissions:
            if not await permission.ahas_permission(request, None):
                raise _NotHere
        try:
            ticks = _ticks(json.loads(body.decode(), parse_constant=_no_constants))
        except (ValueError, ValidationError):  # UnicodeDecodeError is a ValueError too
            raise _NotHere from None  # DRF's 400, with its messages
        try:
            accepted = await publish_ticks(ticks)
        except MarketDataNotPublished as exc:
            return self._response(
                {"detail": exc.detail}, exc.status_code, request, {"Retry-After": str(exc.wait)}
            )
        return self._response(accepted, 202, request, {})

    def _response(
        self, data: Any, status: int, request: ASGIRequest, extra: dict[str, str]
    ) -> HttpResponse:
        """The response DRF's view and Django's response middleware would give."""
        response = HttpResponse(
            JSONRenderer().render(data), status=status, content_type="application/json"
        )
        for name, value in (self._view_headers | extra).items():
            response[name] = value
        response = self._xframe.process_response(request, response)
        response = self._common.process_response(request, response)
        return self._security.process_response(request, response)


# One serializer whose fields are built once: DRF deep-copies a serializer's declared fields for
# every instance (a fifth of a post's validation). Its `run_validation` keeps no state between
# calls, and it runs on the event loop's thread only.
_tick_serializer = TickSerializer()


def _ticks(data: Any) -> list[Tick]:
    """The view's `ticks_from` for a valid body (its ticks, equal); _NotHere for any other."""
    if isinstance(data, list):
        if not 1 <= len(data) <= MAX_TICKS_PER_REQUEST:
            raise _NotHere
        items = data
    else:
        items = [data]
    return [TickSerializer.to_tick(_tick_serializer.run_validation(item)) for item in items]


def _headers(scope: Scope) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = {}
    for name, value in scope.get("headers", ()):
        name = name.lower()
        if name in _READ:
            if name in found:
                raise _NotHere
            found[name] = value
    if b"cookie" in found:  # a browser: its session and CSRF rules are Django's
        raise _NotHere
    return found


def _bearer_token(header: bytes) -> str:
    """The access token of `Authorization: Bearer <token>`, as simplejwt reads it."""
    parts = header.split()
    types = {kind.encode("latin1") for kind in jwt_settings.AUTH_HEADER_TYPES}
    if len(parts) != 2 or parts[0] not in types:
        raise _NotHere
    return parts[1].decode("latin1")


def _media_type(value: bytes) -> tuple[str, dict[str, str]]:
    kind, _, rest = value.decode("latin1").partition(";")
    params = {}
    for param in rest.split(";"):
        name, _, param_value = param.partition("=")
        if name.strip():
            params[name.strip().lower()] = param_value.strip().strip('"').lower()
    return kind.strip().lower(), params


def _is_json(content_type: bytes) -> bool:
    kind, params = _media_type(content_type)
    return (
        kind == "application/json"
        and set(params) <= {"charset"}
        and (params.get("charset", "utf-8") in ("utf-8", "utf8"))
    )


def _accepts_json(accept: bytes) -> bool:
    """An Accept that DRF answers with JSON whatever its renderers: none, */*, JSON."""
    kind, params = _media_type(accept)
    return "," not in kind and kind in _ACCEPTED and not params


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # as DRF's strict JSONParser refuses NaN


def _replaying(received: list[dict[str, Any]], receive: Receive) -> Receive:
    """`receive` for Django: the messages read here first, then the server's."""
    pending = list(received)

    async def replay() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


async def _send_response(response: HttpResponse, send: Send) -> None:
    """As Django's ASGIHandler.send_response sends a plain, non-streaming response."""
    headers = [(name.encode("ascii"), value.encode("latin1")) for name, value in response.items()]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": response.content})
