"""The per-process hub: local topic -> subscribers, one channel-layer channel for the process.

The process, not each connection, is a member of a topic's channel-layer group: it joins when
its first local subscriber arrives and leaves when the last one goes. A message arriving for a
topic is already encoded; the hub hands the same text to every local subscriber. Control
messages (operator disconnects, deactivated users) reach every process through one group.
See docs/ARCHITECTURE.md for why, with measurements.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import logging
import weakref
from collections.abc import Iterable
from typing import Any, Protocol

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from realtime import connections
from realtime.conf import realtime_settings
from realtime.protocol import MessageType, encode
from realtime.records import RecordWriter
from realtime.topics import group_name

logger = logging.getLogger(__name__)

CONTROL_GROUP = "rt.control"
HUB_MESSAGE = "hub.message"
HUB_CONTROL = "hub.control"
# Channel-layer groups expire (channels-redis: group_expiry); rejoin well before.
GROUP_REFRESH_SECS = 3600.0
# Connections handed a server-wide broadcast per turn of the event loop (Hub.broadcast).
BROADCAST_SLICE = 500


class Subscriber(Protocol):
    """What the hub needs of a connection (realtime.consumers.RealtimeConsumer)."""

    connection_id: str
    user_id: int | None

    def push(self, text: str) -> None: ...

    def close_with(self, code: int, reason: str = "") -> None: ...

    def rerecord(self) -> None: ...


class Sequencer:
    """Delivers each object's updates on a topic in version order.

    Versions follow commit order (tradingrt.models.TracksLoadedValues), but two writers'
    after-commit callbacks, in two threads or two processes, can race to publish. An update
    that arrives ahead of its predecessor is held until the predecessor comes, or for at most
    REORDER_WAIT_SECS; an update older than one already delivered is dropped, never sent out
    of order. What it remembers is bounded (least recently seen objects are forgotten).
    """

    MAX_TRACKED = 50_000

    def __init__(self, deliver: Any) -> None:
        self._deliver = deliver
        self._last: collections.OrderedDict[tuple[str, str], int] = collections.OrderedDict()
        self._held: dict[tuple[str, str], dict[int, str]] = {}
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self.dropped = 0

    def offer(self, topic: str, key: str, seq: int, text: str) -> None:
        slot = (topic, key)
        last = self._last.get(slot)
        if last is None or seq == last + 1:
            self._emit(slot, seq, text)
            self._release(slot)
        elif seq <= last:
            self.dropped += 1
            logger.warning("Dropped %s v%d on %s: v%d was already delivered", key, seq, topic, last)
        else:
            self._held.setdefault(slot, {})[seq] = text
            if slot not in self._timers:
                wait = float(realtime_settings.REORDER_WAIT_SECS)
                self._timers[slot] = asyncio.get_running_loop().call_later(
                    wait, self._give_up, slot
                )

    def _emit(self, slot: tuple[str, str], seq: int, text: str) -> None:
        self._deliver(slot[0], text)
        self._last[slot] = seq
        self._last.move_to_end(slot)
        if len(self._last) > self.MAX_TRACKED:
            forgotten, _ = self._last.popitem(last=False)
            self._give_up(forgotten)

    def _release(self, slot: tuple[str, str]) -> None:
        held = self._held.get(slot)
        while held and self._last[slot] + 1 in held:
            seq = self._last[slot] + 1
            self._emit(slot, seq, held.pop(seq))
        if not held:
            self._held.pop(slot, None)
            timer = self._timers.pop(slot, None)
            if timer is not None:
                timer.cancel()

    def _give_up(self, slot: tuple[str, str]) -> None:
        """The predecessor never came (or is forgotten): deliver what is held, in order."""
        self._timers.pop(slot, None)
        held = self._held.pop(slot, {})
        for seq in sorted(held):
            self._deliver(slot[0], held[seq])
            if slot in self._last:
                self._last[slot] = seq


class Hub:
    """Local connections and topics of one process (one event loop)."""

    def __init__(self) -> None:
        self.layer = get_channel_layer()
        self.channel_name: str | None = None
        self.server_id: str | None = None
        self.records: RecordWriter | None = None
        self.connections: dict[str, Subscriber] = {}
        self.topics: dict[str, set[Subscriber]] = {}
        self._joined: set[str] = set()
        self._topic_locks: dict[str, asyncio.Lock] = {}
        self._start_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.messages_delivered = 0
        self.sequencer = Sequencer(self.deliver)

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self.server_id is not None

    async def start(self) -> None:
        """Register the process and start its loops; idempotent, done on first connection."""
        if self.started:
            return
        async with self._start_lock:
            if self.started:
                return
            if self.layer is not None:
                self.channel_name = await self.layer.new_channel("rt.hub")
                await self.layer.group_add(CONTROL_GROUP, self.channel_name)
                self._joined.add(CONTROL_GROUP)
                self._tasks.append(asyncio.create_task(self._receive_loop()))
            server = await database_sync_to_async(connections.server_process_register)(
                channel_name=self.channel_name or ""
            )
            self.server_id = server.pk
            self.records = RecordWriter(server.pk, channel_name=self.channel_name or "")
            self.records.start()
            # A clean exit removes this process's rows at once instead of letting them expire.
            atexit.register(_forget_process, server.pk)
            self._tasks.append(asyncio.create_task(self._heartbeat_loop()))
            self._tasks.append(asyncio.create_task(self._maintenance_loop()))
            logger.info("Realtime hub %s started", self.server_id)

    async def stop(self) -> None:
        """Stop the loops and drop this process's records (tests and clean shutdowns)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.layer is not None and self.channel_name:
            for topic_group in list(self._joined):
                try:
                    await self.layer.group_discard(topic_group, self.channel_name)
                except Exception:
                    logger.debug("group_discard failed during stop", exc_info=True)
        self._joined.clear()
        if self.records is not None:
            await self.records.stop()
        if self.server_id:
            atexit.unregister(_forget_process)
            await database_sync_to_async(connections.server_process_stop)(server_id=self.server_id)
            self.server_id = None

    # --- connections and topics ------------------------------------------------------------

    def register(self, subscriber: Subscriber) -> None:
        self.connections[subscriber.connection_id] = subscriber

    def unregister(self, subscriber: Subscriber, topics: Iterable[str]) -> list[str]:
        """Forget a connection; returns the topics that no longer have any local subscriber."""
        self.connections.pop(subscriber.connection_id, None)
        return self._remove(subscriber, topics)

    async def subscribe(self, subscriber: Subscriber, topics: Iterable[str]) -> None:
        """Add local subscriptions; returns once the process receives the topics' messages."""
        for topic in topics:
            self.topics.setdefault(topic, set()).add(subscriber)
            if group_name(topic) not in self._joined:
                await self._sync_membership(topic)

    async def unsubscribe(self, subscriber: Subscriber, topics: Iterable[str]) -> None:
        await self.release_topics(self._remove(subscriber, topics))

    def _remove(self, subscriber: Subscriber, topics: Iterable[str]) -> list[str]:
        """Drop local subscriptions; returns the topics left with no local subscriber."""
        emptied = []
        for topic in topics:
            subscribers = self.topics.get(topic)
            if subscribers is None:
                continue
            subscribers.discard(subscriber)
            if not subscribers:
                del self.topics[topic]
                emptied.append(topic)
        return emptied

    async def release_topics(self, topics: Iterable[str]) -> None:
        """Leave the groups of topics left without local subscribers."""
        for topic in topics:
            await self._sync_membership(topic)

    async def _sync_membership(self, topic: str) -> None:
        """Make the group membership match the local subscribers, one change at a time."""
        if self.layer is None or self.channel_name is None:
            return
        group = group_name(topic)
        lock = self._topic_locks.setdefault(group, asyncio.Lock())
        async with lock:
            wanted = bool(self.topics.get(topic))
            joined = group in self._joined
            if wanted and not joined:
                await self.layer.group_add(group, self.channel_name)
                self._joined.add(group)
            elif joined and not wanted:
                self._joined.discard(group)
                await self.layer.group_discard(group, self.channel_name)
            if not wanted and not lock.locked():
                self._topic_locks.pop(group, None)

    # --- delivery ----------------------------------------------------------------------

    def deliver(self, topic: str, text: str) -> None:
        """Hand one encoded message to every local subscriber of `topic`."""
        subscribers = self.topics.get(topic)
        if not subscribers:
            return
        for subscriber in tuple(subscribers):
            subscriber.push(text)
        self.messages_delivered += len(subscribers)

    async def broadcast(self, text: str) -> None:
        """Hand one encoded message to every local connection (server heartbeats).

        In slices of BROADCAST_SLICE connections, yielding to the loop between them: one pass
        over 10,000 sockets would hold the loop for a quarter to half a second, and every
        update and request waiting behind it (docs/BENCHMARKS.md, status).
        """
        subscribers = tuple(self.connections.values())
        for start in range(0, len(subscribers), BROADCAST_SLICE):
            if start:
                await asyncio.sleep(0)
            for subscriber in subscribers[start : start + BROADCAST_SLICE]:
                subscriber.push(text)

    def handle_control(self, message: dict[str, Any]) -> None:
        """Close local connections an operator or a deactivation targets."""
        if message.get("action") != "disconnect":
            logger.warning("Unknown hub control action %r", message.get("action"))
            return
        code = int(message.get("code", 4000))
        reason = str(message.get("reason", ""))
        everyone = bool(message.get("all"))
        user_ids = set(message.get("user_ids") or ())
        if user_ids:
            from realtime.auth import user_cache

            user_cache.forget(user_ids)
        connection_ids = set(message.get("connection_ids") or ())
        for subscriber in tuple(self.connections.values()):
            if (
                everyone
                or subscriber.connection_id in connection_ids
                or (subscriber.user_id is not None and subscriber.user_id in user_ids)
            ):
                subscriber.close_with(code, reason)

    def dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == HUB_MESSAGE:
            if "key" in message:
                self.sequencer.offer(
                    message["topic"], message["key"], message["seq"], message["text"]
                )
            else:
                self.deliver(message["topic"], message["text"])
        elif kind == HUB_CONTROL:
            self.handle_control(message)
        else:
            logger.warning("Hub ignored a channel-layer message of type %r", kind)

    # --- loops -------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        assert self.layer is not None and self.channel_name is not None
        failures = 0
        while True:
            try:
                message = await self.layer.receive(self.channel_name)
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                logger.exception("Channel layer receive failed (attempt %d); retrying", failures)
                await asyncio.sleep(min(5.0, 0.1 * 2**failures))
                continue
            if failures:
                failures = 0
                await self._rejoin_groups()  # the layer may have lost them (Redis restarted)
            try:
                self.dispatch(message)
            except Exception:
                logger.exception("Hub failed to dispatch a channel-layer message")

    async def _heartbeat_loop(self) -> None:
        interval = float(realtime_settings.HEARTBEAT_INTERVAL_SECS)
        while True:
            await asyncio.sleep(interval)
            if self.connections:
                await self.broadcast(encode(MessageType.HEARTBEAT, {"serverTime": _server_time()}))
            try:
                restored = await database_sync_to_async(connections.server_process_heartbeat)(
                    server_id=self.server_id, channel_name=self.channel_name or ""
                )
                if restored:
                    logger.warning(
                        "Hub %s had lost its records; writing them again", self.server_id
                    )
                    await self._rerecord_connections()
            except Exception:
                logger.exception("Could not record the hub's heartbeat")

    async def _maintenance_loop(self) -> None:
        prune_every = float(realtime_settings.PRUNE_INTERVAL_SECS)
        since_refresh = 0.0
        while True:
            await asyncio.sleep(prune_every)
            try:
                removed = await database_sync_to_async(connections.prune_dead_processes)()
                if removed["processes"]:
                    logger.info("Pruned dead server processes: %s", removed)
            except Exception:
                logger.exception("Pruning dead server processes failed")
            since_refresh += prune_every
            expiry = float(getattr(self.layer, "group_expiry", GROUP_REFRESH_SECS * 3))
            if since_refresh >= min(GROUP_REFRESH_SECS, expiry / 3):
                since_refresh = 0.0
                await self._rejoin_groups()

    async def _rejoin_groups(self) -> None:
        if self.layer is None or self.channel_name is None:
            return
        for group in list(self._joined):
            try:
                await self.layer.group_add(group, self.channel_name)
            except Exception:
                logger.exception("Could not rejoin group %s", group)

    async def _rerecord_connections(self) -> None:
        """Write the rows of every local connection again, after the process's were lost."""
        if self.records is not None:
            self.records.rewrite_all()  # it holds every live connection's state


def _forget_process(server_id: str) -> None:
    try:
        connections.server_process_stop(server_id=server_id)
    except Exception:  # the database may be gone too; the rows then expire on their own
        logger.debug("Could not remove the records of %s at exit", server_id, exc_info=True)


def _server_time() -> str:
    from tradingrt.formats import now_timestamp

    return now_timestamp()


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


async def get_hub() -> Hub:
    """This event loop's hub, started."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = Hub()
    await hub.start()
    return hub


def current_hub() -> Hub | None:
    """This event loop's hub if one was started (status and tests)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return _hubs.get(loop)
