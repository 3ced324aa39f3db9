"""The asyncio client: one connection at a time, kept up, authenticated and resumed."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import ssl as ssl_module
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.typing import Subprotocol

from .auth import Credentials, FixedToken, HttpError, PasswordLogin, ProvidedToken, TokenProvider
from .encoding import SUBPROTOCOLS, Codec, codec, codec_for_subprotocol
from .errors import (
    AuthenticationFailed,
    ClientClosed,
    ClientError,
    Deactivated,
    ServerError,
    TooManyConnections,
)
from .messages import (
    UPDATE_TYPES,
    Connected,
    Disconnected,
    ErrorNotice,
    Event,
    Member,
    Presence,
    SubscribeReply,
    parse_time,
)
from .tracker import Tracker, canonical_topic

logger = logging.getLogger("tradingrt_client")

DEACTIVATED = 4403  # stop: the user was deactivated (docs/PROTOCOL.md section 10)
TOKEN_EXPIRED = 4401  # reconnect only with a new access token
TOO_MANY_CONNECTIONS = 4409  # stop: retrying in a loop would not help
SESSIONS_REVOKED = 4410  # every token issued so far is refused: log in again
# A handshake refused this many times in a row, each time with a fresh token, is not a token
# problem (a wrong path, an Origin rule): the client stops instead of knocking forever.
MAX_HANDSHAKE_REFUSALS = 3
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # the server's largest message is far below (1 MiB cap)


def backoff_delay(
    attempt: int, *, base: float, cap: float, random: Callable[[], float] = random.random
) -> float:
    """Full jitter: a random wait below min(cap, base * 2**attempt) (section 10)."""
    return random() * min(cap, base * 2**attempt)


def refresh_delay(lifetime: float, *, lead: float, fraction: float) -> float:
    """When to refresh a token that has `lifetime` seconds left: `lead` seconds before it
    expires, or at `fraction` of its lifetime when that is later (short-lived tokens)."""
    return max(0.0, lifetime - lead, lifetime * fraction)


def endpoints(url: str) -> tuple[str, str]:
    """The REST base URL and the WebSocket endpoint, from either of them.

    `http://host:8000` gives `ws://host:8000/ws`; `wss://host/ws` gives `https://host`.
    """
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        base = url.rstrip("/")
        scheme = "wss" if parts.scheme == "https" else "ws"
        return base, urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws", "", ""))
    if parts.scheme in ("ws", "wss"):
        scheme = "https" if parts.scheme == "wss" else "http"
        return urlunsplit((scheme, parts.netloc, "", "", "")), url
    raise ValueError(f"url must start with http://, https://, ws:// or wss://, not {url!r}")


# A connection that ends with no close frame (1006, or none at all): the server died or the
# network failed, so the next attempt goes to the next site when there are several.
ABNORMAL_CLOSES = frozenset({None, 1006})


class _ConnectionLost(Exception):
    """The connection closed before a request was answered."""


@dataclass
class _Pending:
    """A request waiting for the reply that echoes its id."""

    future: asyncio.Future[dict[str, Any]] | None
    entries: list[dict[str, Any]] | None
    timer: asyncio.TimerHandle
    resubscription: bool = False


class _Buffer:
    """The events waiting for `updates()`: bounded, so a bot that stops reading stops the
    client reading the socket, and the server sheds it (4508) instead of memory growing."""

    def __init__(self, limit: int) -> None:
        self._items: deque[Event] = deque()
        self._limit = limit
        self._closed = False
        self._condition = asyncio.Condition()

    async def put(self, item: Event) -> None:
        async with self._condition:
            await self._condition.wait_for(lambda: len(self._items) < self._limit or self._closed)
            self._items.append(item)
            self._condition.notify_all()

    async def get(self) -> Event | None:
        """The next event; None once the buffer is closed and drained."""
        async with self._condition:
            await self._condition.wait_for(lambda: bool(self._items) or self._closed)
            if not self._items:
                return None
            item = self._items.popleft()
            self._condition.notify_all()
            return item

    async def close(self) -> None:
        async with self._condition:
            self._closed = True
            self._condition.notify_all()


class Client:
    """A bot's connection to the real-time stream.

    ::

        async with Client("http://127.0.0.1:8000", username="alice", password="...") as client:
            await client.subscribe(f"user:{client.session.user_id}:orders")
            async for event in client.updates():
                ...

    `url` is the site, or a list of the sites of one deployment (its server processes): the
    client stays on one while it works and moves to the next when it cannot connect or the
    connection dies without a close frame. Authenticate with `username` and `password` (login,
    then refresh tokens), a fixed `token`, or `token_provider(reason) -> token` (sync or async).
    The client reconnects with full-jitter backoff, resumes every topic with `since` and
    `snapshot` after each reconnect, repairs gaps, drops duplicates, and refreshes the token
    in-band before it expires. It stops for good on a 4403 close (the user was deactivated) or
    when no token can be had.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
        encoding: str = "json",
        ssl: ssl_module.SSLContext | None = None,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        backoff_reset: float = 5.0,
        refresh_lead: float = 30.0,
        refresh_fraction: float = 0.8,
        request_timeout: float = 10.0,
        open_timeout: float = 10.0,
        max_queue: int = 10_000,
        on_message: Callable[[dict[str, Any]], None] | None = None,
        random: Callable[[], float] = random.random,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("url: give the site, or a list of the sites of one deployment")
        self.sites = [endpoints(site) for site in urls]
        self._site = 0
        # Every message the server sends, decoded, before the client acts on it: for logging
        # and debugging (and tests that check the wire). Called in the reading task: keep it
        # quick; what it raises stops the client, as a bug in the client would.
        self.on_message = on_message
        self.credentials = self._credentials(
            username,
            password,
            token,
            token_provider,
            base_url=self.http_url,
            ssl=ssl,
            timeout=request_timeout,
        )
        self._codec: Codec = codec(encoding)
        self._ssl = ssl
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.backoff_reset = backoff_reset
        self.refresh_lead, self.refresh_fraction = refresh_lead, refresh_fraction
        self.request_timeout, self.open_timeout = request_timeout, open_timeout
        self._random = random
        self._max_queue = max_queue
        self.tracker = Tracker()
        self.session: Connected | None = None
        self._buffer: _Buffer | None = None
        self._task: asyncio.Task[None] | None = None
        self._ws: ClientConnection | None = None
        self._wire: Codec = self._codec
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count(1)
        self._waiting_connected: list[asyncio.Future[Connected]] = []
        self._waiting_resubscribed: list[asyncio.Future[SubscribeReply]] = []
        self._refresher: asyncio.Task[None] | None = None
        self._clock_offset = timedelta(0)  # the server's clock minus ours
        self._closing = False
        self._fatal: BaseException | None = None
        self._attempt = 0
        # When the current connection's resubscription was answered (monotonic seconds).
        self._settled_at: float | None = None
        self._connections = 0
        self._background: set[asyncio.Task[Any]] = set()

    @staticmethod
    def _credentials(
        username: str | None,
        password: str | None,
        token: str | None,
        token_provider: TokenProvider | None,
        *,
        base_url: str,
        ssl: ssl_module.SSLContext | None,
        timeout: float,
    ) -> Credentials:
        given = [username is not None, token is not None, token_provider is not None]
        if sum(given) != 1 or (username is None) != (password is None):
            raise ValueError("pass username and password, or token, or token_provider")
        if token is not None:
            return FixedToken(token)
        if token_provider is not None:
            return ProvidedToken(token_provider)
        assert username is not None and password is not None
        return PasswordLogin(base_url, username, password, context=ssl, timeout=timeout)

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def http_url(self) -> str:
        """The REST base URL of the site in use (or to be tried next)."""
        return self.sites[self._site][0]

    @property
    def ws_url(self) -> str:
        """The WebSocket endpoint of the site in use (or to be tried next)."""
        return self.sites[self._site][1]

    def _next_site(self) -> None:
        """Move to the next site (the login follows, so a dead site's REST API is not asked)."""
        if len(self.sites) > 1:
            self._site = (self._site + 1) % len(self.sites)
            if isinstance(self.credentials, PasswordLogin):
                self.credentials.base_url = self.http_url

    @property
    def connected(self) -> bool:
        """Authenticated on an open connection right now."""
        return self._ws is not None and self.session is not None

    @property
    def encoding(self) -> str:
        """The encoding of the current (or last) connection: what the server selected."""
        return self._wire.name

    async def connect(self) -> Connected:
        """Start the client (if it is not running) and wait until it is authenticated.

        Raises AuthenticationFailed when no token is accepted, Deactivated on a 4403.
        """
        self._start()
        if self.connected:
            assert self.session is not None
            return self.session
        return await self._wait(self._waiting_connected)

    async def close(self) -> None:
        """Close the connection and stop; `updates()` ends once its events are read."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        elif task is None and self._buffer is not None:
            await self._buffer.close()

    def _start(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._closing:
            raise ClientClosed("the client was closed")
        if self._buffer is None:
            self._buffer = _Buffer(self._max_queue)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="tradingrt")

    async def _wait(self, waiters: list[asyncio.Future[Any]]) -> Any:
        future = asyncio.get_running_loop().create_future()
        waiters.append(future)
        try:
            return await future
        finally:
            with contextlib.suppress(ValueError):
                waiters.remove(future)

    # --- what a bot calls ----------------------------------------------------------------------

    async def updates(self) -> AsyncIterator[Event]:
        """Every event, in order: updates, snapshots, presence, and what happened to the
        connection and the topics. Ends after `close()`; raises the reason after a fatal stop
        (AuthenticationFailed, Deactivated). Read it from one task."""
        if self._buffer is None:
            self._start()
        assert self._buffer is not None
        while True:
            event = await self._buffer.get()
            if event is None:
                if self._fatal is not None:
                    raise self._fatal
                return
            yield event

    async def subscribe(
        self,
        *topics: str,
        snapshot: bool = True,
        filter: dict[str, Any] | None = None,
        throttle_ms: int | None = None,
        presence: bool = False,
    ) -> SubscribeReply:
        """Subscribe (or change a held topic's options); resolves with the server's reply.

        With `snapshot` the topic's state arrives first as Snapshot events. The topics are
        resumed after every reconnect. While disconnected, resolves with the reply of the next
        connection's resubscription.
        """
        states = [
            self.tracker.want(
                topic, snapshot=snapshot, filter=filter, throttle_ms=throttle_ms, presence=presence
            )
            for topic in topics
        ]
        self._start()
        while True:
            if not self.connected:
                reply: SubscribeReply = await self._wait(self._waiting_resubscribed)
                return reply
            for state in states:
                state.resuming = True
            entries = [state.entry() for state in states]
            payload = {"action": "subscribe", "topics": entries}
            try:
                message = await self._request("SUBSCRIPTION", payload, entries=entries)
            except _ConnectionLost:
                continue  # resubscribed by the next connection: wait for its reply
            except ServerError:
                for state in states:
                    if not state.held and state.position is None:
                        self.tracker.forget(state.topic)
                raise
            return SubscribeReply.from_wire(message["payload"])

    async def unsubscribe(self, *topics: str) -> list[str]:
        """Stop receiving the topics; the server's list of the topics it no longer holds."""
        for topic in topics:
            self.tracker.forget(topic)
        if not self.connected:
            return [canonical_topic(topic) for topic in topics]
        payload = {"action": "unsubscribe", "topics": [canonical_topic(t) for t in topics]}
        reply = await self.request("SUBSCRIPTION", payload)
        return list(reply["payload"].get("topics", []))

    async def presence(self, topic: str, *, page_size: int | None = None) -> list[Member]:
        """Who is subscribed to `topic` now, on every server process, following the pages."""
        topic = canonical_topic(topic)
        members: list[Member] = []
        after: Any = None
        while True:
            payload: dict[str, Any] = {"action": "presence", "topics": [topic]}
            if page_size is not None:
                payload["limit"] = page_size
            if after is not None:
                payload["after"] = {topic: after}
            reply = (await self.request("SUBSCRIPTION", payload))["payload"]
            for rejection in reply.get("rejected", []):
                raise ServerError(str(rejection.get("reason")), f"presence of {topic} refused")
            members.extend(
                Member(m["userId"], m["username"], m["connections"], m["since"])
                for m in reply.get("presence", {}).get(topic, [])
            )
            after = (reply.get("next") or {}).get(topic)
            if after is None:
                return members

    async def request(self, type: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send any client message and return the reply (the whole message); ServerError when
        the server answers with ERROR. Waits for a connection first."""
        await self.connect()
        try:
            return await self._request(type, payload)
        except _ConnectionLost:
            raise ConnectionError("the connection closed before the reply came") from None

    @property
    def topics(self) -> list[str]:
        """The topics the client wants, sorted (held, or to be resumed on the next connection)."""
        return sorted(self.tracker.topics)

    # --- the connection loop ------------------------------------------------------------------

    async def _run(self) -> None:
        """Connect, serve the connection, and reconnect with backoff, until closed or stopped."""
        reason, refusals = "connect", 0
        try:
            while True:
                code: int | None = None
                text = ""
                wait = 0.0  # at least this long before the next attempt (a login's Retry-After)
                try:
                    token = await self.credentials.token(reason)
                except AuthenticationFailed:
                    raise
                except Exception as error:  # unreachable, or the bot's provider failed: retry
                    text = f"could not get an access token: {error!r}"
                    if isinstance(error, OSError):  # the site's REST API is unreachable
                        self._next_site()
                    if isinstance(error, HttpError) and error.retry_after is not None:
                        wait = error.retry_after
                else:
                    reason = "connect"
                    try:
                        ws = await self._open(token)
                    except InvalidStatus as error:
                        status = error.response.status_code
                        text = f"handshake refused: HTTP {status}"
                        if status in (401, 403) and not self.credentials.can_renew:
                            raise AuthenticationFailed(
                                f"The server refused the token at the handshake ({status}), and "
                                "the client cannot get another: pass username and password, or "
                                "a token_provider."
                            ) from None
                        if status in (401, 403):  # the token, most likely: renew it
                            refusals += 1
                            if refusals >= MAX_HANDSHAKE_REFUSALS:
                                raise AuthenticationFailed(
                                    f"The server refused the WebSocket handshake ({status}) "
                                    f"{refusals} times; check the token, the URL ({self.ws_url}) "
                                    "and the server's Origin rule."
                                ) from None
                            reason = "renew"
                    except InvalidURI:
                        raise
                    except (OSError, TimeoutError, InvalidHandshake) as error:
                        text = f"could not connect: {error}"
                        self._next_site()
                    else:
                        self._settled_at = None
                        code, text, authenticated = await self._serve(ws)
                        if authenticated:
                            refusals = 0
                        settled = self._settled_at
                        if settled is not None and _monotonic() - settled >= self.backoff_reset:
                            # It lasted: back to the shortest delay. Not sooner, or a server that
                            # closes every connection right after its login would be retried at
                            # the shortest delay for ever (section 10).
                            self._attempt = 0
                        if code == DEACTIVATED:
                            raise Deactivated(f"closed with 4403: {text}")
                        if code == TOO_MANY_CONNECTIONS:
                            raise TooManyConnections(f"closed with 4409: {text}")
                        if code == TOKEN_EXPIRED:
                            reason = "renew"
                        elif code == SESSIONS_REVOKED:
                            reason = "revoked"
                        elif code in ABNORMAL_CLOSES:
                            self._next_site()
                delay = wait + backoff_delay(
                    self._attempt, base=self.backoff_base, cap=self.backoff_cap, random=self._random
                )
                self._attempt += 1
                logger.info("disconnected (%s %s); reconnecting in %.2f s", code, text, delay)
                await self._emit(Disconnected(code, text, will_reconnect=True, delay=delay))
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            if not self._closing:
                raise
        except BaseException as error:  # a fatal stop, or a bug: both end the client loudly
            self._fatal = error
            logger.warning("stopped: %s", error)
            code = None
            if isinstance(error, Deactivated):
                code = DEACTIVATED
            elif isinstance(error, TooManyConnections):
                code = TOO_MANY_CONNECTIONS
            with contextlib.suppress(BaseException):
                await self._emit(Disconnected(code, str(error), will_reconnect=False, delay=0.0))
        finally:
            await self._stopped()

    async def _open(self, token: str) -> ClientConnection:
        """The WebSocket handshake: the token in a header (bots send no Origin: section 2.4),
        the encoding offered as a subprotocol (section 3.3)."""
        options: dict[str, Any] = {}
        if self._ssl is not None:
            options["ssl"] = self._ssl
        return await websockets.connect(
            self.ws_url,
            additional_headers={"Authorization": f"Bearer {token}"},
            subprotocols=[Subprotocol(SUBPROTOCOLS[self._codec.name])],
            open_timeout=self.open_timeout,
            max_size=MAX_MESSAGE_BYTES,
            **options,
        )

    async def _stopped(self) -> None:
        failure = self._fatal or ClientClosed("the client was closed")
        waiters: list[asyncio.Future[Any]] = [
            *self._waiting_connected,
            *self._waiting_resubscribed,
        ]
        for future in waiters:
            if not future.done():
                future.set_exception(failure)
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._buffer is not None:
            await self._buffer.close()

    async def _serve(self, ws: ClientConnection) -> tuple[int | None, str, bool]:
        """Read one connection until it closes: its close code and reason, and whether it
        authenticated."""
        self._ws = ws
        self._wire = codec_for_subprotocol(ws.subprotocol, self._codec)
        authenticated = False
        try:
            async for frame in ws:
                try:
                    message = self._wire.decode(frame)
                except ValueError as error:
                    await self._emit(ErrorNotice("invalid_message", f"unreadable frame: {error}"))
                    continue
                if self.on_message is not None:
                    self.on_message(message)
                if message.get("type") == "AUTHENTICATION" and "id" not in message:
                    authenticated = True
                await self._handle(message)
        except ConnectionClosed:
            pass
        finally:
            self._ws = None
            self.session = None
            self.tracker.connection_lost()
            if self._refresher is not None:
                self._refresher.cancel()
                self._refresher = None
            for pending in self._pending.values():
                pending.timer.cancel()
                if pending.future is not None and not pending.future.done():
                    pending.future.set_exception(_ConnectionLost())
            self._pending.clear()
            if not ws.close_code:  # cancelled (close()): close it ourselves
                with contextlib.suppress(Exception):
                    await ws.close()
        return ws.close_code, ws.close_reason or "", authenticated

    # --- sending --------------------------------------------------------------------------------

    async def _send(self, message: dict[str, Any]) -> None:
        ws = self._ws
        if ws is None:
            raise _ConnectionLost()
        message.setdefault("timestamp", _now())
        try:
            await ws.send(self._wire.dumps(message))
        except ConnectionClosed:
            raise _ConnectionLost() from None

    async def _request(
        self,
        type: str,
        payload: dict[str, Any],
        *,
        entries: list[dict[str, Any]] | None = None,
        wait: bool = True,
        resubscription: bool = False,
    ) -> dict[str, Any]:
        """Send a message with a fresh id. With `wait`, return its reply (ServerError for an
        ERROR, _ConnectionLost if the connection closes first); a request unanswered for
        `request_timeout` drops the connection, which is then renewed."""
        if self._ws is None:
            raise _ConnectionLost()
        loop = asyncio.get_running_loop()
        id = f"c{next(self._ids)}"
        future = loop.create_future() if wait else None
        timer = loop.call_later(self.request_timeout, self._timed_out, id)
        self._pending[id] = _Pending(future, entries, timer, resubscription)
        try:
            await self._send({"type": type, "id": id, "payload": payload})
        except _ConnectionLost:
            self._pending.pop(id, None)
            timer.cancel()
            raise
        if future is None:
            return {}
        return await future

    def _timed_out(self, id: str) -> None:
        pending = self._pending.pop(id, None)
        if pending is None:
            return
        logger.warning("request %s unanswered: dropping the connection", id)
        if pending.future is not None and not pending.future.done():
            pending.future.set_exception(TimeoutError(f"no reply within {self.request_timeout} s"))
        if pending.entries:
            self.tracker.resume_failed([entry["topic"] for entry in pending.entries])
        self._drop("request timed out")

    def _drop(self, reason: str) -> None:
        """Close the connection from a callback; the loop then reconnects and resumes."""
        ws = self._ws
        if ws is not None:
            self._spawn(ws.close(1000, reason))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _resume(self, topics: list[str]) -> None:
        """Subscribe again with `since` (and the snapshot if asked): repairs a gap or an epoch
        change; the reply is taken by the reader like any other."""
        entries = self.tracker.resume(topics)
        if not entries:
            return
        logger.info("resuming %s", ", ".join(entry["topic"] for entry in entries))
        payload = {"action": "subscribe", "topics": entries}
        with contextlib.suppress(_ConnectionLost):
            await self._request("SUBSCRIPTION", payload, entries=entries, wait=False)

    # --- receiving --------------------------------------------------------------------------------

    async def _emit(self, event: Event) -> None:
        if self._buffer is not None:
            await self._buffer.put(event)

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        id = message.get("id")
        if id is not None and id in self._pending:
            await self._reply(self._pending.pop(id), message)
        elif kind in UPDATE_TYPES:
            update, behind = self.tracker.on_update(message)
            if update is not None:
                await self._emit(update)
            if behind is not None:
                await self._resume([behind])
        elif kind == "SNAPSHOT":
            snapshot = self.tracker.on_snapshot(message)
            if snapshot is not None:
                await self._emit(snapshot)
        elif kind == "HEARTBEAT":
            positions = (message.get("payload") or {}).get("positions") or {}
            behind_topics = self.tracker.on_heartbeat(positions)
            if behind_topics:
                await self._resume(behind_topics)
        elif kind == "PRESENCE":
            payload = message.get("payload") or {}
            await self._emit(
                Presence(
                    topic=str(message.get("topic")),
                    event=str(payload.get("event")),
                    user_id=int(payload.get("userId") or 0),
                    username=str(payload.get("username")),
                    timestamp=str(message.get("timestamp", "")),
                )
            )
        elif kind == "AUTHENTICATION" and id is None:
            await self._authenticated(message)
        elif kind == "SUBSCRIPTION":
            payload = message.get("payload") or {}
            if payload.get("action") == "revoked":
                topics = list(payload.get("topics", []))
                for event in self.tracker.revoked(topics, str(payload.get("reason"))):
                    await self._emit(event)
        elif kind == "ERROR":
            payload = message.get("payload") or {}
            await self._emit(ErrorNotice(str(payload.get("code")), str(payload.get("message"))))
        # Other types are new ones this client does not know: ignored (section 15).

    async def _reply(self, pending: _Pending, message: dict[str, Any]) -> None:
        pending.timer.cancel()
        payload = message.get("payload") or {}
        if message.get("type") == "ERROR":
            error = ServerError(str(payload.get("code")), str(payload.get("message")), message)
            topics = [entry["topic"] for entry in pending.entries or []]
            self.tracker.resume_failed(topics)
            if pending.future is not None and not pending.future.done():
                pending.future.set_exception(error)
                return
            await self._emit(ErrorNotice(error.code, error.message))
            if pending.resubscription:  # nothing is held: start over on a new connection
                self._drop(f"resubscription refused: {error.code}")
            elif topics:  # a resume refused (rate_limited, say): try again in a while
                asyncio.get_running_loop().call_later(self._retry_delay(), self._retry, topics)
            return
        if message.get("type") == "SUBSCRIPTION" and payload.get("action") == "subscribed":
            reply = SubscribeReply.from_wire(payload)
            for event in self.tracker.subscribed(reply, pending.entries or []):
                await self._emit(event)
            if pending.resubscription:
                self._settled_at = _monotonic()
                for future in self._waiting_resubscribed:
                    if not future.done():
                        future.set_result(reply)
            retry = [r.topic for r in reply.rejected if r.topic in self.tracker.topics]
            if retry:  # `unavailable`: the server's Redis is down; try again in a while
                asyncio.get_running_loop().call_later(self._retry_delay(), self._retry, retry)
        elif message.get("type") == "AUTHENTICATION" and self.session is not None:
            self.session = replace(self.session, expires_at=parse_time(payload["expiresAt"]))
        if pending.future is not None and not pending.future.done():
            pending.future.set_result(message)

    def _retry_delay(self) -> float:
        return 1.0 + backoff_delay(1, base=self.backoff_base, cap=self.backoff_cap)

    def _retry(self, topics: list[str]) -> None:
        if self.connected:
            self._spawn(self._resume(topics))

    async def _authenticated(self, message: dict[str, Any]) -> None:
        """The connection's first message: the session begins. Resume every topic."""
        payload = message["payload"]
        self._observe_clock(message)
        self._connections += 1
        self.session = Connected(
            user_id=payload["userId"],
            username=payload["username"],
            connection_id=payload["connectionId"],
            expires_at=parse_time(payload["expiresAt"]),
            encoding=self._wire.name,
            reconnected=self._connections > 1,
        )
        await self._emit(self.session)
        for future in self._waiting_connected:
            if not future.done():
                future.set_result(self.session)
        if self.credentials.can_renew:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())
        entries = self.tracker.resubscription()
        if not entries:
            self._settled_at = _monotonic()
            for waiter in self._waiting_resubscribed:
                if not waiter.done():
                    waiter.set_result(SubscribeReply([], []))
            return
        payload = {"action": "subscribe", "topics": entries}
        with contextlib.suppress(_ConnectionLost):
            await self._request(
                "SUBSCRIPTION", payload, entries=entries, wait=False, resubscription=True
            )

    # --- in-band token refresh (section 2.5) ----------------------------------------------------

    def _observe_clock(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            self._clock_offset = parse_time(message["timestamp"]) - datetime.now(UTC)

    def _seconds_left(self) -> float:
        """How long the session's token has left, by the server's clock."""
        if self.session is None:
            return 0.0
        server_now = datetime.now(UTC) + self._clock_offset
        return (self.session.expires_at - server_now).total_seconds()

    async def _refresh_loop(self) -> None:
        """Send a fresh token before each expiry; a failed refresh is retried halfway to the
        expiry while more than a second remains (then the server closes with 4401)."""
        delay = refresh_delay(
            self._seconds_left(), lead=self.refresh_lead, fraction=self.refresh_fraction
        )
        while True:
            await asyncio.sleep(delay)
            if self.session is None:
                return
            expires = self.session.expires_at
            try:
                token = await self.credentials.token("refresh")
                reply = await self._request("AUTHENTICATION", {"token": token})
                self._observe_clock(reply)
                if self.session is not None and self.session.expires_at <= expires:
                    raise ClientError("the new access token expires no later than the old one")
            except _ConnectionLost:
                return
            except Exception as error:  # refused, unreachable, or the bot's provider failed
                logger.warning("in-band token refresh failed: %r", error)
                await self._emit(ErrorNotice("refresh", f"token refresh failed: {error}"))
                if isinstance(error, AuthenticationFailed) or self._seconds_left() <= 1.0:
                    return
                delay = self._seconds_left() / 2
                continue
            delay = refresh_delay(
                self._seconds_left(), lead=self.refresh_lead, fraction=self.refresh_fraction
            )


def _monotonic() -> float:
    return asyncio.get_running_loop().time()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
