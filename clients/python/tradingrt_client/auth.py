"""Access tokens for the connection: a fixed one, a bot's own provider, or login and refresh
over the REST API (docs/PROTOCOL.md section 2.1)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import inspect
import json
import random
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import AuthenticationFailed

LOGIN_PATH = "/api/auth/token/"
REFRESH_PATH = "/api/auth/token/refresh/"

# `reason` is "connect" before every connection attempt, "renew" after the server refused the
# token (a 4401 close, a 403 handshake), "refresh" before the session's token expires, and
# "revoked" after an operator revoked the user's sessions (4410): only a new login helps then.
TokenProvider = Callable[[str], str | Awaitable[str]]


class HttpError(Exception):
    """A REST call answered with an HTTP error status; `retry_after` in seconds, from the
    `Retry-After` header of a throttled login (429)."""

    def __init__(self, status: int, body: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status
        self.body = body
        self.retry_after = retry_after


def post_json(
    url: str, body: dict[str, Any], *, timeout: float, context: ssl.SSLContext | None
) -> dict[str, Any]:
    """POST a JSON body, return the JSON answer; HttpError for an error status, OSError when
    the server cannot be reached."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url}")
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
            answer = json.load(response)
    except urllib.error.HTTPError as error:
        retry_after = None
        with contextlib.suppress(TypeError, ValueError):
            retry_after = float(error.headers.get("Retry-After", ""))
        raise HttpError(error.code, error.read().decode(errors="replace"), retry_after) from None
    if not isinstance(answer, dict):
        raise ValueError(f"{url} answered {answer!r:.80}, not an object")
    return answer


Poster = Callable[[str, dict[str, Any]], dict[str, Any]]


def token_expiry(token: str) -> float | None:
    """The `exp` of a JWT (seconds since the epoch), read without verifying it: only to know
    when to renew it. None when it cannot be read."""
    try:
        body = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        return float(claims["exp"])
    except (IndexError, KeyError, TypeError, ValueError, binascii.Error):
        return None


class Credentials:
    """Where access tokens come from; `token(reason)` returns one to use now."""

    can_renew = True

    async def token(self, reason: str) -> str:
        raise NotImplementedError


class FixedToken(Credentials):
    """One access token given by the bot: nothing can replace it once it is refused."""

    can_renew = False

    def __init__(self, token: str) -> None:
        self._token = token

    async def token(self, reason: str) -> str:
        if reason != "connect":
            raise AuthenticationFailed(
                "The access token was refused or has expired, and the client cannot get "
                "another: pass username and password, or a token_provider."
            )
        return self._token


class ProvidedToken(Credentials):
    """Tokens from the bot's own function (sync or async), asked before every use."""

    def __init__(self, provider: TokenProvider) -> None:
        self._provider = provider

    async def token(self, reason: str) -> str:
        if inspect.iscoroutinefunction(self._provider):
            value = await self._provider(reason)
        else:
            value = await asyncio.to_thread(self._provider, reason)
            if inspect.isawaitable(value):
                value = await value
        if not isinstance(value, str) or not value:
            raise AuthenticationFailed(f"token_provider returned {value!r}, not a token")
        return value


class PasswordLogin(Credentials):
    """Log in once; refresh the access token with the refresh token, retried with backoff; log
    in again only when the refresh token itself is refused (it expired: section 2.1)."""

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        timeout: float = 10.0,
        context: ssl.SSLContext | None = None,
        refresh_attempts: int = 4,
        retry_base: float = 0.5,
        post: Poster | None = None,
        random: Callable[[], float] = random.random,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._username, self._password = username, password
        self._post: Poster = post or (
            lambda url, body: post_json(url, body, timeout=timeout, context=context)
        )
        self.refresh_attempts = refresh_attempts
        self.retry_base = retry_base
        self._random = random
        self._access: str | None = None
        self._refresh: str | None = None
        self.logins = 0
        self.refreshes = 0

    async def token(self, reason: str) -> str:
        if self._access is None or self._refresh is None or reason == "revoked":
            await self._login()
        elif reason != "connect" or self._expires_within(self.RENEW_BEFORE_CONNECT_SECS):
            await self._renew()
        assert self._access is not None
        return self._access

    # An access token this close to its expiry is renewed before connecting with it: the
    # connection would be closed with 4401 before an in-band refresh could help.
    RENEW_BEFORE_CONNECT_SECS = 5.0

    def _expires_within(self, seconds: float) -> bool:
        expiry = token_expiry(self._access or "")
        return expiry is not None and expiry - time.time() < seconds

    async def _login(self) -> None:
        body = {"username": self._username, "password": self._password}
        try:
            pair = await asyncio.to_thread(self._post, self.base_url + LOGIN_PATH, body)
        except HttpError as error:
            if error.status in (400, 401):
                raise AuthenticationFailed(f"Login refused: {error}") from None
            raise
        self._access, self._refresh = str(pair["access"]), str(pair["refresh"])
        self.logins += 1

    async def _renew(self) -> None:
        """A new access token from the refresh token; transient failures are retried."""
        url, body = self.base_url + REFRESH_PATH, {"refresh": self._refresh}
        for attempt in range(self.refresh_attempts):
            try:
                answer = await asyncio.to_thread(self._post, url, body)
            except HttpError as error:
                if error.status == 401:  # expired or refused: only a new login helps
                    await self._login()
                    return
                transient = error.status >= 500 or error.status == 429
                if not transient or attempt + 1 == self.refresh_attempts:
                    raise
            except OSError:
                if attempt + 1 == self.refresh_attempts:
                    raise
            else:
                self._access = str(answer["access"])
                self.refreshes += 1
                return
            await asyncio.sleep(self._random() * self.retry_base * 2**attempt)
