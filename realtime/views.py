"""HTTP views of the real-time module: the connection status document, market-data intake, the
security report, the Prometheus metrics, and the password login with its limits."""

from __future__ import annotations

import hmac
import logging
from inspect import iscoroutinefunction
from typing import Any, NoReturn

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import APIException, AuthenticationFailed, Throttled
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.views import TokenObtainPairView

from market.ticks import Tick
from realtime import limits, metrics
from realtime.auth import TokenRejected, authenticate_token, authenticate_token_async
from realtime.clientip import request_client_ip
from realtime.market_data import MarketDataUnavailable, market_data
from realtime.permissions import CanPublishMarketData, CanViewConnections
from realtime.security import EventKind, record, recorder
from realtime.selectors import connection_status, security_report
from realtime.serializers import (
    MAX_TICKS_PER_REQUEST,
    ConnectionStatusSerializer,
    MarketDataAcceptedSerializer,
    SecurityReportSerializer,
    TickSerializer,
)
from realtime.sessions import LoginSerializer
from realtime.throttling import LoginPerIPThrottle, LoginPerUsernameThrottle, attempted_username

logger = logging.getLogger(__name__)


class ConnectionStatusView(APIView):
    """Live WebSocket connections across every server process (CONTRACT section 6)."""

    permission_classes = [CanViewConnections]

    @extend_schema(responses=ConnectionStatusSerializer, operation_id="ws_status")
    def get(self, request: Request) -> Response:
        return Response(connection_status())


class SecurityReportView(APIView):
    """The last hour's security events and the IP blocks in force (CONTRACT section 13)."""

    permission_classes = [CanViewConnections]

    @extend_schema(responses=SecurityReportSerializer, operation_id="ws_security")
    def get(self, request: Request) -> Response:
        try:
            recorder.flush()  # this process's counts so far; the others' within a flush interval
        except Exception:  # the report is still worth having without them
            logger.warning("Could not write this process's security events", exc_info=True)
        return Response(security_report())


@csrf_exempt  # it changes nothing; a POST gets 405, not a CSRF refusal
@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """`GET /metrics`, Prometheus text format: for staff (a session or a bearer access token) and
    for a bearer token equal to METRICS_TOKEN."""
    if not _may_read_metrics(request):
        return HttpResponse(
            "Metrics need a staff login, or Authorization: Bearer <METRICS_TOKEN>.\n",
            status=401,
            content_type="text/plain",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    return HttpResponse(metrics.render(), content_type=metrics.CONTENT_TYPE)


def _may_read_metrics(request: HttpRequest) -> bool:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and credentials:
        expected = settings.METRICS_TOKEN
        if expected and hmac.compare_digest(credentials.encode(), expected.encode()):
            return True
        try:
            return bool(authenticate_token(credentials).user.is_staff)
        except TokenRejected:
            return False
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and user.is_staff)


class LoginView(TokenObtainPairView):
    """`POST /api/auth/token/`: simplejwt's login, limited per client IP and per username
    (LOGINS_PER_MIN each: 429 with Retry-After), refused while the IP is blocked, and each
    failure recorded (`login_failed`) and counted toward the IP's block (realtime.limits)."""

    serializer_class = LoginSerializer
    throttle_classes = [LoginPerIPThrottle, LoginPerUsernameThrottle]

    def check_throttles(self, request: Request) -> None:
        ip = request_client_ip(request)
        until = async_to_sync(limits.blocked_until)(ip)
        if until is not None:
            record(
                EventKind.IP_BLOCKED,
                ip=ip,
                username=attempted_username(request)[:150],
                detail="login refused: the IP is blocked",
            )
            raise Throttled(
                wait=limits.remaining(until),
                detail="Too many failed authentications from this address; try again later.",
            )
        super().check_throttles(request)

    def throttled(self, request: Request, wait: float) -> NoReturn:
        record(
            EventKind.LOGIN_THROTTLED,
            ip=request_client_ip(request),
            username=attempted_username(request)[:150],
            detail="over the password-login limit",
        )
        super().throttled(request, wait)

    @extend_schema(
        responses={
            200: LoginSerializer,
            401: OpenApiResponse(description="No active account with these credentials."),
            429: OpenApiResponse(
                description="Too many logins from this address or for this username, or the "
                "address is blocked; the Retry-After header says when to try again."
            ),
        }
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        try:
            return super().post(request, *args, **kwargs)
        except AuthenticationFailed:
            limits.authentication_failed_sync(
                request_client_ip(request),
                kind=EventKind.LOGIN_FAILED,
                username=attempted_username(request)[:150],
                detail="wrong username or password",
            )
            raise


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


class MarketDataNotPublished(APIException):
    """503: the ticks could not be published now; the feed sends them again (Retry-After)."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "unavailable"
    wait = 1  # DRF's exception handler turns it into Retry-After


class MarketDataView(EventLoopAPIView):
    """Publish market-data ticks to `market:{SYMBOL}` and mark positions to market."""

    permission_classes = [CanPublishMarketData]

    @extend_schema(
        request=TickSerializer(many=True),
        responses={
            202: MarketDataAcceptedSerializer,
            503: OpenApiResponse(
                description="The history or the channel layer cannot be reached: nothing after "
                "the count in `detail` was published; send the ticks again after Retry-After."
            ),
        },
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
        accepted = await publish_ticks(ticks_from(request.data))
        return Response(accepted, status=status.HTTP_202_ACCEPTED)


def ticks_from(data: Any) -> list[Tick]:
    """The ticks of a request's parsed body (one tick or a list); ValidationError if invalid."""
    many = isinstance(data, list)
    if many and not 1 <= len(data) <= MAX_TICKS_PER_REQUEST:
        raise serializers.ValidationError(
            {"detail": f"Send between 1 and {MAX_TICKS_PER_REQUEST} ticks per request."}
        )
    serializer = TickSerializer(data=data, many=many)
    serializer.is_valid(raise_exception=True)
    rows: list[dict[str, Any]] = serializer.validated_data if many else [serializer.validated_data]
    return [TickSerializer.to_tick(row) for row in rows]


async def publish_ticks(ticks: list[Tick]) -> dict[str, int]:
    """Publish `ticks` (realtime.market_data); the 202's body, or MarketDataNotPublished."""
    try:
        await market_data.apublish(ticks)
    except MarketDataUnavailable as exc:
        raise MarketDataNotPublished(
            f"The ticks cannot be published now ({exc.published} of {exc.total} were): "
            f"{exc.reason}. Send them again."
        ) from exc
    return {"accepted": len(ticks)}
