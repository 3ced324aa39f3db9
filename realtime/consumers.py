"""The WebSocket consumer (the seed's Client): authenticates, parses, dispatches, and sends.

One instance per connection. Protocol handlers (`websocket_connect`, `websocket_receive`,
`websocket_disconnect`) are kept apart from the message handlers (`handle_subscription`, ...).
Outbound text, replies and updates alike, goes through one bounded per-connection queue, so a
client that cannot keep up is closed with 4508 instead of growing the server's memory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from channels.consumer import AsyncConsumer
from channels.db import database_sync_to_async
from django.utils import timezone

from realtime.auth import TokenRejected, authenticate_token_async
from realtime.conf import realtime_settings
from realtime.hub import Hub, get_hub
from realtime.protocol import (
    ClientMessage,
    CloseCode,
    ErrorCode,
    MessageType,
    ProtocolError,
    encode,
    error,
    parse,
    peek_id,
)
from realtime.records import RecordWriter
from realtime.topics import RejectReason, Topic, TopicError, authorize_topics, parse_topic
from realtime.transport import direct_text_writer, send_now, unsent_bytes_probe
from tradingrt.formats import format_timestamp, now_timestamp

logger = logging.getLogger(__name__)

SUBSCRIPTION_ACTIONS = {"subscribe": "subscribed", "unsubscribe": "unsubscribed", "list": "list"}

authorize_topics_async = database_sync_to_async(authorize_topics)


class TokenBucket:
    """Inbound rate limit: `rate` messages a second on average, bursts of up to `burst`."""

    clock = staticmethod(time.monotonic)

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.updated = self.clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class RealtimeConsumer(AsyncConsumer):
    """One client connection on `/ws`."""

    wall_clock = staticmethod(time.time)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # Unlike Channels' consumers, a connection gets no channel-layer channel of its own:
        # the process's hub receives for all of them (realtime.hub).
        self.scope = scope
        self.base_send = send
        self.hub: Hub | None = None
        self.connection_id = uuid.uuid4().hex
        self.user: Any = None
        self.user_id: int | None = None
        self.topics: set[str] = set()
        self.closing = False
        self._closed_by_server: int | None = None
        self._outbox: collections.deque[str] = collections.deque()
        self._draining = False
        self._drain_task: asyncio.Task[None] | None = None
        self._unsent_bytes = unsent_bytes_probe(send)
        self._write_direct = direct_text_writer(send, self.connection_id)
        self._max_queued = int(realtime_settings.SEND_BUFFER_MAX_MESSAGES)
        self._max_unsent_bytes = int(realtime_settings.SEND_BUFFER_MAX_BYTES)
        self._auth_timer: asyncio.TimerHandle | None = None
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._records: RecordWriter | None = None
        self._bucket = TokenBucket(
            float(realtime_settings.RATE_LIMIT_PER_SEC), int(realtime_settings.RATE_LIMIT_BURST)
        )
        self._strikes = 0
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    await self.websocket_receive(message)
                elif kind == "websocket.connect":
                    await self.websocket_connect(message)
                elif kind == "websocket.disconnect":
                    break
        finally:
            await self.websocket_disconnect()

    # --- protocol handlers --------------------------------------------------------------

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        self.hub = await get_hub()
        await self.base_send({"type": "websocket.accept"})
        user = self.scope.get("user")
        authenticated = user is not None and user.is_authenticated
        records = self._records = self.hub.records
        assert records is not None  # a started hub has its writer
        self._record_open(user.pk if user is not None and authenticated else None)
        # Counted by /ws/status before the client hears anything (this connection's record only).
        await records.stored(self.connection_id)
        if authenticated:
            self._set_user(user, self.scope["token_expires_at"])
            self.push(self._authenticated_message(reply_to=None))
        else:
            loop = asyncio.get_running_loop()
            self._auth_timer = loop.call_later(
                float(realtime_settings.AUTH_TIMEOUT_SECS), self._auth_timed_out
            )
        # Only now does the hub send it anything (HEARTBEATs, control): AUTHENTICATION comes first.
        self.hub.register(self)

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        if self.closing:
            return
        if not self._bucket.take():
            self._strikes += 1
            if self._strikes > int(realtime_settings.RATE_LIMIT_MAX_STRIKES):
                self.close_with(CloseCode.RATE_LIMITED, "rate limit exceeded")
                return
            frame = message.get("text")
            limit = int(realtime_settings.MAX_MESSAGE_BYTES)
            reply_to = peek_id(frame) if frame is not None and len(frame) <= limit else None
            self.push(
                error(
                    ErrorCode.RATE_LIMITED,
                    f"Too many messages: at most {realtime_settings.RATE_LIMIT_PER_SEC:g} a "
                    "second on average. This message was dropped; slow down or be disconnected.",
                    reply_to=reply_to,
                )
            )
            return
        self._strikes = 0
        text = message.get("text")
        if text is None:
            self.push(
                error(
                    ErrorCode.INVALID_MESSAGE,
                    "Binary frames are not accepted; send each message as a JSON text frame.",
                )
            )
            return
        limit = int(realtime_settings.MAX_MESSAGE_BYTES)
        if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):
            self.push(
                error(
                    ErrorCode.MESSAGE_TOO_LARGE,
                    f"The message is larger than the limit of {limit} bytes.",
                )
            )
            return
        parsed: ClientMessage | None = None
        try:
            parsed = parse(text, authenticated=self.user is not None)
            await self.handle(parsed)
        except ProtocolError as exc:
            self.push(exc.encode())
        except Exception:
            logger.exception("Error handling a message on connection %s", self.connection_id)
            self.push(
                error(
                    ErrorCode.INTERNAL_ERROR,
                    "The server failed to handle this message; it was not applied.",
                    reply_to=parsed.id if parsed is not None else None,
                )
            )

    async def websocket_disconnect(self) -> None:
        self.closing = True
        self._cancel_timers()
        if self._drain_task is not None:
            self._drain_task.cancel()
        await self._leave_hub()
        if self._records is not None:
            self._records.closed(connection_id=self.connection_id)
            self._records = None

    async def _leave_hub(self) -> None:
        if self.hub is None:
            return
        hub, self.hub = self.hub, None
        emptied = hub.unregister(self, self.topics)
        try:
            await hub.release_topics(emptied)
        except Exception:
            logger.exception("Could not leave the groups of connection %s", self.connection_id)

    # --- message handlers ---------------------------------------------------------------

    async def handle(self, message: ClientMessage) -> None:
        if message.type is MessageType.HEARTBEAT:
            self.push(
                encode(MessageType.HEARTBEAT, {"serverTime": now_timestamp()}, reply_to=message.id)
            )
        elif message.type is MessageType.AUTHENTICATION:
            await self.handle_authentication(message)
        elif self.user is None:  # whatever its type: the contract's answer is the same
            raise ProtocolError(
                ErrorCode.UNAUTHENTICATED,
                'Authenticate first: send an AUTHENTICATION message with {"token": <access JWT>}.',
                reply_to=message.id,
            )
        elif message.type is MessageType.SUBSCRIPTION:
            await self.handle_subscription(message)

    async def handle_authentication(self, message: ClientMessage) -> None:
        token = message.payload.get("token")
        if not isinstance(token, str) or not token:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                'An AUTHENTICATION message needs payload {"token": <access JWT>}.',
                reply_to=message.id,
            )
        try:
            authenticated = await authenticate_token_async(token)
        except TokenRejected as exc:
            raise ProtocolError(
                ErrorCode.UNAUTHENTICATED, f"The token was refused: {exc}.", reply_to=message.id
            ) from None
        if self.user is not None and authenticated.user.pk != self.user_id:
            raise ProtocolError(
                ErrorCode.UNAUTHENTICATED,
                "The token belongs to another user; open a new connection to switch users.",
                reply_to=message.id,
            )
        first = self.user is None
        self._set_user(authenticated.user, authenticated.expires_at)
        if first and self._records is not None:
            self._records.authenticated(
                connection_id=self.connection_id, user_id=authenticated.user.pk, at=timezone.now()
            )
            await self._records.stored(self.connection_id)
        self.push(self._authenticated_message(reply_to=message.id))

    async def handle_subscription(self, message: ClientMessage) -> None:
        action = message.payload.get("action")
        if action not in SUBSCRIPTION_ACTIONS:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                "A SUBSCRIPTION needs payload.action 'subscribe', 'unsubscribe' or 'list'.",
                reply_to=message.id,
            )
        if action == "list":
            self.push(self._subscription_reply("list", sorted(self.topics), None, message.id))
            return
        requested = message.payload.get("topics")
        if not isinstance(requested, list):
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                f"A SUBSCRIPTION {action} needs payload.topics, a list of topic names.",
                reply_to=message.id,
            )
        if action == "subscribe":
            accepted, rejected = await self.subscribe(requested)
        else:
            accepted, rejected = await self.unsubscribe(requested)
        self.push(
            self._subscription_reply(SUBSCRIPTION_ACTIONS[action], accepted, rejected, message.id)
        )

    # --- subscriptions --------------------------------------------------------------------

    async def subscribe(self, requested: list[Any]) -> tuple[list[str], list[dict[str, Any]]]:
        accepted: list[str] = []
        rejected: list[dict[str, Any]] = []
        candidates: dict[str, Topic] = {}
        for raw in requested:
            try:
                topic = parse_topic(raw)
            except TopicError as exc:
                rejected.append({"topic": raw, "reason": exc.reason.value})
                continue
            if topic.name in self.topics:
                if topic.name not in accepted:
                    accepted.append(topic.name)  # already held: harmless, delivered once
            else:
                candidates.setdefault(topic.name, topic)
        if candidates:
            decisions = await authorize_topics_async(self.user, list(candidates.values()))
            room = int(realtime_settings.MAX_TOPICS_PER_CONNECTION) - len(self.topics)
            new: list[str] = []
            for name in candidates:
                if decisions[name] is not None:
                    rejected.append({"topic": name, "reason": decisions[name].value})
                elif room <= 0:
                    rejected.append({"topic": name, "reason": RejectReason.LIMIT_EXCEEDED.value})
                else:
                    room -= 1
                    new.append(name)
            if new and self.hub is not None:  # None: closed while authorising
                self.topics.update(new)
                await self.hub.subscribe(self, new)
                if self._records is not None:
                    self._records.subscribed(connection_id=self.connection_id, topics=new)
                    await self._records.stored(self.connection_id)
                accepted.extend(new)
        return accepted, rejected

    async def unsubscribe(self, requested: list[Any]) -> tuple[list[str], list[dict[str, Any]]]:
        accepted: list[str] = []
        rejected: list[dict[str, Any]] = []
        removed: list[str] = []
        for raw in requested:
            try:
                name = parse_topic(raw).name
            except TopicError as exc:
                rejected.append({"topic": raw, "reason": exc.reason.value})
                continue
            if name not in accepted:
                accepted.append(name)
            if name in self.topics:
                self.topics.discard(name)
                removed.append(name)
        if removed and self.hub is not None:
            await self.hub.unsubscribe(self, removed)
            if self._records is not None:
                self._records.unsubscribed(connection_id=self.connection_id, topics=removed)
                await self._records.stored(self.connection_id)
        return accepted, rejected

    # --- outbound -----------------------------------------------------------------------

    def push(self, text: str) -> None:
        """Queue one message for this client; close with 4508 if it is not keeping up."""
        if self.closing:
            return
        unsent = self._unsent_bytes() if self._unsent_bytes is not None else None
        if len(self._outbox) >= self._max_queued or (
            unsent is not None and unsent > self._max_unsent_bytes
        ):
            logger.warning(
                "Connection %s (user %s) is not keeping up; closing it",
                self.connection_id,
                self.user_id,
            )
            self._outbox.clear()
            self.close_with(CloseCode.SLOW_CONSUMER, "send buffer overflow")
            return
        if self._draining:
            self._outbox.append(text)
            return
        # Nothing is queued ahead of this text: send it now, without a task per message. Under
        # Daphne, an open connection's frame goes straight to its socket (realtime.transport).
        # Otherwise a send that completes at once (Daphne's always does) costs no task at all;
        # one that blocks (backpressure) is carried on by a drain task, and what follows queues.
        if self._write_direct is not None:
            try:
                if self._write_direct(text, unsent):
                    return
            except Exception:  # Twisted or autobahn changed under us: keep their path
                logger.exception("Direct write failed on %s; using Daphne's", self.connection_id)
                self._write_direct = None
        try:
            carried_on = send_now(self.base_send, {"type": "websocket.send", "text": text})
        except Exception:
            logger.debug("Send failed on %s; the connection is closing", self.connection_id)
            return
        if carried_on is not None:
            self._draining = True
            self._drain_task = asyncio.get_running_loop().create_task(self._drain(carried_on))

    async def _drain(self, in_flight: Any = None) -> None:
        outbox = self._outbox
        send = self.base_send
        try:
            if in_flight is not None:
                await in_flight
            while outbox:
                await send({"type": "websocket.send", "text": outbox.popleft()})
        except Exception:
            logger.debug("Send failed on %s; the connection is closing", self.connection_id)
        finally:
            self._draining = False
            self._drain_task = None

    def close_with(self, code: int, reason: str = "") -> None:
        """Close the connection from the server side with `code` (sent after queued text)."""
        if self.closing:
            return
        self.closing = True
        self._closed_by_server = code
        self._cancel_timers()
        self._close_task = asyncio.get_running_loop().create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        # Stop deliveries now; the server's websocket.disconnect may come much later.
        await self._leave_hub()
        if self._drain_task is not None and code != CloseCode.SLOW_CONSUMER:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._drain_task), timeout=1.0)
        message: dict[str, Any] = {"type": "websocket.close", "code": int(code)}
        if reason:
            message["reason"] = reason
        try:
            await self.base_send(message)
        except Exception:
            logger.debug("Close failed on %s; already gone", self.connection_id)

    # --- authentication state -----------------------------------------------------------

    def _set_user(self, user: Any, expires_at: float) -> None:
        self.user = user
        self.user_id = user.pk
        self.expires_at = expires_at
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        delay = max(0.0, expires_at - self.wall_clock())
        self._expiry_timer = asyncio.get_running_loop().call_later(delay, self._token_expired)

    def _authenticated_message(self, *, reply_to: Any) -> str:
        return encode(
            MessageType.AUTHENTICATION,
            {
                "status": "authenticated",
                "userId": self.user_id,
                "username": self.user.get_username(),
                "connectionId": self.connection_id,
                "expiresAt": format_timestamp(datetime.fromtimestamp(self.expires_at, UTC)),
            },
            reply_to=reply_to,
        )

    def _subscription_reply(
        self,
        action: str,
        topics: list[str],
        rejected: list[dict[str, Any]] | None,
        reply_to: Any,
    ) -> str:
        payload: dict[str, Any] = {"action": action, "topics": topics}
        if rejected is not None:
            payload["rejected"] = rejected
        return encode(MessageType.SUBSCRIPTION, payload, reply_to=reply_to)

    def _auth_timed_out(self) -> None:
        self._auth_timer = None
        if self.user is None:
            self.push(
                error(
                    ErrorCode.UNAUTHENTICATED,
                    f"No AUTHENTICATION within {realtime_settings.AUTH_TIMEOUT_SECS:g} seconds.",
                )
            )
            self.close_with(CloseCode.UNAUTHENTICATED, "authentication timeout")

    def _token_expired(self) -> None:
        self._expiry_timer = None
        self.push(
            error(
                ErrorCode.UNAUTHENTICATED,
                "The access token expired; refresh it in-band before expiresAt to stay connected.",
            )
        )
        self.close_with(CloseCode.UNAUTHENTICATED, "token expired")

    def _cancel_timers(self) -> None:
        for timer in (self._auth_timer, self._expiry_timer):
            if timer is not None:
                timer.cancel()
        self._auth_timer = self._expiry_timer = None

    def rerecord(self) -> None:
        """Write this connection's rows again (the hub's writer does so for all of them)."""
        if self._records is not None:
            self._records.rewrite(self.connection_id)

    def _record_open(self, user_id: int | None) -> None:
        assert self._records is not None
        self._records.opened(
            connection_id=self.connection_id,
            user_id=user_id,
            client_address=_client_address(self.scope),
            user_agent=_header(self.scope, b"user-agent"),
            connected_at=timezone.now(),
        )


def _header(scope: dict[str, Any], name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin1")
    return ""


def _client_address(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    if not client:
        return ""
    host, port = client[0], client[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
