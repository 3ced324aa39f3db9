"""HTTP views of the real-time module: the connection status document and market-data intake."""

from __future__ import annotations

from inspect import iscoroutinefunction
from typing import Any

from asgiref.sync import sync_to_async
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.authentication import JWTAuthentication

from realtime.auth import TokenRejected, authenticate_token_async
from realtime.market_data import market_data
from realtime.permissions import CanPublishMarketData, CanViewConnections
from realtime.selectors import connection_status
from realtime.serializers import (
    MAX_TICKS_PER_REQUEST,
    ConnectionStatusSerializer,
    MarketDataAcceptedSerializer,
    TickSerializer,
)


class ConnectionStatusView(APIView):
    """Live WebSocket connections across every server process (CONTRACT section 6)."""

    permission_classes = [CanViewConnections]

    @extend_schema(responses=ConnectionStatusSerializer, operation_id="ws_status")
    def get(self, request: Request) -> Response:
        return Response(connection_status())


class EventLoopAPIView(APIView):
    """An APIView whose `async` handlers run on the event loop, not in a thread.

    DRF's dispatch is synchronous, so under ASGI Django runs it in a worker thread, and a
    handler that publishes hops back to the loop: two thread handoffs and, for a bearer
    token, a user query before anything is published (docs/BENCHMARKS.md). This is the same
    dispatch as a coroutine. A valid `Authorization: Bearer` access token is authenticated
    without blocking, its user from the cache the WebSocket handshake uses (realtime.auth:
    active users, for up to USER_CACHE_SECS) or loaded in a thread. Anything else (a session,
    a malformed or rejected token) runs DRF's own authenticators in a thread, so every refusal
    (401, CSRF) is exactly DRF's. Permissions with an `async ahas_permission` are awaited,
    others and any throttles run in a thread; sync handlers (OPTIONS) too.
    """

    def dispatch(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        return self._dispatch(request, *args, **kwargs)  # a coroutine: Django awaits it

    async def _dispatch(self, request: Any, *args: Any, **kwargs: Any) -> Response:
        self.args = args
        self.kwargs = kwargs
        request = self.initialize_request(request, *args, **kwargs)
        self.request = request
        self.headers = self.default_response_headers
        try:
            await self._initial(request, *args, **kwargs)
            method = (request.method or "").lower()
            handler = getattr(self, method, self.http_method_not_allowed)
            if method not in self.http_method_names:
                handler = self.http_method_not_allowed
            if iscoroutinefunction(handler):
                response = await handler(request, *args, **kwargs)
            else:
                response = await sync_to_async(handler)(request, *args, **kwargs)
        except Exception as exc:
            response = self.handle_exception(exc)
        self.response = self.finalize_response(request, response, *args, **kwargs)
        return self.response

    async def _initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        """`APIView.initial`, in its order, without blocking the loop."""
        self.format_kwarg = self.get_format_suffix(**kwargs)
        request.accepted_renderer, request.accepted_media_type = self.perform_content_negotiation(
            request
        )
        request.version, request.versioning_scheme = self.determine_version(
            request, *args, **kwargs
        )
        if not await self._authenticate_bearer(request):
            await sync_to_async(self.perform_authentication)(request)
        for permission in self.get_permissions():
            check = getattr(permission, "ahas_permission", None)
            if check is not None:
                allowed = await check(request, self)
            else:
                allowed = await sync_to_async(permission.has_permission)(request, self)
            if not allowed:
                self.permission_denied(
                    request,
                    message=getattr(permission, "message", None),
                    code=getattr(permission, "code", None),
                )
        if self.get_throttles():
            await sync_to_async(self.check_throttles)(request)

    @staticmethod
    async def _authenticate_bearer(request: Request) -> bool:
        """Authenticate a valid bearer access token on the loop; False to let DRF decide."""
        for authenticator in request.authenticators or ():
            if isinstance(authenticator, JWTAuthentication):
                break
        else:
            return False
        try:
            header = authenticator.get_header(request)
            raw = authenticator.get_raw_token(header) if header else None
        except Exception:  # a malformed header: DRF's answer
            return False
        if raw is None:
            return False
        try:
            authenticated = await authenticate_token_async(raw.decode("latin1"), in_request=True)
        except TokenRejected:
            return False
        request._authenticator = authenticator  # type: ignore[attr-defined]
        request.user, request.auth = authenticated.user, authenticated.token
        return True


class MarketDataView(EventLoopAPIView):
    """Publish market-data ticks to `market:{SYMBOL}` and mark positions to market."""

    permission_classes = [CanPublishMarketData]

    @extend_schema(
        request=TickSerializer(many=True),
        responses={202: MarketDataAcceptedSerializer},
        examples=[
            OpenApiExample("One tick", value={"symbol": "AAPL", "last": "189.5"}),
            OpenApiExample(
                "Several ticks",
                value=[
                    {"symbol": "AAPL", "last": "189.5", "bid": "189.49", "ask": "189.51"},
                    {"symbol": "MSFT", "last": "411.2", "volume": "1200"},
                ],
            ),
        ],
    )
    async def post(self, request: Request) -> Response:
        many = isinstance(request.data, list)
        if many and not 1 <= len(request.data) <= MAX_TICKS_PER_REQUEST:
            raise serializers.ValidationError(
                {"detail": f"Send between 1 and {MAX_TICKS_PER_REQUEST} ticks per request."}
            )
        serializer = TickSerializer(data=request.data, many=many)
        serializer.is_valid(raise_exception=True)
        rows: list[dict[str, Any]] = (
            serializer.validated_data if many else [serializer.validated_data]
        )
        ticks = [TickSerializer.to_tick(row) for row in rows]
        await market_data.apublish(ticks)
        return Response({"accepted": len(ticks)}, status=status.HTTP_202_ACCEPTED)
