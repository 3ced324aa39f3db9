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
import json
import logging
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from realtime import connections, metrics, stats
from realtime.collector import collect_young_generations
from realtime.conf import realtime_settings
from realtime.conflation import Conflator, Lane
from realtime.history import HistoryUnavailable, Position, history_for
from realtime.layer import LayerProbe, probe_for
from realtime.outbound import frame
from realtime.presence import PresenceTracker
from realtime.protocol import CloseCode, MessageType, encode
from realtime.records import RecordWriter

if TYPE_CHECKING:
    from realtime.subscriptions import Filter, Shaping

    # A lane's key within its topic: the interval (ms) and the filter its members share.
    LaneKey = tuple[int | None, Filter | None]
from realtime.topics import group_name

logger = logging.getLogger(__name__)

CONTROL_GROUP = "rt.control"
HUB_MESSAGE = "hub.message"
HUB_CONTROL = "hub.control"
# Channel-layer groups expire (channels-redis: group_expiry); rejoin well before.
GROUP_REFRESH_SECS = 3600.0
# Connections handed a server-wide broadcast or HEARTBEAT per turn of the event loop, at most
# (also bounded by SLICE_BUDGET_SECS, below).
BROADCAST_SLICE = 500
# A topic delivered in slices (more than DELIVERY_SLICE local subscribers) yields to the loop
# after a slice's DELIVERY_SLICE subscribers or after this many seconds of writing, whichever
# comes first, checked every SLICE_STEP subscribers: when sends slow down (full socket buffers,
# a busy machine) a slice of 1,000 could otherwise hold the loop for 50 ms and more.
SLICE_BUDGET_SECS = 0.01
SLICE_STEP = 100


# Seconds a topic is quiet after activity before its head is compared with the history (a drop
# of a burst's last messages is repaired this long after the burst at most).
TAIL_QUIET_SECS = 0.5

# Longest the receive loop dispatches a backlog of channel-layer messages before it yields to
# the event loop (one message's delivery may take longer: a topic's slices bound that).
RECEIVE_YIELD_SECS = 0.005
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

    def push_frame(self, text: str, data: bytes) -> bool:
        """`push(text)` uncounted, `data` being `outbound.frame(text)`; False if not sent."""
        ...

    def close_with(self, code: int, reason: str = "") -> None: ...

    async def recheck_permissions(self, topics: set[str]) -> list[str]: ...


class Stream:
    """One topic's live stream in this process: the position delivered so far, and repairs.

    Messages arrive through the channel layer with their seq (realtime.history). One with the
    next seq is delivered at once; one ahead of it means a gap (the layer dropped a message, or
    two publishers' sends crossed): it waits while the missing ones are read from the history,
    so a drop costs latency, not data. A seq already delivered is a duplicate and is skipped.
    A drop of the last messages of a burst has no later message to show it: once the topic has
    been quiet for a moment after activity, its head in the history is compared (`_tail_loop`).
    """

    __slots__ = (
        "active_at",
        "delivered",
        "epoch",
        "last",
        "pending",
        "ready",
        "repairing",
        "retired",
    )

    def __init__(self) -> None:
        self.epoch: str | None = None
        self.last = 0  # highest seq handed to the subscribers (in order, no gap)
        self.delivered = 0  # highest seq every subscriber has been handed (slices finished)
        self.ready = False  # its starting position is known (read from the history after joining)
        self.repairing = False
        self.pending: dict[int, tuple[str, str]] = {}  # seq -> (epoch, text), waiting for a repair
        self.retired: set[str] = set()  # earlier epochs: a late message of one is ignored
        self.active_at: float | None = None  # when a message last came, until the tail check

    def position(self) -> Position:
        return Position(self.epoch or "", self.last)


class Hold:
    """A subscriber's messages on one topic, held while its subscription is being fenced (a
    resume or snapshot) or its permissions re-checked; released in order, those after `after`."""

    __slots__ = ("after", "messages", "users")

    def __init__(self, after: int | None) -> None:
        self.after = after  # None until the topic's stream knows its position
        self.messages: list[tuple[int, str]] = []
        self.users = 1


@dataclass(slots=True)
class SubscribeRequest:
    """One entry of a subscribe request (CONTRACT sections 9 and 10)."""

    topic: str
    since: Position | None = None
    snapshot: bool = False
    shaping: Shaping | None = None  # a filter, a throttle: replaces what the topic had
    presence: bool = False


class Shaped:
    """A subscription that narrows (filter) or conflates (throttle) what it is handed.

    A throttled one is a member of the lane of its topic, interval and filter: the lane is
    offered the topic's messages (filtered once for all its members), not the subscription.
    """

    __slots__ = ("filter", "lane", "throttle_ms")

    def __init__(self, shaping: Shaping, lane: Lane | None) -> None:
        self.filter = shaping.filter
        self.throttle_ms = shaping.throttle_ms
        self.lane = lane

    @property
    def lane_key(self) -> LaneKey:
        return (self.throttle_ms, self.filter)


class Parsed:
    """One message's payload, decoded at most once however many filters look at it."""

    __slots__ = ("_payload", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._payload: dict[str, Any] | None = None

    @property
    def payload(self) -> dict[str, Any]:
        if self._payload is None:
            payload = json.loads(self.text).get("payload")
            self._payload = payload if isinstance(payload, dict) else {}
        return self._payload


@dataclass(slots=True)
class Subscribed:
    """What subscribing one topic gave: its position, and a recovery or a reason for a reset.

    The topic stays held (its live messages wait) until `Hub.release`: the caller sends its
    reply, then `replay` (or a snapshot fenced at `position`), then releases.
    """

    topic: str
    position: Position | None = None
    failed: bool = False
    recovered: bool = False
    reset: str | None = None
    replay: list[str] = field(default_factory=list)
    snapshot: bool = False


class _Pace:
    """When a long run of synchronous deliveries should let the event loop have a turn."""

    __slots__ = ("_loop", "_since")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._since = self._loop.time()

    def due(self) -> bool:
        now = self._loop.time()
        if now - self._since < RECEIVE_YIELD_SECS:
            return False
        self._since = now  # the caller yields now
        return True


class Hub:
    """Local connections and topics of one process (one event loop)."""

    def __init__(self) -> None:
        self.layer = get_channel_layer()
        self.channel_name: str | None = None
        self.server_id: str | None = None
        self.records: RecordWriter | None = None
        self.connections: dict[str, Subscriber] = {}
        # topic -> its local subscribers, in the order they subscribed: a broadcast walks them
        # in that order, which is about the order their objects were allocated in (a set's hash
        # order jumps about the heap: 0.94 against 0.56 us a delivery to 10,000 stand-ins).
        self.topics: dict[str, dict[Subscriber, None]] = {}
        self._joined: set[str] = set()
        # One lock per group while a membership change is under way or waited for; dropped by
        # the last user, so the map holds only the groups being changed right now.
        self._topic_locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._start_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self.messages_delivered = 0
        self.history = history_for(self.layer)
        # topic -> its live stream here (seq tracking, gap repair), while the process serves it.
        self._streams: dict[str, Stream] = {}
        # Topics with a delivery in slices under way: what arrives meanwhile queues behind it.
        self._backlog: dict[str, collections.deque[tuple[int, str]]] = {}
        # topic -> subscriber -> its held messages (a subscription being fenced, a re-check).
        self._held: dict[str, dict[Subscriber, Hold]] = {}
        # topic -> subscriber -> its filter and throttle, for the subscriptions that have one.
        self._shaped: dict[str, dict[Subscriber, Shaped]] = {}
        # topic -> (interval, filter) -> the lane of its throttled subscriptions alike.
        self._lanes: dict[str, dict[LaneKey, Lane]] = {}
        # topic -> its subscribers that no lane serves (a topic with lanes; rebuilt on change).
        self._direct: dict[str, dict[Subscriber, None]] = {}
        # Goes up with every change of who receives a topic directly: a sliced delivery checks
        # each slice against the topic's current members only if it moved meanwhile.
        self._membership_changes = 0
        self.conflator = Conflator(slice_size=realtime_settings.DELIVERY_SLICE)
        self.presence = PresenceTracker(self)
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
            self._tasks.append(asyncio.create_task(self._outbox_loop()))
            self._tasks.append(asyncio.create_task(self.presence.loop()))
            self._tasks.append(asyncio.create_task(self._tail_loop()))
            if realtime_settings.GC_YOUNG_INTERVAL_SECS:
                beat = realtime_settings.GC_YOUNG_INTERVAL_SECS
                self._tasks.append(asyncio.create_task(collect_young_generations(beat)))
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
        self.conflator.close()
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

    async def subscribe(
        self, subscriber: Subscriber, requests: Sequence[SubscribeRequest]
    ) -> list[Subscribed]:
        """Add local subscriptions, each fenced by seq (CONTRACT section 9).

        Each topic is held for the subscriber from this instant: its position is what the
        stream had delivered here just before (or its head, once a first join reads it), and
        every later message waits in the hold until `release`. A `since` is then answered from
        the history (recovered, or reset with a reason), and a snapshot wanted is fenced at the
        position. A topic that cannot be joined (the channel layer or the history is unreachable)
        comes back `failed`: not subscribed, here or anywhere, and the caller must say so.
        """
        for request in requests:
            topic = request.topic
            self.topics.setdefault(topic, {})[subscriber] = None
            self._membership_changed(topic)
            stream = self._streams.get(topic)
            if stream is None:
                stream = self._streams[topic] = Stream()
            self._hold(topic, subscriber, stream)
            self._shape(topic, subscriber, request.shaping)
            self.presence.watch(topic, subscriber, request.presence)
        return list(await asyncio.gather(*(self._subscribe_one(subscriber, r) for r in requests)))

    async def _subscribe_one(self, subscriber: Subscriber, request: SubscribeRequest) -> Subscribed:
        topic = request.topic
        result = Subscribed(topic)
        stream = self._streams.get(topic)
        try:
            if stream is None or not stream.ready or group_name(topic) not in self._joined:
                await self._sync_membership(topic)
            stream = self._streams.get(topic)
            hold = self._held.get(topic, {}).get(subscriber)
            if stream is None or not stream.ready or hold is None or hold.after is None:
                raise LayerUnavailable("the subscription ended while it was being set up")
        except LayerUnavailable:
            result.failed = True
            self._remove(subscriber, (topic,))
            await self.release_topics([t for t in (topic,) if not self.topics.get(t)])
            return result
        assert stream.epoch is not None
        position = hold.after
        result.position = Position(stream.epoch, position)
        since = request.since
        if since is not None:
            if since.epoch != stream.epoch:
                result.reset = "epoch"
            elif since.seq == position:
                result.recovered = True
            else:
                await self._recover_range(topic, stream, hold, since, result)
            if result.recovered:
                stats.count("resumes_recovered")
        if result.reset is not None:
            stats.count(f"resumes_reset_{result.reset}")
        if request.snapshot and not result.recovered:
            result.snapshot = True
        return result

    async def _recover_range(
        self, topic: str, stream: Stream, hold: Hold, since: Position, result: Subscribed
    ) -> None:
        """Answer a `since` other than the position from the history: exact, or a reset."""
        assert result.position is not None
        position = result.position.seq
        try:
            read = await self.history.read(topic, min(since.seq, position))
        except HistoryUnavailable as exc:
            logger.warning("Could not read the history of %s for a resume: %s", topic, exc)
            result.reset = "unavailable"
            return
        if read.epoch != since.epoch or since.seq > read.head:
            result.reset = "epoch"  # the history was reset, or never held that position
            return
        if not read.complete:
            result.reset = "expired"
            return
        # What the history holds beyond this process's stream goes to every subscriber now (it
        # reaches this one's hold, after its position), and the live copies become duplicates.
        if self._streams.get(topic) is stream and read.epoch == stream.epoch:
            self._advance(topic, stream, read.entries)
        if since.seq < position:
            result.replay = [text for seq, text in read.entries if seq <= position]
        else:  # the client saw more than this process has delivered: skip what it holds
            hold.after = since.seq
            result.position = Position(since.epoch, since.seq)
        result.recovered = True

    def _shape(self, topic: str, subscriber: Subscriber, shaping: Shaping | None) -> None:
        """Set (or clear) how the subscription narrows and conflates what it is handed."""
        shaped = self._shaped.get(topic)
        old = shaped.pop(subscriber, None) if shaped is not None else None
        if old is not None and old.lane is not None:
            self._leave_lane(topic, subscriber, old)
        if shaping is None:
            if shaped is not None and not shaped:
                del self._shaped[topic]
            return
        new = Shaped(shaping, None)
        if shaping.throttle_ms is not None:
            self._join_lane(topic, subscriber, new)
        self._shaped.setdefault(topic, {})[subscriber] = new

    def _join_lane(self, topic: str, subscriber: Subscriber, shaped: Shaped) -> None:
        """Make a throttled subscription a member of its lane (created for the first), paused
        while the subscription is held: it is being fenced, and gets nothing until released."""
        assert shaped.throttle_ms is not None
        lanes = self._lanes.setdefault(topic, {})
        lane = lanes.get(shaped.lane_key)
        if lane is None:
            lane = lanes[shaped.lane_key] = self.conflator.lane(shaped.throttle_ms)
        held = self._held.get(topic)
        paused = held is not None and subscriber in held
        self.conflator.join(lane, subscriber, subscriber.push, paused=paused)
        shaped.lane = lane
        self._membership_changed(topic)

    def _leave_lane(self, topic: str, subscriber: Subscriber, shaped: Shaped) -> None:
        """Drop a subscription from its lane, and the lane with its last member (no leak)."""
        assert shaped.lane is not None
        if self.conflator.leave(shaped.lane, subscriber):
            lanes = self._lanes[topic]
            del lanes[shaped.lane_key]
            if not lanes:
                del self._lanes[topic]
        shaped.lane = None
        self._membership_changed(topic)

    def _membership_changed(self, topic: str) -> None:
        self._direct.pop(topic, None)
        self._membership_changes += 1

    def _receivers(self, topic: str) -> dict[Subscriber, None] | None:
        """The subscribers of `topic` handed each message themselves: all but the lanes'
        members (a paused one is handed them, to its hold). Kept while membership is unchanged,
        so a tick on a topic with lanes costs nothing per throttled subscriber."""
        subscribers = self.topics.get(topic)
        lanes = self._lanes.get(topic)
        if lanes is None or not subscribers:
            return subscribers
        direct = self._direct.get(topic)
        if direct is None:
            served = set().union(*(lane.members for lane in lanes.values()))
            served.update(*(lane.joining for lane in lanes.values()))
            direct = {s: None for s in subscribers if s not in served}
            self._direct[topic] = direct
        return direct

    def _offer(self, lanes: dict[LaneKey, Lane], seq: int, text: str) -> None:
        """Offer one message to the lanes of its topic: once a lane, however many members."""
        message = None
        for (_, wanted), lane in lanes.items():
            if wanted is not None:
                if message is None:
                    message = Parsed(text)
                if not wanted.accepts(message.payload):
                    continue
            if lane.held is not None:
                # A lane already holding a tick (its flush is scheduled: Lane's invariant): the
                # newer replaces it. The common case on a busy symbol, and while the hub works
                # through a backlog: assignments, not a call.
                lane.held = lane.latest = text
                lane.position = seq
            else:
                self.conflator.offer(lane, text, seq)

    def shaping_of(self, topic: str, subscriber: Subscriber) -> Shaped | None:
        shaped = self._shaped.get(topic)
        return shaped.get(subscriber) if shaped is not None else None

    def _hand(self, subscriber: Subscriber, shaped: Shaped, message: Parsed) -> None:
        """Hand one message to a filtered subscription (a throttled one's lane is offered it)."""
        if shaped.filter is None or shaped.filter.accepts(message.payload):
            subscriber.push(message.text)

    def release(self, topic: str, subscriber: Subscriber) -> None:
        """End one hold of `subscriber` on `topic`: once none is left, send what waited."""
        held = self._held.get(topic)
        if held is None or (hold := held.get(subscriber)) is None:
            return
        hold.users -= 1
        if hold.users > 0:
            return
        del held[subscriber]
        if not held:
            del self._held[topic]
        if subscriber not in self.topics.get(topic, ()):
            return
        after = hold.after or 0
        shaped = self.shaping_of(topic, subscriber)
        if shaped is not None and shaped.lane is not None:
            self._resume_lane(topic, subscriber, shaped, hold)
            return
        for seq, text in hold.messages:
            if seq > after:
                if shaped is None:
                    subscriber.push(text)
                else:
                    self._hand(subscriber, shaped, Parsed(text))

    def _resume_lane(self, topic: str, subscriber: Subscriber, shaped: Shaped, hold: Hold) -> None:
        """A throttled subscription's hold ended: back in its lane's sends, owed the latest
        message after its position if it missed one while held."""
        assert shaped.lane is not None
        lane = shaped.lane
        after = hold.after or 0
        missed, missed_seq = None, after
        if lane.latest is not None and lane.position > after:
            missed, missed_seq = lane.latest, lane.position
        # The hold may hold newer (it began before the lane did: a re-subscribe during a
        # permission re-check); the newest that passes the filter, if any.
        for seq, text in reversed(hold.messages):
            if seq <= missed_seq:
                break
            if shaped.filter is None or shaped.filter.accepts(Parsed(text).payload):
                missed = text
                break
        self.conflator.resume(lane, subscriber, subscriber.push, position=after, missed=missed)
        self._membership_changed(topic)

    def _hold(self, topic: str, subscriber: Subscriber, stream: Stream | None) -> Hold:
        held = self._held.setdefault(topic, {})
        hold = held.get(subscriber)
        if hold is not None:
            hold.users += 1
            return hold
        after = stream.last if stream is not None and stream.ready else None
        hold = held[subscriber] = Hold(after)
        shaped = self.shaping_of(topic, subscriber)
        if shaped is not None and shaped.lane is not None:  # its lane skips it meanwhile
            self.conflator.pause(shaped.lane, subscriber)
            self._membership_changed(topic)
        return hold

    async def latest(self, topic: str, seq: int) -> str | None:
        """The message `seq` of `topic` from the history (a latest-value topic's snapshot)."""
        if seq <= 0:
            return None
        read = await self.history.read(topic, seq - 1)
        for entry_seq, text in read.entries:
            if entry_seq == seq:
                return text
        return None

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
            self._shape(topic, subscriber, None)
            self.presence.watch(topic, subscriber, False)
            subscribers = self.topics.get(topic)
            if subscribers is None:
                continue
            subscribers.pop(subscriber, None)
            self._membership_changed(topic)
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
            if self.topics.get(topic):
                await self._start_stream(topic)
            else:
                self._streams.pop(topic, None)
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
                if wanted:
                    await self._start_stream(topic)
                else:
                    self._streams.pop(topic, None)
                if joined and not wanted:
                    self._joined.discard(group)
                    try:
                        await self.layer.group_discard(group, self.channel_name)
                    except Exception as exc:
                        logger.warning("Could not leave group %s: %r", group, exc)
        finally:
            users[0] -= 1
            if not users[0]:
                del self._topic_locks[group]

    # --- streams: seqs in order, gaps repaired from the history ------------------------------

    async def _start_stream(self, topic: str) -> None:
        """Learn where the topic's stream starts here: its head in the history, read after the
        group was joined (so every later message reaches this process)."""
        stream = self._streams.get(topic)
        if stream is None:
            stream = self._streams[topic] = Stream()
        if stream.ready:
            return
        try:
            head = await self.history.head(topic)
        except HistoryUnavailable as exc:
            logger.warning("Could not read the history head of %s: %s", topic, exc)
            raise LayerUnavailable(str(exc)) from exc
        if self._streams.get(topic) is not stream or stream.ready:
            return
        stream.epoch = head.epoch
        stream.last = stream.delivered = head.seq
        stream.ready = True
        for hold in self._held.get(topic, {}).values():
            if hold.after is None:
                hold.after = head.seq
        self._drain_pending(topic, stream, may_repair=True)

    def receive(self, topic: str, epoch: str, seq: int, text: str) -> None:
        """A message from the channel layer: deliver it in seq order (see Stream)."""
        stream = self._streams.get(topic)
        if stream is None:
            return  # no longer served here (left meanwhile)
        stream.active_at = self._loop_time()
        if not stream.ready or stream.repairing:
            stream.pending[seq] = (epoch, text)
            return
        self._accept(topic, stream, epoch, seq, text, may_repair=True)

    def _accept(
        self,
        topic: str,
        stream: Stream,
        epoch: str,
        seq: int,
        text: str,
        *,
        may_repair: bool,
        current: str | None = None,
    ) -> None:
        """Deliver, skip or hold one message. `current`: the history's epoch as just read (after
        a repair), which decides a message of another epoch."""
        if epoch != stream.epoch:
            if epoch in stream.retired or (current is not None and epoch != current):
                # Numbered in an epoch the history has left (sent before a reset): its
                # subscribers are told of the reset by the new epoch, and resume or reload.
                stats.count("stale_epoch_messages")
                logger.info(
                    "Topic %s: skipped seq %d of epoch %s, which the history has left for %s",
                    topic,
                    seq,
                    epoch,
                    current or stream.epoch,
                )
                return
            if may_repair:  # which epoch is the history's now? read it before deciding
                stream.pending[seq] = (epoch, text)
                stream.repairing = True
                self._spawn(self._repair(topic, stream))
                return
            self._new_epoch(topic, stream, epoch)
        if seq <= stream.last:
            return  # delivered already: a repair read it from the history first
        if seq > stream.last + 1:
            if may_repair:
                stream.pending[seq] = (epoch, text)
                stream.repairing = True
                self._spawn(self._repair(topic, stream))
                return
            stats.count("gaps_unrepaired")
            logger.warning(
                "Topic %s: seqs %d-%d are missing and not in the history; delivering %d "
                "(its subscribers see the gap and reload)",
                topic,
                stream.last + 1,
                seq - 1,
                seq,
            )
        stream.last = seq
        self.deliver(topic, seq, text)

    def _new_epoch(self, topic: str, stream: Stream, epoch: str) -> None:
        logger.warning(
            "Topic %s: new epoch %s (was %s at seq %d): its history was reset",
            topic,
            epoch,
            stream.epoch,
            stream.last,
        )
        stats.count("epoch_changes")
        if stream.epoch is not None:
            stream.retired.add(stream.epoch)
        stream.epoch, stream.last, stream.delivered = epoch, 0, 0

    async def _repair(self, topic: str, stream: Stream) -> None:
        """Read what a gap misses from the history, then deliver it and what waited, in order.

        Also decides a message of another epoch: if the history is in that epoch now, the
        stream moves to it (from seq 1); if not, the message is a late one of an older epoch.
        """
        stats.count("gap_repairs")
        entries: list[tuple[int, str]] = []
        current: str | None = None
        try:
            try:
                read = await self.history.read(topic, stream.last)
                current = read.epoch
                if read.epoch != stream.epoch:
                    read = await self.history.read(topic, 0)
                    current = read.epoch
                entries = read.entries
            except HistoryUnavailable as exc:
                logger.warning("Could not repair a gap on %s from the history: %s", topic, exc)
            except Exception:
                logger.exception("Repairing a gap on %s failed", topic)
            if self._streams.get(topic) is not stream:
                return
            if current is not None and current != stream.epoch:
                self._new_epoch(topic, stream, current)
            # What the gap missed, then what waited meanwhile, in seq order; the loop runs in
            # between every RECEIVE_YIELD_SECS (a long gap on a big topic is seconds of
            # writes), while `repairing` keeps newer messages waiting in `pending`.
            before = stream.last
            pace = _Pace()
            for seq, text in entries:
                if not self._advance_one(topic, stream, seq, text):
                    break
                if not await self._paced(pace, topic, stream):
                    return
            if stream.last > before:
                logger.info(
                    "Topic %s: repaired seqs %d-%d from the history", topic, before + 1, stream.last
                )
            while stream.pending:
                self._accept_next_pending(topic, stream, may_repair=False, current=current)
                if not await self._paced(pace, topic, stream):
                    return
        finally:
            stream.repairing = False

    async def _paced(self, pace: _Pace, topic: str, stream: Stream) -> bool:
        """Give the loop a turn if the pace says so; whether the stream is still this topic's."""
        if pace.due():
            await asyncio.sleep(0)
        return self._streams.get(topic) is stream

    def _advance(self, topic: str, stream: Stream, entries: Sequence[tuple[int, str]]) -> None:
        """Deliver history entries that follow the stream's position, as far as they are
        contiguous."""
        for seq, text in entries:
            if not self._advance_one(topic, stream, seq, text):
                break

    def _advance_one(self, topic: str, stream: Stream, seq: int, text: str) -> bool:
        """Deliver one history entry if it is the stream's next (skip one it has); False at a
        gap, where the entries stop being contiguous."""
        if seq == stream.last + 1:
            stream.last = seq
            self.deliver(topic, seq, text)
        return seq <= stream.last

    def _drain_pending(
        self, topic: str, stream: Stream, *, may_repair: bool, current: str | None = None
    ) -> None:
        while stream.pending and not stream.repairing:
            self._accept_next_pending(topic, stream, may_repair=may_repair, current=current)

    def _accept_next_pending(
        self, topic: str, stream: Stream, *, may_repair: bool, current: str | None
    ) -> None:
        seq = min(stream.pending)
        epoch, text = stream.pending.pop(seq)
        self._accept(topic, stream, epoch, seq, text, may_repair=may_repair, current=current)

    # --- delivery ----------------------------------------------------------------------

    def deliver(self, topic: str, seq: int, text: str) -> None:
        """Hand one encoded message to every local subscriber of `topic`, in arrival order.

        Up to DELIVERY_SLICE subscribers at once; a topic with more is delivered in slices by a
        task that yields to the loop between them, and the topic's next messages queue behind it.
        """
        metrics.observe_delivery(text)  # once per message and process, not per subscriber
        lanes = self._lanes.get(topic)
        if lanes is not None:
            # Lanes want only the newest message, so they are offered each at once, even when
            # the topic's other subscribers have a backlog to get through.
            self._offer(lanes, seq, text)
        backlog = self._backlog.get(topic)
        if backlog is not None:
            backlog.append((seq, text))
            return
        subscribers = self._receivers(topic)
        if subscribers and len(subscribers) > realtime_settings.DELIVERY_SLICE:
            self._backlog[topic] = collections.deque(((seq, text),))
            self._spawn(self._deliver_in_slices(topic))
            return
        if subscribers:
            self._push_all(topic, tuple(subscribers), seq, text)
        elif lanes is None:
            return
        self._delivered(topic, seq)

    def _delivered(self, topic: str, seq: int) -> None:
        stream = self._streams.get(topic)
        if stream is not None and seq > stream.delivered:
            stream.delivered = seq

    def _push_all(self, topic: str, subscribers: Sequence[Subscriber], seq: int, text: str) -> None:
        held = self._held.get(topic)
        shaped = self._shaped.get(topic)
        if held or shaped:  # subscriptions being fenced or re-checked wait; shaped ones filter
            message = Parsed(text)
            for subscriber in subscribers:
                hold = held.get(subscriber) if held else None
                if hold is not None:
                    hold.messages.append((seq, text))
                    continue
                shaping = shaped.get(subscriber) if shaped else None
                if shaping is None:
                    subscriber.push(text)
                else:
                    self._hand(subscriber, shaping, message)
        else:
            # The fused path: one call per subscriber, the frame built once, counted once.
            data = frame(text)
            handed = 0
            for subscriber in subscribers:
                if subscriber.push_frame(text, data):
                    handed += 1
            if handed:
                metrics.message_sent(text, handed)
        self.messages_delivered += len(subscribers)

    async def _deliver_in_slices(self, topic: str) -> None:
        """Each message to every subscriber, in slices of at most DELIVERY_SLICE subscribers
        and SLICE_BUDGET_SECS of the loop's time, yielding to the loop between slices."""
        backlog = self._backlog[topic]
        size = realtime_settings.DELIVERY_SLICE
        clock = time.perf_counter
        try:
            while backlog:
                seq, text = backlog.popleft()
                subscribers = tuple(self._receivers(topic) or ())
                as_of = self._membership_changes
                start, total = 0, len(subscribers)
                while start < total:
                    if start:
                        await asyncio.sleep(0)
                    began = clock()
                    end = min(start + size, total)
                    current = self._receivers(topic) or ()
                    while start < end:  # in steps, so that a slow slice stops early
                        stop = min(start + SLICE_STEP, end)
                        part = subscribers[start:stop]
                        if self._membership_changes != as_of:  # unsubscribed meanwhile: skipped
                            part = tuple(s for s in part if s in current)
                        self._push_all(topic, part, seq, text)
                        start = stop
                        if clock() - began > SLICE_BUDGET_SECS:
                            break
                self._delivered(topic, seq)
                await asyncio.sleep(0)
        finally:
            del self._backlog[topic]

    def positions(self, subscriber: Subscriber) -> dict[str, dict[str, Any]]:
        """The positions a HEARTBEAT reports to `subscriber`: of its topics not held right now,
        the last seq every subscriber was handed (never more than it was handed)."""
        return {topic: {"epoch": epoch, "seq": seq} for topic, epoch, seq in self._at(subscriber)}

    def _at(self, subscriber: Subscriber) -> tuple[tuple[str, str, int], ...]:
        """`positions` as (topic, epoch, seq) triples: connections at the same positions share
        one HEARTBEAT text."""
        result = []
        for topic in subscriber.topics:
            stream = self._streams.get(topic)
            if stream is None or not stream.ready or stream.epoch is None:
                continue
            held = self._held.get(topic)
            if held and subscriber in held:
                continue
            result.append((topic, stream.epoch, stream.delivered))
        return tuple(result)

    async def send_heartbeats(self) -> None:
        """A HEARTBEAT to every local connection, with the positions of its topics (CONTRACT
        section 9), in slices like `broadcast`. Connections at the same positions (every
        subscriber of one topic, say) share one text, encoded once, and so one frame."""
        server_time = _server_time()
        texts: dict[tuple[tuple[str, str, int], ...], str] = {
            (): encode(MessageType.HEARTBEAT, {"serverTime": server_time})
        }
        async for subscriber in self._in_slices(tuple(self.connections.values())):
            at = self._at(subscriber) if subscriber.topics else ()
            text = texts.get(at)
            if text is None:
                positions = {topic: {"epoch": epoch, "seq": seq} for topic, epoch, seq in at}
                payload = {"serverTime": server_time, "positions": positions}
                text = texts[at] = encode(MessageType.HEARTBEAT, payload)
            subscriber.push(text)

    async def _in_slices(self, subscribers: Sequence[Subscriber]) -> Any:
        """Each of `subscribers`, yielding to the loop after BROADCAST_SLICE of them or
        SLICE_BUDGET_SECS of the loop's time, whichever comes first (checked every SLICE_STEP)."""
        clock = time.perf_counter
        began = clock()
        for n, subscriber in enumerate(subscribers):
            if (
                n
                and n % SLICE_STEP == 0
                and (n % BROADCAST_SLICE == 0 or clock() - began > SLICE_BUDGET_SECS)
            ):
                await asyncio.sleep(0)
                began = clock()
            yield subscriber

    async def broadcast(self, text: str) -> None:
        """Hand one encoded message to every local connection (server heartbeats).

        In slices of at most BROADCAST_SLICE connections and SLICE_BUDGET_SECS, yielding to the
        loop between them: one pass over 10,000 sockets would hold the loop for a quarter to half
        a second, and every update and request waiting behind it (docs/BENCHMARKS.md, status).
        """
        async for subscriber in self._in_slices(tuple(self.connections.values())):
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
                self._hold(topic, subscriber, self._streams.get(topic))
            self._spawn(self._recheck_subscriber(subscriber, affected))

    async def _recheck_subscriber(self, subscriber: Subscriber, topics: set[str]) -> None:
        try:
            await asyncio.wait_for(subscriber.recheck_permissions(topics), RECHECK_TIMEOUT_SECS)
        except Exception:
            logger.exception(
                "Could not re-check the permissions of connection %s; closing it",
                subscriber.connection_id,
            )
            stats.count("permission_recheck_failed")
            subscriber.close_with(CloseCode.STREAM_INTERRUPTED, "permissions could not be checked")
        finally:
            # A revoked topic was dropped with its hold, and a closing connection sends nothing.
            for topic in topics:
                self.release(topic, subscriber)

    def dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == HUB_MESSAGE:
            self.receive(message["topic"], message["epoch"], message["seq"], message["text"])
        elif kind == HUB_CONTROL:
            self.handle_control(message)
        else:
            logger.warning("Hub ignored a channel-layer message of type %r", kind)

    # --- the channel layer: receiving, and noticing that it lost this process's groups ----

    async def _receive_loop(self) -> None:
        assert self.layer is not None and self.channel_name is not None
        failures = 0
        pace = _Pace()
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
            # A backlog is received without a pause (the in-process layer's queue hands over
            # what it holds at once): past RECEIVE_YIELD_SECS of dispatching, let the loop run
            # sockets, requests and timers before the next message.
            if pace.due():
                await asyncio.sleep(0)

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
                await self.send_heartbeats()
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

    @staticmethod
    def _loop_time() -> float:
        return asyncio.get_running_loop().time()

    async def _tail_loop(self) -> None:
        """Catch the drop of a burst's last messages: a topic quiet for TAIL_QUIET_SECS after
        activity has its head read from the history once; if the history is ahead, the missing
        tail is repaired like any gap. Only topics that were just active are read."""
        while True:
            await asyncio.sleep(TAIL_QUIET_SECS)
            now = self._loop_time()
            for topic, stream in list(self._streams.items()):
                active_at = stream.active_at
                if active_at is None or now - active_at < TAIL_QUIET_SECS or not stream.ready:
                    continue
                stream.active_at = None
                if not stream.repairing:
                    self._spawn(self._check_tail(topic, stream))

    async def _check_tail(self, topic: str, stream: Stream) -> None:
        try:
            head = await self.history.head(topic)
        except HistoryUnavailable:
            return  # the layer watch handles an unreachable store
        if self._streams.get(topic) is not stream or stream.repairing:
            return
        if head.epoch != stream.epoch or head.seq > stream.last:
            stream.repairing = True
            await self._repair(topic, stream)

    async def _outbox_loop(self) -> None:
        """Publish committed updates their publisher did not (realtime.publish.publish_pending)."""
        from realtime.publish import publish_pending

        sweep = database_sync_to_async(publish_pending)
        while True:
            await asyncio.sleep(realtime_settings.PUBLISH_SWEEP_SECS)
            try:
                published = await sweep()
                if published:
                    logger.warning("Published %d updates left in the outbox", published)
            except Exception:
                logger.exception("Sweeping the outbox of committed updates failed")

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
