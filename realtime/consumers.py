"""The WebSocket consumer (the seed's Client): authenticates, parses, dispatches, and sends.

One instance per connection. Protocol handlers (`websocket_connect`, `websocket_receive`,
`websocket_disconnect`) are kept apart from the message handlers (`handle_subscription`, ...).
Outbound text, replies and updates alike, goes through the connection's outbox
(realtime.outbound), bounded, so a client that cannot keep up is closed with 4508 instead of
growing the server's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from channels.consumer import AsyncConsumer
from channels.db import database_sync_to_async
from django.utils import timezone

from realtime import limits, metrics
from realtime.auth import TokenRejected, authenticate_token_async, client_ip_of
from realtime.conf import realtime_settings
from realtime.encoding import Encoding, UndecodableMessage, from_msgpack, negotiate, to_msgpack
from realtime.history import HistoryUnavailable
from realtime.hub import Hub, Subscribed, SubscribeRequest, get_hub
from realtime.outbound import Outbox
from realtime.protocol import (
    ClientMessage,
    CloseCode,
    ErrorCode,
    MessageType,
    ProtocolError,
    encode,
    error,
    id_of,
    parse,
    parse_value,
    peek_id,
)
from realtime.records import RecordWriter
from realtime.security import EventKind, record
from realtime.selectors import presence_page
from realtime.snapshots import snapshot_items
from realtime.subscriptions import (
    Shaping,
    SubscribeEntry,
    SubscribeOptionError,
    parse_subscribe_entry,
    snapshot_messages,
)
from realtime.throttling import MessageThrottle, Verdict
from realtime.topics import (
    RejectReason,
    Topic,
    TopicError,
    TopicKind,
    authorize_presence,
    authorize_topics,
    parse_topic,
)
from tradingrt import logs
from tradingrt.formats import format_timestamp, now_timestamp

logger = logging.getLogger(__name__)

SUBSCRIPTION_ACTIONS = {
    "subscribe": "subscribed",
    "unsubscribe": "unsubscribed",
    "list": "list",
    "presence": "presence",
}
# Members per topic in one presence reply; a bigger topic is paged (`after`, `next`).
PRESENCE_PAGE_MAX = 1000

authorize_topics_async = database_sync_to_async(authorize_topics)
authorize_presence_async = database_sync_to_async(authorize_presence)
presence_page_async = database_sync_to_async(presence_page)
snapshot_items_async = database_sync_to_async(snapshot_items)


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
        self.encoding = Encoding.JSON
        self._transcode: Any = None
        self._disconnect_code: int | None = None
        self._counted = False  # in the connections gauge (realtime.metrics)
        self.client_ip = client_ip_of(scope)
        self._outbox = Outbox(
            send,
            name=self.connection_id,
            give_up=self.close_with,
            max_messages=realtime_settings.SEND_BUFFER_MAX_MESSAGES,
            max_bytes=realtime_settings.SEND_BUFFER_MAX_BYTES,
        )
        self._auth_timer: asyncio.TimerHandle | None = None
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._records: RecordWriter | None = None
        self._throttle = MessageThrottle(
            rate=realtime_settings.RATE_LIMIT_PER_SEC,
            burst=realtime_settings.RATE_LIMIT_BURST,
            max_strikes=realtime_settings.RATE_LIMIT_MAX_STRIKES,
        )
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    await self.websocket_receive(message)
                elif kind == "websocket.connect":
                    await self.websocket_connect(message)
                elif kind == "websocket.disconnect":
                    self._disconnect_code = message.get("code")
                    break
        finally:
            await self.websocket_disconnect()

    # --- protocol handlers --------------------------------------------------------------

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        self.hub = await get_hub()
        # After the hub started: its tasks must not inherit this connection's log context.
        logs.bind(connection_id=self.connection_id, client_ip=self.client_ip)
        self.encoding, subprotocol = negotiate(self.scope.get("subprotocols"))
        if self.encoding is Encoding.MSGPACK:
            self._transcode = to_msgpack
        accept: dict[str, Any] = {"type": "websocket.accept"}
        if subprotocol is not None:
            accept["subprotocol"] = subprotocol
        await self.base_send(accept)
        self._counted = True
        metrics.connection_opened()
        user = self.scope.get("user")
        authenticated = user is not None and user.is_authenticated
        records = self._records = self.hub.records
        assert records is not None  # a started hub has its writer
        self._record_open(user.pk if user is not None and authenticated else None)
        # Counted by /ws/status before the client hears anything (this connection's record only).
        await records.stored(self.connection_id)
        if authenticated:
            if not await self._admit(user):
                return
            self._set_user(user, self.scope["token_expires_at"])
            self.push(self._authenticated_message(reply_to=None))
        else:
            loop = asyncio.get_running_loop()
            self._auth_timer = loop.call_later(
                realtime_settings.AUTH_TIMEOUT_SECS, self._auth_timed_out
            )
        # Only now does the hub send it anything (HEARTBEATs, control): AUTHENTICATION comes first.
        self.hub.register(self)

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        if self.closing:
            return
        msgpack = self.encoding is Encoding.MSGPACK
        frame = message.get("bytes") if msgpack else message.get("text")
        limit = realtime_settings.MAX_MESSAGE_BYTES
        verdict = self._throttle.check()
        if verdict is not Verdict.ALLOW:
            if verdict is Verdict.CLOSE:
                self._security_event(EventKind.RATE_LIMIT_CLOSED, "closed with 4429")
                self.close_with(CloseCode.RATE_LIMITED, "rate limit exceeded")
                return
            self._security_event(EventKind.RATE_LIMITED, "frame refused: rate_limited")
            reply_to = None
            if frame is not None and len(frame) <= limit:
                reply_to = _peek_msgpack_id(frame) if msgpack else peek_id(frame)
            self.push(
                error(
                    ErrorCode.RATE_LIMITED,
                    f"Too many messages: at most {realtime_settings.RATE_LIMIT_PER_SEC:g} a "
                    "second on average. This message was dropped; slow down or be disconnected.",
                    reply_to=reply_to,
                )
            )
            return
        if frame is None:
            wanted = "a MessagePack binary frame" if msgpack else "a JSON text frame"
            self.push(
                error(
                    ErrorCode.INVALID_MESSAGE,
                    f"{'Text' if msgpack else 'Binary'} frames are not accepted on this "
                    f"connection ({self.encoding.value}); send each message as {wanted}.",
                )
            )
            return
        if len(frame) > limit or (
            not msgpack and len(frame) * 4 > limit and len(frame.encode()) > limit
        ):
            self._security_event(EventKind.MESSAGE_TOO_LARGE, f"{len(frame)} characters")
            self.push(
                error(
                    ErrorCode.MESSAGE_TOO_LARGE,
                    f"The message is larger than the limit of {limit} bytes.",
                )
            )
            return
        parsed: ClientMessage | None = None
        try:
            if msgpack:
                try:
                    value = from_msgpack(frame)
                except UndecodableMessage as exc:
                    raise ProtocolError(ErrorCode.INVALID_MESSAGE, str(exc)) from None
                parsed = parse_value(value, authenticated=self.user is not None)
            else:
                parsed = parse(frame, authenticated=self.user is not None)
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
        self._outbox.disconnected()
        await self._leave_hub()
        await limits.release_connection(self.connection_id)
        if self._counted:
            self._counted = False
            metrics.connection_closed(self._closed_by_server or self._disconnect_code)
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
            payload: dict[str, Any] = {"serverTime": now_timestamp()}
            if self.topics and self.hub is not None:
                payload["positions"] = self.hub.positions(self)
            self.push(encode(MessageType.HEARTBEAT, payload, reply_to=message.id))
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
            await limits.authentication_failed(
                self.client_ip, detail=f"in-band token refused: {exc}", user_id=self.user_id
            )
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
        if first and not await self._admit(authenticated.user):
            return
        self._set_user(authenticated.user, authenticated.expires_at)
        if first and self._records is not None:
            self._records.authenticated(
                connection_id=self.connection_id, user_id=authenticated.user.pk, at=timezone.now()
            )
            await self._records.stored(self.connection_id)
        self.push(self._authenticated_message(reply_to=message.id))

    async def handle_subscription(self, message: ClientMessage) -> None:
        action = message.payload.get("action")
        if not isinstance(action, str) or action not in SUBSCRIPTION_ACTIONS:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                "A SUBSCRIPTION needs payload.action 'subscribe', 'unsubscribe', 'list' or "
                "'presence'.",
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
            await self.subscribe(requested, message.id)
            return
        if action == "presence":
            await self.presence(message.payload, requested, message.id)
            return
        accepted, rejected = await self.unsubscribe(requested)
        self.push(self._subscription_reply("unsubscribed", accepted, rejected, message.id))

    # --- subscriptions --------------------------------------------------------------------

    async def subscribe(self, requested: list[Any], reply_to: Any = None) -> None:
        """Subscribe the entries of `requested`; reply, then send recoveries and snapshots.

        CONTRACT sections 4 and 9: every accepted topic is fenced by seq in the hub, so the
        reply's position, the replayed or snapshot messages and the live ones join with no gap
        and no duplicate.
        """
        rejected: list[dict[str, Any]] = []
        wanted: dict[str, SubscribeEntry] = {}  # in request order; a repeated topic: first wins
        for raw in requested:
            try:
                entry = parse_subscribe_entry(raw)
            except TopicError as exc:
                rejected.append({"topic": _entry_name(raw), "reason": exc.reason.value})
                continue
            except SubscribeOptionError as exc:
                rejected.append(
                    {
                        "topic": _entry_name(raw),
                        "reason": RejectReason.INVALID_OPTION.value,
                        "message": str(exc),
                    }
                )
                continue
            wanted.setdefault(entry.topic.name, entry)
        watching = [e.topic for e in wanted.values() if e.presence]
        if watching:  # presence: true on a topic whose presence the user may not see
            refused = await authorize_presence_async(self.user, watching)
            for name, reason in refused.items():
                if reason is not None and name in wanted:
                    del wanted[name]
                    rejected.append({"topic": name, "reason": reason.value})
        candidates = [e.topic for name, e in wanted.items() if name not in self.topics]
        new: list[str] = []
        if candidates:
            decisions = await self._authorize(candidates)
            room = realtime_settings.MAX_TOPICS_PER_CONNECTION - len(self.topics)
            for topic in candidates:
                refused = decisions[topic.name]
                if refused is None and room <= 0:
                    refused = RejectReason.LIMIT_EXCEEDED
                if refused is not None:
                    rejected.append({"topic": topic.name, "reason": refused.value})
                    del wanted[topic.name]
                else:
                    room -= 1
                    new.append(topic.name)
        self._forbidden([r["topic"] for r in rejected if r["reason"] == "forbidden"])
        if self.hub is None:  # closed while authorising
            return
        hub = self.hub
        self.topics.update(new)  # before the joins: a close meanwhile drops them all
        requests = [
            SubscribeRequest(
                name,
                since=entry.since,
                snapshot=entry.snapshot,
                shaping=entry.shaping,
                presence=entry.presence,
            )
            for name, entry in wanted.items()
        ]
        results = await hub.subscribe(self, requests) if requests else []
        metrics.resumes(results)
        accepted: list[str] = []
        payload_extra: dict[str, Any] = {"positions": {}, "recovered": [], "reset": []}
        for result in results:
            if result.failed:  # not joined: held nowhere, and the client is told why
                self.topics.discard(result.topic)
                if result.topic in new:
                    new.remove(result.topic)
                rejected.append({"topic": result.topic, "reason": RejectReason.UNAVAILABLE.value})
                continue
            accepted.append(result.topic)
            assert result.position is not None
            payload_extra["positions"][result.topic] = result.position.as_json()
            if result.recovered:
                payload_extra["recovered"].append(result.topic)
            elif result.reset is not None:
                payload_extra["reset"].append({"topic": result.topic, "reason": result.reset})
        try:
            if new and self._records is not None:
                self._records.subscribed(connection_id=self.connection_id, topics=new)
                await self._records.stored(self.connection_id)
            self.push(
                self._subscription_reply(
                    "subscribed", accepted, rejected, reply_to, extra=payload_extra
                )
            )
            for result in results:
                if result.failed:
                    continue
                shaping = wanted[result.topic].shaping
                for text in _shaped_replay(result.replay, shaping):
                    self.push(text)
                if result.snapshot:
                    await self._send_snapshot(wanted[result.topic], result)
        finally:
            for result in results:
                if not result.failed:
                    hub.release(result.topic, self)

    async def _send_snapshot(self, entry: SubscribeEntry, result: Subscribed) -> None:
        """The topic's state, fenced at the subscription's position: every message up to it is
        in the state, and every later one follows (CONTRACT section 9); narrowed by the
        subscription's filter (section 10)."""
        assert result.position is not None and self.hub is not None
        topic = entry.topic
        position = result.position
        items: list[dict[str, Any]] | None = None
        if topic.kind is TopicKind.MARKET:  # the tick at the fence, else the stored quote
            with contextlib.suppress(HistoryUnavailable):
                latest = await self.hub.latest(topic.name, position.seq)
                if latest is not None:
                    items = [json.loads(latest)["payload"]]
        if items is None:
            items = await snapshot_items_async(topic)
        if entry.shaping is not None and entry.shaping.filter is not None:
            items = [item for item in items if entry.shaping.filter.accepts(item)]
        for text in snapshot_messages(
            topic.name, position, items, realtime_settings.SNAPSHOT_PAGE_SIZE
        ):
            # A large state goes out as the client reads it, not all into the send buffer.
            await self._outbox.wait_for_room(len(text))
            self.push(text)

    async def presence(self, payload: dict[str, Any], requested: list[Any], reply_to: Any) -> None:
        """Who is subscribed to each of `requested`, on any server (CONTRACT section 10); a
        large topic in pages of `limit` members, the next one `after` the reply's `next`."""
        limit = payload.get("limit", PRESENCE_PAGE_MAX)
        after = payload.get("after") or {}
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= PRESENCE_PAGE_MAX
            or not isinstance(after, dict)
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in after.values())
        ):
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                f"A presence request takes topics, an optional limit (1 to {PRESENCE_PAGE_MAX}) "
                "and an optional after: {topic: userId} from a previous reply's next.",
                reply_to=reply_to,
            )
        rejected: list[dict[str, Any]] = []
        topics: dict[str, Topic] = {}
        for raw in requested:
            try:
                topic = parse_topic(raw)
            except TopicError as exc:
                rejected.append({"topic": raw, "reason": exc.reason.value})
                continue
            topics.setdefault(topic.name, topic)
        decisions = await authorize_presence_async(self.user, list(topics.values()))
        presence: dict[str, list[dict[str, Any]]] = {}
        following: dict[str, int] = {}
        for name, reason in decisions.items():
            if reason is not None:
                rejected.append({"topic": name, "reason": reason.value})
                continue
            members, more = await presence_page_async(name, limit=limit, after=after.get(name))
            presence[name] = members
            if more is not None:
                following[name] = more
        self._forbidden([r["topic"] for r in rejected if r["reason"] == "forbidden"])
        reply: dict[str, Any] = {"action": "presence", "presence": presence, "rejected": rejected}
        if following:
            reply["next"] = following
        self.push(encode(MessageType.SUBSCRIPTION, reply, reply_to=reply_to))

    async def _authorize(self, topics: list[Topic]) -> dict[str, RejectReason | None]:
        """Decide on `topics` with the user's current permissions.

        A permission change that reaches this process while the decision is being made may
        have been read before it committed, so the decision is taken again.
        """
        while True:
            changes = self.hub.permission_changes if self.hub is not None else 0
            decisions = await authorize_topics_async(self.user, topics)
            if self.hub is None or self.hub.permission_changes == changes:
                return decisions

    async def recheck_permissions(self, topics: set[str]) -> list[str]:
        """Re-authorise `topics` after a permission change; revoke and report what is refused.

        Called by the hub (CONTRACT section 11), which holds the topics' messages meanwhile.
        Returns the revoked topics.
        """
        held = [parse_topic(name) for name in sorted(topics) if name in self.topics]
        if self.user is None or self.closing or not held:
            return []
        decisions = await authorize_topics_async(self.user, held)
        revoked = [
            name for name, reason in decisions.items() if reason is not None and name in self.topics
        ]
        if revoked:
            logger.info("Connection %s: subscriptions revoked: %s", self.connection_id, revoked)
            self.push(
                encode(
                    MessageType.SUBSCRIPTION,
                    {
                        "action": "revoked",
                        "topics": revoked,
                        "reason": RejectReason.FORBIDDEN.value,
                    },
                )
            )
            await self._drop_topics(revoked)
        return revoked

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
            if name in self.topics and name not in removed:
                removed.append(name)
        if removed:
            await self._drop_topics(removed)
        return accepted, rejected

    async def _drop_topics(self, names: list[str]) -> None:
        """End the subscriptions `names` (all currently held) here, in the hub and the records."""
        self.topics.difference_update(names)
        if self.hub is None:
            return
        await self.hub.unsubscribe(self, names)
        if self._records is not None:
            self._records.unsubscribed(connection_id=self.connection_id, topics=names)
            await self._records.stored(self.connection_id)

    # --- outbound -----------------------------------------------------------------------

    def push(self, text: str) -> None:
        """Send one message to this client, after what is queued (realtime.outbound.Outbox);
        on a MessagePack connection as its binary form (once per message and process)."""
        if not self.closing:
            metrics.message_sent(text)
            transcode = self._transcode
            self._outbox.push(text if transcode is None else transcode(text))

    def push_frame(self, text: str, data: bytes) -> bool:
        """`push` for the hub's broadcasts, uncounted (the hub counts once per slice): `data` is
        `text`'s frame, built once for all subscribers. False if closing (nothing sent)."""
        transcode = self._transcode
        if transcode is None:
            return self._outbox.push_frame(text, data)
        if self.closing:
            return False
        self._outbox.push(transcode(text))
        return True

    def close_with(self, code: int, reason: str = "") -> None:
        """Close the connection from the server side with `code` (sent after queued text)."""
        if self.closing:
            return
        self.closing = True
        self._closed_by_server = code
        self._cancel_timers()
        # Deliveries stop first; the server's websocket.disconnect may come much later.
        self._close_task = self._outbox.close(code, reason, first=self._leave_hub)

    # --- authentication state -----------------------------------------------------------

    def _set_user(self, user: Any, expires_at: float) -> None:
        self.user = user
        self.user_id = user.pk
        logs.bind(user_id=user.pk)
        self.expires_at = expires_at
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        delay = max(0.0, expires_at - self.wall_clock())
        self._expiry_timer = asyncio.get_running_loop().call_later(delay, self._token_expired)

    # --- abuse limits and security events (realtime.limits, realtime.security) -------------

    async def _admit(self, user: Any) -> bool:
        """Take a place among the user's MAX_CONNECTIONS_PER_USER; else close with 4409."""
        if await limits.admit_connection(self.connection_id, user.pk):
            return True
        limit = realtime_settings.MAX_CONNECTIONS_PER_USER
        logger.info("User %s has %d connections open already; closing with 4409", user.pk, limit)
        record(
            EventKind.CONNECTION_LIMIT,
            ip=self.client_ip,
            user_id=user.pk,
            username=user.get_username(),
            detail=f"over {limit} open connections",
        )
        self.close_with(CloseCode.CONNECTION_LIMIT, "too many connections for this user")
        return False

    def _security_event(self, kind: EventKind, detail: str) -> None:
        username = self.user.get_username() if self.user is not None else ""
        record(kind, ip=self.client_ip, user_id=self.user_id, username=username, detail=detail)

    def _forbidden(self, topics: list[str]) -> None:
        if topics:
            self._security_event(
                EventKind.FORBIDDEN_SUBSCRIPTION, "refused: " + ", ".join(topics)[:250]
            )

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
        *,
        extra: dict[str, Any] | None = None,
    ) -> str:
        payload: dict[str, Any] = {"action": action, "topics": topics}
        if rejected is not None:
            payload["rejected"] = rejected
        if extra:
            payload.update(extra)
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


def _entry_name(raw: Any) -> Any:
    """What a rejected entry is called in the reply: its topic (a name or an object's)."""
    return raw.get("topic") if isinstance(raw, dict) else raw


def _shaped_replay(texts: list[str], shaping: Shaping | None) -> list[str]:
    """A recovery as the subscription wants it: filtered; throttled, only the latest."""
    if shaping is None:
        return texts
    if shaping.filter is not None:
        wanted = shaping.filter
        texts = [t for t in texts if wanted.accepts(json.loads(t).get("payload") or {})]
    if shaping.throttle_ms is not None:
        texts = texts[-1:]
    return texts


def _peek_msgpack_id(frame: bytes) -> Any:
    """The `id` of a MessagePack frame that will not be handled (rate limited)."""
    try:
        value = from_msgpack(frame)
    except UndecodableMessage:
        return None
    return id_of(value)
