"""Presence: who is subscribed to a topic, on any server process (CONTRACT section 10).

Presence is derived from the connection records every process already keeps in the database
(realtime.records): a user is present on a topic while one of their connections of a live
process is subscribed to it. Nothing else has to be kept consistent, so nothing can drift: a
process killed with SIGKILL stops counting once its heartbeat expires (DEAD_AFTER_HEARTBEATS
intervals), exactly like in /ws/status, and its users leave.

Join and leave events: each hub polls the members of the topics its own connections watch
(`presence: true`), every PRESENCE_INTERVAL_SECS, in one query, and compares with what it saw
before. A user seen for the first time joins; a user missing is marked absent and leaves only
after PRESENCE_LEAVE_GRACE_SECS without coming back, so a reconnect does not flap. Every
process reads the same records, so every process tells its watchers the same story.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from channels.db import database_sync_to_async

from realtime.conf import realtime_settings
from realtime.protocol import MessageType, encode_json
from tradingrt.formats import now_timestamp

if TYPE_CHECKING:
    from realtime.hub import Hub, Subscriber

logger = logging.getLogger(__name__)


class Member:
    __slots__ = ("absent_since", "username")

    def __init__(self, username: str) -> None:
        self.username = username
        self.absent_since: float | None = None


class PresenceTracker:
    """The presence of the topics this process's connections watch, and their events."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.watchers: dict[str, set[Subscriber]] = {}
        # topic -> user id -> member, from the last poll; None until a topic's first poll
        self._members: dict[str, dict[int, Member]] = {}
        self.clock = _loop_time

    def watch(self, topic: str, subscriber: Subscriber, on: bool) -> None:
        watchers = self.watchers.get(topic)
        if on:
            if watchers is None:
                watchers = self.watchers[topic] = set()
            watchers.add(subscriber)
        elif watchers is not None:
            watchers.discard(subscriber)
            if not watchers:
                del self.watchers[topic]
                self._members.pop(topic, None)

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(realtime_settings.PRESENCE_INTERVAL_SECS)
            if not self.watchers:
                continue
            try:
                await self.poll()
            except Exception:
                logger.exception("Presence poll failed")

    async def poll(self) -> None:
        from realtime.selectors import presence_members

        topics = sorted(self.watchers)
        present = await database_sync_to_async(presence_members)(topics)
        self.apply(present)

    def apply(self, present: dict[str, dict[int, str]]) -> None:
        """Compare with what was seen before; send joins and (after the grace) leaves."""
        now = self.clock()
        grace = realtime_settings.PRESENCE_LEAVE_GRACE_SECS
        for topic, users in present.items():
            if topic not in self.watchers:
                continue  # unwatched while the query ran
            known = self._members.get(topic)
            if known is None:  # the first look: who is here is the baseline, not news
                self._members[topic] = {uid: Member(name) for uid, name in users.items()}
                continue
            for user_id, username in users.items():
                member = known.get(user_id)
                if member is None:
                    known[user_id] = Member(username)
                    self._send(topic, "join", user_id, username)
                else:
                    member.absent_since = None  # back within the grace: no leave, no join
            for user_id in [uid for uid in known if uid not in users]:
                member = known[user_id]
                if member.absent_since is None:
                    member.absent_since = now
                if now - member.absent_since >= grace:
                    del known[user_id]
                    self._send(topic, "leave", user_id, member.username)

    def _send(self, topic: str, event: str, user_id: int, username: str) -> None:
        text = _presence_message(topic, event, user_id, username)
        for subscriber in tuple(self.watchers.get(topic, ())):
            subscriber.push(text)


def _presence_message(topic: str, event: str, user_id: int, username: str) -> str:
    """A PRESENCE message: the envelope of a subscription's message, without seq (CONTRACT 10)."""
    return encode_json(
        {
            "type": MessageType.PRESENCE.value,
            "topic": topic,
            "timestamp": now_timestamp(),
            "payload": {"event": event, "userId": user_id, "username": username},
        }
    )


def _loop_time() -> float:
    return asyncio.get_running_loop().time()
