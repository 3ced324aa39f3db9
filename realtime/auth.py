"""WebSocket authentication: the handshake guard, simplejwt access tokens, and the Origin check.

`HandshakeGate` refuses (HTTP 403) handshakes from a blocked client IP or over its handshake
rate (realtime.limits) before anything else is looked at, then those from a disallowed Origin,
then puts the token's user in `scope["user"]`, or refuses the handshake when a token was given
and is invalid, expired, forged, revoked (realtime.sessions) or its user inactive; each refusal
counts toward the IP's block. With no token the connection proceeds anonymous and must
authenticate with its first message (realtime.consumers).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.core.signals import setting_changed
from django.http.request import validate_host
from rest_framework_simplejwt.exceptions import AuthenticationFailed, InvalidToken, TokenError
from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.tokens import AccessToken

from realtime import limits
from realtime.clientip import scope_client_ip
from realtime.conf import realtime_settings
from realtime.security import EventKind, record
from realtime.sessions import REVOKED_MESSAGE, JWTAuthentication, token_revoked

logger = logging.getLogger(__name__)


class TokenRejected(Exception):
    """The token cannot authenticate anyone; the message says why, for the client."""


@dataclass(frozen=True, slots=True)
class Authenticated:
    user: Any
    expires_at: float  # the token's `exp`, seconds since the epoch
    token: Any = None  # the validated AccessToken (DRF's `request.auth`)


class VerifiedTokens:
    """Access tokens whose signature, type and claims were verified, until they expire.

    A feed posts with the same token many times a second and a reconnecting client presents
    the one it had: decoding and verifying it again (PyJWT, HMAC) was a tenth of a market-data
    post's CPU. A token is deterministic, so the same string verifies the same way until its
    `exp` (plus simplejwt's leeway), which is checked on every use; a refused token is never
    kept. What can change about a valid token, its user's state and revocation, is checked
    apart on every use (`authenticate_token_async`). Emptied when the JWT settings change.

    The MAX_ENTRIES most recently used are kept (a verified token holds about 1.5 KiB): enough
    for the feeds and the clients reconnecting at a time, not a copy of every connection's
    token (10,000 of them added 1.5 KiB to each of 10,000 connections).
    """

    clock = staticmethod(time.time)
    MAX_ENTRIES = 512

    def __init__(self) -> None:
        self._tokens: collections.OrderedDict[str, tuple[AccessToken, float]] = (
            collections.OrderedDict()
        )

    def get(self, raw_token: str) -> AccessToken:
        tokens = self._tokens
        entry = tokens.get(raw_token)
        if entry is not None:
            if self.clock() < entry[1]:
                tokens.move_to_end(raw_token)
                return entry[0]
            del tokens[raw_token]
            raise TokenRejected(EXPIRED_MESSAGE)  # simplejwt's words for an expired token
        try:
            token = AccessToken(raw_token)  # type: ignore[arg-type]
        except TokenError as exc:
            raise TokenRejected(str(exc)) from None
        leeway = token.get_token_backend().get_leeway().total_seconds()
        tokens[raw_token] = (token, float(token["exp"]) + leeway)
        if len(tokens) > self.MAX_ENTRIES:
            tokens.popitem(last=False)  # the least recently used
        return token

    def __len__(self) -> int:
        return len(self._tokens)

    def clear(self) -> None:
        self._tokens.clear()


EXPIRED_MESSAGE = "Token is expired"
verified_tokens = VerifiedTokens()


def _jwt_settings_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "SIMPLE_JWT":
        verified_tokens.clear()


setting_changed.connect(_jwt_settings_changed)


def validate_token(raw_token: str) -> AccessToken:
    """Signature, algorithm, expiry and token type; no database (TokenRejected if bad)."""
    return verified_tokens.get(raw_token)


def authenticate_token(raw_token: str) -> Authenticated:
    """Validate an access token and load its active user (blocking: call it in a thread)."""
    return _load_user(validate_token(raw_token))


def _load_user(token: AccessToken) -> Authenticated:
    try:
        user = JWTAuthentication().get_user(token)
    except (InvalidToken, AuthenticationFailed) as exc:
        detail = (
            exc.detail.get("detail", exc.detail) if isinstance(exc.detail, dict) else exc.detail
        )
        raise TokenRejected(str(detail)) from None
    if not user.is_active:
        raise TokenRejected("User is inactive")
    return Authenticated(user=user, expires_at=float(token["exp"]), token=token)


class UserCache:
    """Users recently loaded for a token, for USER_CACHE_SECS, so a burst of connects by the
    same users (a trader's tabs, a desk reconnecting after a deploy) does not queue on the
    database. A deactivated or deleted user is forgotten at once by every process (the hub's
    control message), and in any case within USER_CACHE_SECS.

    A user being loaded is loaded once: the connects that miss the cache meanwhile wait for
    that load (`loading`) instead of each queueing its own query of the same row on the
    database thread: the bursts of a deploy, when every connect misses at once (in the profile
    of 10,000 connects by 100 users, user loads went from 4.9% to 3.3% of the samples, the rest
    being each entry's expiry; docs/BENCHMARKS.md, "Where a connect's CPU goes"). Forgetting
    a user also forgets their load in progress: what it returns is neither kept nor given to
    its waiters, who load afresh, as does whoever misses the cache after that."""

    clock = staticmethod(time.monotonic)

    def __init__(self) -> None:
        self._users: dict[Any, tuple[Any, float]] = {}
        self._loads: dict[str, asyncio.Future[Any]] = {}

    def get(self, user_id: Any) -> Any:
        entry = self._users.get(user_id)
        if entry is None or entry[1] < self.clock():
            return None
        return entry[0]

    def put(self, user: Any) -> None:
        ttl = realtime_settings.USER_CACHE_SECS
        if ttl > 0:
            if len(self._users) > 10_000:
                self._users.clear()
            self._users[str(user.pk)] = (user, self.clock() + ttl)

    def loading(self, user_id: str) -> asyncio.Future[Any] | None:
        """The load of this user in progress on this event loop, if there is one: its result
        is the user, or None if it failed (that token's own fault, or the database's)."""
        load = self._loads.get(user_id)
        if load is None or load.get_loop() is not asyncio.get_running_loop():
            return None
        return load

    @contextlib.contextmanager
    def load(self, user_id: str) -> Iterator[Callable[[Any], None]]:
        """Register a load of this user for others to wait on; call what it yields with the
        user loaded. If the load ends without (an exception), the waiters get None."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._loads[user_id] = future

        def loaded(user: Any) -> None:
            if self._loads.get(user_id) is future:
                self.put(user)
                future.set_result(user)
            else:  # forgotten meanwhile (revoked, deactivated): its waiters load afresh
                future.set_result(None)

        try:
            yield loaded
        finally:
            if self._loads.get(user_id) is future:
                del self._loads[user_id]
            if not future.done():
                future.set_result(None)

    def forget(self, user_ids: Any) -> None:
        for user_id in user_ids:
            self._users.pop(str(user_id), None)
            self._loads.pop(str(user_id), None)

    def clear(self) -> None:
        self._users.clear()
        self._loads.clear()


user_cache = UserCache()
# Outside a request (consumers), channels' wrapper closes stale connections around the query;
# inside one (an async view), Django's request cycle does, and tests' transactions stay open.
_load_user_async = database_sync_to_async(_load_user)
_load_user_in_request = sync_to_async(_load_user)


async def authenticate_token_async(raw_token: str, *, in_request: bool = False) -> Authenticated:
    """`authenticate_token` for the event loop: the database only when the user is not cached
    (and not being loaded for another token already)."""
    token = validate_token(raw_token)
    user_id = str(token.get(api_settings.USER_ID_CLAIM))
    user = user_cache.get(user_id)
    if user is None or not user.is_active:
        pending = user_cache.loading(user_id)
        user = await asyncio.shield(pending) if pending is not None else None
    if user is None or not user.is_active:
        load = _load_user_in_request if in_request else _load_user_async
        with user_cache.load(user_id) as loaded:
            authenticated = await load(token)
            loaded(authenticated.user)
        return authenticated
    if token_revoked(user, token):
        raise TokenRejected(REVOKED_MESSAGE)
    return Authenticated(user=user, expires_at=float(token["exp"]), token=token)


def token_from_scope(scope: dict[str, Any]) -> str | None:
    """The token of `?token=` or of an `Authorization: Bearer` header, if either is there."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin1").partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
    query = parse_qs(scope.get("query_string", b"").decode("latin1"))
    tokens = query.get("token")
    if tokens and tokens[0]:
        return tokens[0]
    return None


def client_ip_of(scope: dict[str, Any]) -> str:
    """The client IP HandshakeGuard put in the scope (computed here if it did not run)."""
    ip = scope.get("client_ip")
    return ip if isinstance(ip, str) else scope_client_ip(scope)


class HandshakeGate:
    """Admit or refuse (HTTP 403) a WebSocket handshake, in this order:

    1. the guard: a blocked client IP, or one over HANDSHAKES_PER_IP_PER_MIN (realtime.limits);
       puts the client IP (realtime.clientip) in `scope["client_ip"]` for the rest;
    2. the Origin: browsers from other sites (cross-site WebSocket hijacking). A browser always
       sends `Origin`; a connection with none (a trading bot, a server-side script) cannot be a
       hijacked browser session and is authenticated by its token alone;
    3. the token: `scope["user"]` is the token's user (and `scope["token_expires_at"]` its
       expiry), or anonymous when no token was given (it must authenticate with its first
       message); an invalid, expired, forged or revoked token, or an inactive user, is refused
       and counts toward the IP's block.

    One middleware rather than three: each ASGI middleware keeps a coroutine frame and a copy of
    the scope for the whole life of the connection (about 1 KiB of each idle connection).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        scope = dict(scope)
        if not await self._admit(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.app(scope, receive, send)

    async def _admit(self, scope: dict[str, Any]) -> bool:
        ip = scope["client_ip"] = scope_client_ip(scope)
        refusal = await limits.check_handshake(ip)
        if refusal is not None:
            logger.info("WebSocket handshake refused: %s (%s)", refusal.value, ip)
            return False
        origin = _origin_of(scope)
        if origin is not None and not origin_allowed(origin):
            logger.info("WebSocket handshake refused: Origin %r is not allowed", origin)
            record(EventKind.ORIGIN_REFUSED, ip=ip, detail=f"Origin {origin[:200]!r}")
            return False
        scope["user"] = AnonymousUser()
        raw_token = token_from_scope(scope)
        if raw_token is None:
            return True
        try:
            authenticated = await authenticate_token_async(raw_token)
        except TokenRejected as exc:
            logger.info("WebSocket handshake refused: %s (%s)", exc, _client(scope))
            await limits.authentication_failed(ip, detail=f"handshake token refused: {exc}")
            return False
        scope["user"] = authenticated.user
        scope["token_expires_at"] = authenticated.expires_at
        return True


def _origin_of(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"origin":
            return str(value.decode("latin1"))
    return None


def origin_allowed(origin: str) -> bool:
    allowed = realtime_settings.ALLOWED_ORIGINS
    if allowed is not None:
        return "*" in allowed or origin in allowed
    parsed = urlsplit(origin)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return False
    host = parsed.hostname if ":" not in parsed.hostname else f"[{parsed.hostname}]"
    return validate_host(host, list(settings.ALLOWED_HOSTS))


def _client(scope: dict[str, Any]) -> str:
    client = scope.get("client") or ("?", 0)
    return f"{client[0]}:{client[1]}"
