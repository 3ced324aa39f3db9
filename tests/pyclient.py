"""End-to-end tests' users: the project's Python client (tradingrt_client) of a live server."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from tradingrt_client import Client, Connected, Event, SubscribeReply, Update
from tradingrt_client.messages import UPDATE_TYPES

E = TypeVar("E")


class Events:
    """A client's events, read one at a time with a deadline; everything read is kept, and
    (given `wire`, the list the client's `on_message` fills) every message the server sent.

    A read that times out leaves the client's stream intact: the next read goes on waiting for
    the same event.
    """

    def __init__(self, client: Client, wire: list[dict[str, Any]] | None = None) -> None:
        self.client = client
        self.stream = client.updates()
        self.seen: list[Event] = []
        self.wire = wire
        self.subscribed: SubscribeReply | None = None
        self._next: asyncio.Future[Event] | None = None

    async def next(self, timeout: float = 15.0) -> Event:
        if self._next is None:
            self._next = asyncio.ensure_future(anext(self.stream))
        done, _ = await asyncio.wait({self._next}, timeout=timeout)
        if not done:
            raise TimeoutError(f"no event within {timeout} s")
        future, self._next = self._next, None
        event = future.result()
        self.seen.append(event)
        return event

    async def until(
        self, kind: type[E], where: Callable[[E], bool] = lambda _: True, *, timeout: float = 15.0
    ) -> E:
        """Read until an event of `kind` for which `where` holds; that event."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.next(timeout)
                if isinstance(event, kind) and where(event):
                    return event

    async def update(self, type: str | None = None, *, timeout: float = 15.0) -> Update:
        """The next event, which must be an update (of `type`, if given): not a reset, a
        recovery, a reconnection."""
        event = await self.next(timeout)
        assert isinstance(event, Update), event
        assert type is None or event.type == type, event
        return event

    async def update_of(self, order_id: int, event: str = "created") -> Update:
        """Read until the update of order `order_id` with `event`."""
        return await self.until(Update, lambda u: u.key == order_id and u.event == event)

    async def quiet(self, seconds: float) -> None:
        """Nothing arrives for `seconds`: no event, and on the wire nothing but heartbeats."""
        heard = len(self.wire or [])
        try:
            event = await self.next(seconds)
        except TimeoutError:
            pass
        else:
            raise AssertionError(f"expected no event, got {event}")
        sent = [m for m in (self.wire or [])[heard:] if m.get("type") != "HEARTBEAT" or "id" in m]
        assert sent == [], f"expected nothing but heartbeats, got {sent}"

    async def start(self, *topics: str, snapshot: bool = False) -> SubscribeReply | None:
        """Connect, read the Connected event, and subscribe to `topics` (no snapshot unless
        asked); every topic must be accepted. The subscribe reply, kept as `subscribed` too."""
        await self.client.connect()
        assert isinstance(await self.next(), Connected), self.seen
        if topics:
            reply = await self.client.subscribe(*topics, snapshot=snapshot)
            assert sorted(reply.topics) == sorted(topics) and reply.rejected == [], reply
            self.subscribed = reply
        return self.subscribed

    def subscribe_replies(self) -> list[dict[str, Any]]:
        """The payloads of the server's subscribe replies so far, as sent (from the wire)."""
        return [
            m["payload"]
            for m in self.wire or []
            if m.get("type") == "SUBSCRIPTION" and m["payload"].get("action") == "subscribed"
        ]

    def sent_seqs(self, topic: str) -> list[int]:
        """The seqs of the topic's updates on the wire, in arrival order: what the server sent,
        duplicates included (the client drops those)."""
        return [
            m["seq"]
            for m in self.wire or []
            if m.get("topic") == topic and m.get("type") in UPDATE_TYPES
        ]

    def assert_nothing_sent_twice(self) -> None:
        """No update came twice on the wire (same topic, epoch and seq), on any connection."""
        sent = [
            (m["topic"], m["epoch"], m["seq"])
            for m in self.wire or []
            if m.get("type") in UPDATE_TYPES
        ]
        twice = sorted(key for key, times in Counter(sent).items() if times > 1)
        assert twice == [], f"sent more than once: {twice}"

    def updates(self, topic: str) -> list[Update]:
        return [e for e in self.seen if isinstance(e, Update) and e.topic == topic]

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.seen if isinstance(e, kind)]

    async def close(self) -> None:
        """Close the client and stop waiting for its next event."""
        await self.client.close()
        if self._next is not None:
            self._next.cancel()
            self._next = None


def bot(url: str | list[str], token: str | None = None, **options: Any) -> Events:
    """A client (not started yet) that connects with `token` (or as `options` say): its events,
    with every message it will receive on the wire."""
    wire: list[dict[str, Any]] = []
    return Events(Client(url, token=token, on_message=wire.append, **options), wire)
