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
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from realtime import connections, stats
from realtime.conf import realtime_settings
from realtime.layer import LayerProbe, probe_for
from realtime.protocol import CloseCode, MessageType, encode
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


# Seconds a permission re-check may take before the connection is closed instead (4503): its
# topics cannot be vouched for, and their messages are being held meanwhile.
RECHECK_TIMEOUT_SECS = 10.0


class LayerUnavailable(Exception):
    """The channel layer could not take a group change; the topic cannot be served now."""


class Subscriber(Protocol):
    """What the hub needs of a connection (realtime.consumers.RealtimeConsumer)."""

    connection_id: str
    user_id: int | None
    topics: set[str]

    def push(self, text: str) -> None: ...

    def close_with(self, code: int, reason: str = "") -> None: ...

    async def recheck_permissions(self, topics: set[str]) -> list[str]: ...


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
        self._keys: dict[str, set[str]] = {}  # topic -> keys in _last, to forget a topic at once
        self.dropped = 0

    def offer(self, topic: str, key: str, seq: int, text: str) -> None:
        slot = (topic, key)
        last = self._last.get(slot)
        if last is None:
            self._keys.setdefault(topic, set()).add(key)
        if last is None or seq == last + 1:
            self._emit(slot, seq, text)
            self._release(slot)
        elif seq <= last:
            self.dropped += 1
            logger.warning("Dropped %s v%d on %s: v%d was already delivered", key, seq, topic, last)
        else:
            self._held.setdefault(slot, {})[seq] = text
            if slot not in self._timers:
                wait = realtime_settings.REORDER_WAIT_SECS
                self._timers[slot] = asyncio.get_running_loop().call_later(
                    wait, self._give_up, slot
                )

    def _emit(self, slot: tuple[str, str], seq: int, text: str) -> None:
        self._deliver(slot[0], text)
        self._last[slot] = seq
        self._last.move_to_end(slot)
        if len(self._last) > self.MAX_TRACKED:
            forgotten, _ = self._last.popitem(last=False)
            self._unindex(forgotten)
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

    def forget_topic(self, topic: str) -> None:
        """Forget what was delivered on `topic` (the process left its group).

        On a later join the first update of each object is delivered at once instead of being
        held for a predecessor this process will never see.
        """
        for key in self._keys.pop(topic, ()):
            self._last.pop((topic, key), None)
        for slot in [slot for slot in self._held if slot[0] == topic]:
            self._give_up(slot)

    def _unindex(self, slot: tuple[str, str]) -> None:
        keys = self._keys.get(slot[0])
        if keys is not None:
            keys.discard(slot[1])
            if not keys:
                del self._keys[slot[0]]

    def _give_up(self, slot: tuple[str, str]) -> None:
        """The predecessor never came (or is forgotten): deliver what is held, in order."""
        timer = self._timers.pop(slot, None)
        if timer is not None:
            timer.cancel()
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
        # One lock per group while a membership change is under way or waited for; dropped by
        # the last user, so the map holds only the groups being changed right now.
        self._topic_locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._start_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self.messages_delivered = 0
        self.sequencer = Sequencer(self.deliver)
        # Topics with a delivery in slices under way: what arrives meanwhile queues behind it.
        self._backlog: dict[str, collections.deque[str]] = {}
        # topic -> subscriber -> messages held while the subscriber's permissions are re-checked.
        self._held: dict[str, dict[Subscriber, list[str]]] = {}
        # Goes up with every permission re-check, so a subscription authorised while one ran is
        # authorised again (realtime.consumers).
        self.permission_changes = 0
        self._probe: LayerProbe | None = None
        self.layer_lost: str | None = None  # why, while the layer's state is gone
        self._recover_lock = asyncio.Lock()

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self.server_id is not None

    async def start(self) -> None:
        """Register the process and start its loops; idempotent, done on first connection.

        All or nothing: a step that fails undoes the ones before it, so the next connection
        starts afresh instead of adding a second receive loop.
        """
        if self.started:
            return
        async with self._start_lock:
            if self.started:
                return
            channel_name = None
            try:
                if self.layer is not None:
                    channel_name = await self.layer.new_channel("rt.hub")
                    await self.layer.group_add(CONTROL_GROUP, channel_name)
                    self._probe = probe_for(self.layer)
                    if self._probe is not None:
                        await self._probe.remember()
                server = await database_sync_to_async(connections.server_process_register)(
                    channel_name=channel_name or ""
                )
            except BaseException:
                if channel_name is not None and self.layer is not None:
                    with contextlib.suppress(Exception):
                        await self.layer.group_discard(CONTROL_GROUP, channel_name)
                raise
            self.channel_name = channel_name
            if channel_name is not None:
                self._joined.add(CONTROL_GROUP)
                self._tasks.append(asyncio.create_task(self._receive_loop()))
                if self._probe is not None:
                    self._tasks.append(asyncio.create_task(self._layer_watch_loop()))
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
        for task in (*self._tasks, *self._side_tasks):
            task.cancel()
        for task in (*self._tasks, *self._side_tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._side_tasks.clear()
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

    def _spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        """A task the hub keeps a reference to until it ends (and cancels at stop)."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)
        return task

    # --- connections and topics ------------------------------------------------------------

    def register(self, subscriber: Subscriber) -> None:
        self.connections[subscriber.connection_id] = subscriber

    def unregister(self, subscriber: Subscriber, topics: Iterable[str]) -> list[str]:
        """Forget a connection; returns the topics that no longer have any local subscriber."""
        self.connections.pop(subscriber.connection_id, None)
        return self._remove(subscriber, topics)

    async def subscribe(self, subscriber: Subscriber, topics: Iterable[str]) -> list[str]:
        """Add local subscriptions, each once the process receives the topic's messages.

        Returns the topics that could not be joined (the channel layer is unreachable): those
        are not subscribed, here or anywhere, and the caller must say so to its client.
        """
        failed = []
        for topic in topics:
            self.topics.setdefault(topic, set()).add(subscriber)
            if group_name(topic) in self._joined:
                continue
            try:
                await self._sync_membership(topic)
            except LayerUnavailable:
                failed.append(topic)
                self._remove(subscriber, (topic,))
        return failed

    async def unsubscribe(self, subscriber: Subscriber, topics: Iterable[str]) -> None:
        await self.release_topics(self._remove(subscriber, topics))

    def _remove(self, subscriber: Subscriber, topics: Iterable[str]) -> list[str]:
        """Drop local subscriptions; returns the topics left with no local subscriber."""
        emptied = []
        for topic in topics:
            held = self._held.get(topic)
            if held is not None:
                held.pop(subscriber, None)
                if not held:
                    del self._held[topic]
            subscribers = self.topics.get(topic)
            if subscribers is None:
                continue
            subscribers.discard(subscriber)
            if not subscribers:
                del self.topics[topic]
                emptied.append(topic)
        return emptied

    async def release_topics(self, topics: Iterable[str]) -> None:
        """Leave the groups of topics left without local subscribers (a failed leave is logged:
        the membership lapses with the layer's group expiry, and nothing is delivered here)."""
        for topic in topics:
            await self._sync_membership(topic)

    async def _sync_membership(self, topic: str) -> None:
        """Make the group membership match the local subscribers, one change at a time.

        Raises LayerUnavailable when a wanted join fails.
        """
        if self.layer is None or self.channel_name is None:
            return
        group = group_name(topic)
        lock, users = self._topic_locks.setdefault(group, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                wanted = bool(self.topics.get(topic))
                joined = group in self._joined
                if wanted and not joined:
                    if self.layer_lost:
                        raise LayerUnavailable(self.layer_lost)
                    try:
                        await self.layer.group_add(group, self.channel_name)
                    except Exception as exc:
                        logger.warning("Could not join group %s: %r", group, exc)
                        raise LayerUnavailable(str(exc)) from exc
                    self._joined.add(group)
                elif joined and not wanted:
                    self._joined.discard(group)
                    self.sequencer.forget_topic(topic)
                    try:
                        await self.layer.group_discard(group, self.channel_name)
                    except Exception as exc:
                        logger.warning("Could not leave group %s: %r", group, exc)
        finally:
            users[0] -= 1
            if not users[0]:
                del self._topic_locks[group]

    # --- delivery ----------------------------------------------------------------------

    def deliver(self, topic: str, text: str) -> None:
        """Hand one encoded message to every local subscriber of `topic`, in arrival order.

        Up to DELIVERY_SLICE subscribers at once; a topic with more is delivered in slices by a
        task that yields to the loop between them, and the topic's next messages queue behind it.
        """
        backlog = self._backlog.get(topic)
        if backlog is not None:
            backlog.append(text)
            return
        subscribers = self.topics.get(topic)
        if not subscribers:
            return
        if len(subscribers) > realtime_settings.DELIVERY_SLICE:
            self._backlog[topic] = collections.deque((text,))
            self._spawn(self._deliver_in_slices(topic))
            return
        self._push_all(topic, tuple(subscribers), text)

    def _push_all(self, topic: str, subscribers: Sequence[Subscriber], text: str) -> None:
        held = self._held.get(topic)
        if held:  # a permission re-check is under way on this topic: its messages wait
            for subscriber in subscribers:
                waiting = held.get(subscriber)
                if waiting is not None:
                    waiting.append(text)
                else:
                    subscriber.push(text)
        else:
            for subscriber in subscribers:
                subscriber.push(text)
        self.messages_delivered += len(subscribers)

    async def _deliver_in_slices(self, topic: str) -> None:
        backlog = self._backlog[topic]
        size = realtime_settings.DELIVERY_SLICE
        try:
            while backlog:
                text = backlog.popleft()
                subscribers = tuple(self.topics.get(topic, ()))
                for start in range(0, len(subscribers), size):
                    if start:
                        await asyncio.sleep(0)
                    current = self.topics.get(topic, ())  # unsubscribed meanwhile: skipped
                    part = [s for s in subscribers[start : start + size] if s in current]
                    self._push_all(topic, part, text)
                await asyncio.sleep(0)
        finally:
            del self._backlog[topic]

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

    # --- control: operator disconnects and permission changes -----------------------------

    def handle_control(self, message: dict[str, Any]) -> None:
        action = message.get("action")
        if action == "disconnect":
            self._disconnect(message)
        elif action == "recheck":
            self._recheck(message)
        else:
            logger.warning("Unknown hub control action %r", action)

    def _disconnect(self, message: dict[str, Any]) -> None:
        """Close local connections an operator or a deactivation targets."""
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

    def _recheck(self, message: dict[str, Any]) -> None:
        """Permissions changed (CONTRACT section 11): re-authorise the affected subscriptions.

        Every topic of the named users' connections, and the named topics of anyone's. Until a
        connection's re-check ends, its messages on those topics are held, not delivered: a topic
        the user may no longer see gets nothing after the change, and one still allowed gets
        everything, in order, once the check passes.
        """
        from realtime.auth import user_cache

        user_ids = set(message.get("user_ids") or ())
        topics = set(message.get("topics") or ())
        user_cache.forget(user_ids)
        self.permission_changes += 1
        logger.info(
            "Permissions changed (users %s, topics %s): re-checking %d local connections",
            sorted(user_ids),
            sorted(topics),
            sum(1 for s in self.connections.values() if s.user_id in user_ids or topics & s.topics),
        )
        for subscriber in tuple(self.connections.values()):
            if subscriber.user_id is None:
                continue
            if subscriber.user_id in user_ids:
                affected = set(subscriber.topics)
            else:
                affected = topics & subscriber.topics
            if not affected:
                continue
            for topic in affected:
                self._held.setdefault(topic, {}).setdefault(subscriber, [])
            self._spawn(self._recheck_subscriber(subscriber, affected))

    async def _recheck_subscriber(self, subscriber: Subscriber, topics: set[str]) -> None:
        revoked: list[str] = []
        try:
            revoked = await asyncio.wait_for(
                subscriber.recheck_permissions(topics), RECHECK_TIMEOUT_SECS
            )
        except Exception:
            logger.exception(
                "Could not re-check the permissions of connection %s; closing it",
                subscriber.connection_id,
            )
            stats.count("permission_recheck_failed")
            subscriber.close_with(CloseCode.STREAM_INTERRUPTED, "permissions could not be checked")
            revoked = list(topics)
        finally:
            for topic in topics:
                held = self._held.get(topic)
                waiting = held.pop(subscriber, None) if held is not None else None
                if held is not None and not held:
                    del self._held[topic]
                if waiting and topic not in revoked and subscriber in self.topics.get(topic, ()):
                    for text in waiting:
                        subscriber.push(text)

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

    # --- the channel layer: receiving, and noticing that it lost this process's groups ----

    async def _receive_loop(self) -> None:
        assert self.layer is not None and self.channel_name is not None
        failures = 0
        while True:
            try:
                message = await self.layer.receive(self.channel_name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                if await self._layer_intact():
                    # A connection of the pool broke (say, one opened before a restart that was
                    # already handled): the store still holds this process's groups and queued
                    # messages (channels_redis keeps a backup of what it pops), so none is lost.
                    logger.warning("A channel-layer receive failed (%r); receiving again", exc)
                else:
                    self._lose_layer(f"a receive from the channel layer failed: {exc!r}")
                await asyncio.sleep(min(5.0, 0.1 * 2**failures))
                await self._recover()
                continue
            failures = 0
            try:
                self.dispatch(message)
            except Exception:
                logger.exception("Hub failed to dispatch a channel-layer message")

    async def _layer_watch_loop(self) -> None:
        """Every LAYER_CHECK_INTERVAL_SECS: is the layer's store the one this process joined?"""
        assert self._probe is not None and self.channel_name is not None
        while True:
            await asyncio.sleep(realtime_settings.LAYER_CHECK_INTERVAL_SECS)
            if self.layer_lost:
                await self._recover()
                continue
            reason = await self._probe_layer()
            if reason is not None:
                self._lose_layer(reason)
                await self._recover()

    async def _layer_intact(self) -> bool:
        """Whether the layer's store answers and still holds this process's state (a probe says
        so; without one, nothing can be vouched for)."""
        if self._probe is None or self.layer_lost:
            return False
        return await self._probe_layer() is None

    async def _probe_layer(self) -> str | None:
        """Why the layer's state is gone or out of reach, or None while it is intact.

        A failed probe is tried once more at once: after a Redis restart the pool still holds
        connections to the old server, and the first command on one fails even though the new
        server answers.
        """
        assert self._probe is not None and self.channel_name is not None
        for attempt in (1, 2):
            try:
                return await self._probe.lost(CONTROL_GROUP, self.channel_name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if attempt == 2:
                    return f"the channel layer cannot be reached: {exc!r}"
        return None  # not reached

    def _lose_layer(self, reason: str) -> None:
        """The layer lost (or may have lost) messages and groups: tell every subscriber, once.

        Updates may have been published that this process can no longer receive, so a client
        holding topics cannot know what it missed: it is closed with 4503 and reconnects and
        reloads, rather than sitting connected while nothing reaches it.
        """
        if self.layer_lost:
            return
        self.layer_lost = reason
        stats.count("layer_lost")
        subscribed = [s for s in self.connections.values() if s.topics]
        logger.warning(
            "Realtime hub %s lost its channel layer (%s); closing %d subscribed connections "
            "with %d so they reconnect and reload",
            self.server_id,
            reason,
            len(subscribed),
            CloseCode.STREAM_INTERRUPTED,
        )
        for subscriber in subscribed:
            subscriber.close_with(CloseCode.STREAM_INTERRUPTED, "update stream interrupted")

    async def _recover(self) -> None:
        """Join every group again; on success the layer serves this process once more."""
        if not self.layer_lost or self.layer is None or self.channel_name is None:
            return
        async with self._recover_lock:
            if not self.layer_lost:
                return
            try:
                for group in list(self._joined):
                    await self.layer.group_add(group, self.channel_name)
                if self._probe is not None:
                    await self._probe.remember()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.info("Channel layer still unavailable: %r", exc)
                return
            logger.warning(
                "Realtime hub %s rejoined %d groups; the channel layer serves it again",
                self.server_id,
                len(self._joined),
            )
            self.layer_lost = None

    # --- loops -------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = realtime_settings.HEARTBEAT_INTERVAL_SECS
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
                    if self.records is not None:
                        self.records.rewrite_all()  # it holds every live connection's state
            except Exception:
                logger.exception("Could not record the hub's heartbeat")

    async def _maintenance_loop(self) -> None:
        prune_every = realtime_settings.PRUNE_INTERVAL_SECS
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
