"""The hub: server-wide broadcasts, group membership, and each topic's stream (seq order,
duplicates, gap repair from the history, fenced subscriptions, resume)."""

from __future__ import annotations

import asyncio
import collections
import json
import time

import pytest


class Counted:
    """A subscriber recording, for each message, which turn of the event loop it came in."""

    turn = 0

    def __init__(self, connection_id: str):
        self.connection_id = connection_id
        self.user_id = None
        self.received: list[tuple[str, int]] = []

    def push(self, text: str) -> None:
        self.received.append((text, Counted.turn))

    def push_frame(self, text: str, data: bytes) -> bool:
        self.push(text)
        return True

    def close_with(self, code: int, reason: str = "") -> None: ...


async def test_a_server_wide_broadcast_reaches_everyone_in_slices_letting_the_loop_run():
    from realtime.hub import BROADCAST_SLICE, Hub

    hub = Hub()
    subscribers = [Counted(str(n)) for n in range(2 * BROADCAST_SLICE + 7)]
    for subscriber in subscribers:
        hub.register(subscriber)

    async def ticker():  # counts turns of the loop while the broadcast runs
        while True:
            Counted.turn += 1
            await asyncio.sleep(0)

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    await hub.broadcast("hb")
    ticking.cancel()
    assert all(len(s.received) == 1 and s.received[0][0] == "hb" for s in subscribers)
    turns = [s.received[0][1] for s in subscribers]
    slices = [turns[i : i + BROADCAST_SLICE] for i in range(0, len(turns), BROADCAST_SLICE)]
    assert len(slices) == 3
    assert all(len(set(one_slice)) == 1 for one_slice in slices), "a slice is sent in one go"
    assert slices[0][0] < slices[1][0] < slices[2][0], "the loop ran between slices"


# --- the hub itself, on a real in-process channel layer ----------------------------------------

from channels.layers import InMemoryChannelLayer  # noqa: E402

from realtime import connections as connection_records  # noqa: E402
from realtime import stats  # noqa: E402
from realtime.history import Position, memory_history  # noqa: E402
from realtime.hub import Hub, SubscribeRequest  # noqa: E402
from realtime.protocol import envelope_for_topic  # noqa: E402
from realtime.topics import group_name  # noqa: E402


class Listener:
    """A connection as the hub sees it: records what it is handed."""

    def __init__(self, name: str, user_id: int | None = 1):
        self.connection_id = name
        self.user_id = user_id
        self.topics: set[str] = set()
        self.received: list[str] = []
        self.closed: tuple[int, str] | None = None

    def push(self, text: str) -> None:
        self.received.append(text)

    def push_frame(self, text: str, data: bytes) -> bool:
        self.push(text)
        return True

    def close_with(self, code: int, reason: str = "") -> None:
        self.closed = (code, reason)

    async def recheck_permissions(self, topics):
        return []


class FlakyLayer(InMemoryChannelLayer):
    """The in-process layer, whose group joins fail while `down` is set (Redis unreachable)."""

    down = False

    async def group_add(self, group, channel):
        if self.down:
            raise ConnectionError("the layer is down")
        return await super().group_add(group, channel)


@pytest.fixture
async def hub(transactional_db):
    memory_history().reset()
    hub = Hub()
    hub.layer = FlakyLayer(capacity=10_000)
    hub.history = memory_history()
    await hub.start()
    yield hub
    await hub.stop()


async def subscribe(hub, listener, *topics, since=None, snapshot=False):
    """Subscribe like the consumer: fenced, then released; returns the results."""
    listener.topics.update(topics)
    results = await hub.subscribe(
        listener, [SubscribeRequest(t, since=since, snapshot=snapshot) for t in topics]
    )
    for result in results:
        if result.failed:
            listener.topics.discard(result.topic)
            continue
        for text in result.replay:
            listener.push(text)
        hub.release(result.topic, listener)
    return results


def publish(hub, topic, n=1, *, deliver=True):
    """Append `n` messages to the topic's history and hand them to the hub (unless dropped)."""
    texts = []
    for _ in range(n):
        envelope = envelope_for_topic("MARKET_DATA", topic, "{}", "2026-11-29T00:00:00.000Z")
        position = hub.history.append_now([topic], [envelope]).positions[0]
        text = envelope.text(position.seq, position.epoch)
        texts.append(text)
        if deliver:
            hub.receive(topic, position.epoch, position.seq, text)
    return texts


def seqs(listener):
    return [json.loads(text)["seq"] for text in listener.received]


class LoopTurns:
    """Counts turns of the event loop while it runs; `Slow` listeners note the turn each message
    reached them in, and take ~0.2 ms a push (a big broadcast's socket writes, slowed)."""

    def __init__(self) -> None:
        self.turn = 0
        self.task: asyncio.Task[None] | None = None
        turns = self

        class Slow(Listener):
            def push(self, text: str) -> None:
                time.sleep(0.0002)
                self.received.append((text, turns.turn))

        self.Slow = Slow

    async def __aenter__(self) -> LoopTurns:
        async def tick() -> None:
            while True:
                self.turn += 1
                await asyncio.sleep(0)

        self.task = asyncio.create_task(tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()

    @staticmethod
    async def until_all(listeners: list[Listener], count: int) -> None:
        for _ in range(300):
            if all(len(listener.received) == count for listener in listeners):
                return
            await asyncio.sleep(0.01)

    @staticmethod
    def turns_apart(listeners: list[Listener], count: int) -> int:
        """How many distinct loop turns the `count` messages went out in, each in one go."""
        turns = [[t for _, t in listener.received] for listener in listeners]
        per_message = [{row[index] for row in turns} for index in range(count)]
        assert all(len(seen) == 1 for seen in per_message), "one message goes out in one go"
        return len({next(iter(seen)) for seen in per_message})


async def test_a_backlog_from_the_layer_is_dispatched_with_the_loop_running_in_between(hub):
    """Ten messages queued at once for a topic whose delivery takes ~20 ms each (a busy
    publish): the receive loop yields between them instead of holding the loop ~200 ms."""
    from realtime.hub import HUB_MESSAGE

    topic = "market:SLOW"
    async with LoopTurns() as loop:
        listeners = [loop.Slow(str(n)) for n in range(100)]
        for listener in listeners:
            await subscribe(hub, listener, topic)
        texts = publish(hub, topic, 10, deliver=False)
        for seq, text in enumerate(texts, start=1):
            epoch = json.loads(text)["epoch"]
            message = {"type": HUB_MESSAGE, "topic": topic, "epoch": epoch, "seq": seq}
            await hub.layer.send(hub.channel_name, message | {"text": text})
        await loop.until_all(listeners, 10)
    assert [text for text, _ in listeners[0].received] == texts  # all, in order
    distinct = loop.turns_apart(listeners, 10)
    assert distinct >= 5, f"the loop ran between messages only {distinct - 1} times"


async def test_a_broadcast_is_counted_once_per_connection_it_reached_not_per_closing_one(hub):
    """The fused path counts a slice's deliveries once; a connection that is closing takes none
    and is not counted as sent."""
    from realtime import metrics

    class Closing(Listener):
        def push_frame(self, text: str, data: bytes) -> bool:
            return False

    open_ones = [Listener(f"c{n}") for n in range(3)]
    closing = Closing("gone")
    for listener in [*open_ones, closing]:
        await subscribe(hub, listener, "market:CNT")
    before = metrics._sent["MARKET_DATA"]
    publish(hub, "market:CNT", 2)
    assert metrics._sent["MARKET_DATA"] - before == 2 * len(open_ones)
    assert all(seqs(listener) == [1, 2] for listener in open_ones) and closing.received == []


async def test_a_long_gap_is_repaired_in_order_with_the_loop_running_in_between(hub):
    """Twenty messages the layer dropped on a topic whose delivery takes ~20 ms each: the
    repair reads them from the history and delivers them, and what arrived meanwhile, in seq
    order, letting the loop run between them instead of holding it ~400 ms."""
    topic = "market:GAP"
    async with LoopTurns() as loop:
        listeners = [loop.Slow(str(n)) for n in range(100)]
        for listener in listeners:
            await subscribe(hub, listener, topic)
        dropped = publish(hub, topic, 20, deliver=False)  # the layer lost these
        later = publish(hub, topic, 1)  # this one arrives: a gap of 20 -> repair
        await asyncio.sleep(0.01)
        during = publish(hub, topic, 3)  # published while the repair delivers
        await loop.until_all(listeners, 24)
    assert [text for text, _ in listeners[0].received] == dropped + later + during
    distinct = loop.turns_apart(listeners, 24)
    assert distinct >= 8, f"the loop ran between repaired messages only {distinct - 1} times"


async def test_a_failed_group_join_leaves_nothing_half_subscribed(hub):
    listener = Listener("c1")
    hub.layer.down = True
    results = await subscribe(hub, listener, "market:AAPL", "market:MSFT")
    assert [r.failed for r in results] == [True, True]
    assert hub.topics == {} and hub._held == {} and hub._streams == {}
    assert group_name("market:AAPL") not in hub._joined
    hub.layer.down = False
    results = await subscribe(hub, listener, "market:AAPL")
    assert not results[0].failed and results[0].position.seq == 0
    assert hub.topics == {"market:AAPL": {listener: None}}


async def test_membership_locks_are_dropped_once_no_change_is_under_way(hub):
    listeners = [Listener(f"c{n}") for n in range(3)]
    for n in range(50):
        topic = f"market:S{n}"
        await asyncio.gather(*(subscribe(hub, listener, topic) for listener in listeners))
        await asyncio.gather(*(hub.unsubscribe(listener, [topic]) for listener in listeners))
    assert hub._topic_locks == {} and hub._streams == {} and hub._held == {}
    assert hub._joined == {"rt.control"}


async def test_a_stream_delivers_in_seq_order_and_skips_duplicates(hub):
    listener = Listener("c1")
    [result] = await subscribe(hub, listener, "orders")
    assert result.position.seq == 0
    texts = publish(hub, "orders", 3)
    hub.receive("orders", result.position.epoch, 2, texts[1])  # again: a duplicate
    assert seqs(listener) == [1, 2, 3]


async def test_a_message_dropped_by_the_layer_is_repaired_from_the_history(hub):
    listener = Listener("c1")
    await subscribe(hub, listener, "orders")
    publish(hub, "orders", 2)
    publish(hub, "orders", 2, deliver=False)  # seqs 3 and 4 never reach the hub
    publish(hub, "orders", 1)  # 5 shows the gap
    assert seqs(listener) == [1, 2]  # 5 waits for the repair
    await asyncio.sleep(0.01)
    assert seqs(listener) == [1, 2, 3, 4, 5]
    publish(hub, "orders", 1)
    assert seqs(listener) == [1, 2, 3, 4, 5, 6]


async def test_the_last_messages_of_a_burst_dropped_by_the_layer_are_repaired(hub):
    listener = Listener("c1")
    await subscribe(hub, listener, "orders")
    publish(hub, "orders", 2)
    publish(hub, "orders", 2, deliver=False)  # the burst's tail: nothing after it shows the gap
    assert seqs(listener) == [1, 2]
    await asyncio.sleep(1.5)  # quiet for a moment: the hub compares with the history's head
    assert seqs(listener) == [1, 2, 3, 4]


async def test_messages_crossing_in_the_layer_are_delivered_in_seq_order(hub):
    listener = Listener("c1")
    await subscribe(hub, listener, "orders")
    first, second = publish(hub, "orders", 2, deliver=False)
    epoch = json.loads(first)["epoch"]
    hub.receive("orders", epoch, 2, second)  # the later publisher's send arrived first
    hub.receive("orders", epoch, 1, first)
    await asyncio.sleep(0.01)
    assert seqs(listener) == [1, 2]


async def test_a_gap_the_history_no_longer_holds_is_delivered_and_counted(hub, settings):
    settings.REALTIME = {"HISTORY_SIZE": 2}
    listener = Listener("c1")
    await subscribe(hub, listener, "orders")
    publish(hub, "orders", 1)
    publish(hub, "orders", 4, deliver=False)  # 2-5 never reach the hub
    before = stats.counters["gaps_unrepaired"]
    publish(hub, "orders", 1)  # 6: the history holds only 5 and 6 now
    await asyncio.sleep(0.01)
    assert seqs(listener) == [1, 6]  # the client sees the jump and reloads
    assert stats.counters["gaps_unrepaired"] == before + 1


async def test_a_subscription_takes_effect_at_its_position_with_no_gap_or_duplicate(hub):
    early, late = Listener("c1"), Listener("c2")
    await subscribe(hub, early, "orders")
    publish(hub, "orders", 3)
    [result] = await subscribe(hub, late, "orders")
    assert result.position.seq == 3
    publish(hub, "orders", 2)
    assert seqs(early) == [1, 2, 3, 4, 5] and seqs(late) == [4, 5]


async def test_messages_during_a_fence_wait_in_the_hold_and_follow_the_replay(hub):
    watcher, resumer = Listener("c1"), Listener("c2")
    await subscribe(hub, watcher, "orders")
    publish(hub, "orders", 5)
    epoch = json.loads(watcher.received[0])["epoch"]
    resumer.topics.add("orders")
    [result] = await hub.subscribe(resumer, [SubscribeRequest("orders", since=Position(epoch, 2))])
    assert result.recovered and [json.loads(t)["seq"] for t in result.replay] == [3, 4, 5]
    publish(hub, "orders", 2)  # live while the reply is being sent: held
    assert resumer.received == []
    for text in result.replay:
        resumer.push(text)
    hub.release("orders", resumer)
    assert seqs(resumer) == [3, 4, 5, 6, 7]
    assert seqs(watcher) == [1, 2, 3, 4, 5, 6, 7]


async def test_a_resume_reports_recovered_or_reset_with_a_reason(hub, settings):
    settings.REALTIME = {"HISTORY_SIZE": 10}
    watcher = Listener("c1")
    await subscribe(hub, watcher, "orders")
    publish(hub, "orders", 30)
    epoch = hub.history.epoch

    def resume(seq, epoch=epoch):
        return subscribe(hub, Listener("r"), "orders", since=Position(epoch, seq))

    [nothing_missed] = await resume(30)
    assert nothing_missed.recovered and nothing_missed.replay == []
    [recent] = await resume(25)
    assert recent.recovered and len(recent.replay) == 5
    [too_old] = await resume(5)
    assert too_old.reset == "expired" and too_old.replay == []
    [other_epoch] = await resume(25, epoch="another")
    assert other_epoch.reset == "epoch"
    [ahead] = await resume(99)
    assert ahead.reset == "epoch"  # a position this history never had


async def test_a_client_ahead_of_this_process_gets_nothing_it_already_holds(hub):
    watcher = Listener("c1")
    await subscribe(hub, watcher, "orders")
    publish(hub, "orders", 2)
    texts = publish(hub, "orders", 3, deliver=False)  # 3-5 still on their way here
    resumer = Listener("c2")
    [result] = await subscribe(hub, resumer, "orders", since=Position(hub.history.epoch, 4))
    assert result.recovered and result.position.seq == 4
    for text in texts:  # the live copies arrive after all
        payload = json.loads(text)
        hub.receive("orders", payload["epoch"], payload["seq"], text)
    publish(hub, "orders", 1)
    assert seqs(resumer) == [5, 6]
    assert seqs(watcher) == [1, 2, 3, 4, 5, 6]


async def test_a_new_epoch_restarts_the_stream(hub):
    listener = Listener("c1")
    await subscribe(hub, listener, "orders")
    publish(hub, "orders", 2)
    old = hub.history.epoch
    late = publish(hub, "orders", 1, deliver=False)  # numbered in the old epoch, sent late
    hub.history.reset()
    publish(hub, "orders", 1)
    await asyncio.sleep(0.01)  # the history is asked which epoch is current
    payload = json.loads(late[0])
    hub.receive("orders", payload["epoch"], payload["seq"], late[0])  # arrives after the reset
    publish(hub, "orders", 1)
    assert [(json.loads(t)["epoch"], json.loads(t)["seq"]) for t in listener.received] == [
        (old, 1),
        (old, 2),
        (hub.history.epoch, 1),
        (hub.history.epoch, 2),
    ]  # old 3 was never delivered here before the reset, and is not after it either


async def test_heartbeat_positions_never_run_ahead_of_what_a_connection_was_handed(hub):
    watcher, resumer = Listener("c1"), Listener("c2")
    await subscribe(hub, watcher, "orders")
    publish(hub, "orders", 3)
    watcher.topics = {"orders"}
    assert hub.positions(watcher) == {"orders": {"epoch": hub.history.epoch, "seq": 3}}
    resumer.topics.add("orders")
    await hub.subscribe(resumer, [SubscribeRequest("orders")])
    publish(hub, "orders", 1)
    assert hub.positions(resumer) == {}  # held: nothing to report yet
    hub.release("orders", resumer)
    assert hub.positions(resumer)["orders"]["seq"] == 4


async def test_connections_at_the_same_positions_share_one_heartbeat_text(hub):
    """10,000 subscribers of one topic got 10,000 HEARTBEATs encoded one by one (a slice of
    500 held the loop tens of ms); now one text for each distinct set of positions."""
    same = [Listener(f"s{n}") for n in range(3)]
    held, bare = Listener("held"), Listener("bare")
    for listener in same:
        await subscribe(hub, listener, "orders")
    publish(hub, "orders", 2)
    held.topics.add("orders")
    await hub.subscribe(held, [SubscribeRequest("orders")])  # fenced, not yet released
    for listener in [*same, held, bare]:
        hub.register(listener)
    await hub.send_heartbeats()
    texts = [listener.received[-1] for listener in same]
    assert texts[0] is texts[1] is texts[2]
    payload = json.loads(texts[0])["payload"]
    assert payload["positions"] == {"orders": {"epoch": hub.history.epoch, "seq": 2}}
    for other in (held, bare):  # no position to report: the bare HEARTBEAT
        [text] = other.received
        assert (
            json.loads(text)["type"] == "HEARTBEAT"
            and "positions" not in json.loads(text)["payload"]
        )
    assert held.received[0] is bare.received[0]


async def test_a_heartbeat_whose_writes_slow_down_yields_to_the_loop_within_its_budget(hub):
    """Sends that slow down (0.2 ms a push): a slice of 500 would hold the loop ~100 ms; the
    budget (SLICE_BUDGET_SECS, checked every SLICE_STEP connections) ends it early."""
    from realtime.hub import SLICE_STEP

    async with LoopTurns() as loop:
        listeners = [loop.Slow(str(n)) for n in range(500)]
        for listener in listeners:
            hub.register(listener)
        await hub.send_heartbeats()
    turns = [turn for listener in listeners for _, turn in listener.received]
    per_turn = collections.Counter(turns)
    assert len(per_turn) >= 4, f"500 slow sends in {len(per_turn)} loop turns"
    assert max(per_turn.values()) <= SLICE_STEP


async def test_a_start_that_fails_half_way_leaves_nothing_running(transactional_db, monkeypatch):
    hub = Hub()
    hub.layer = FlakyLayer(capacity=100)
    register = connection_records.server_process_register
    calls = []

    def fail_once(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise RuntimeError("database unavailable")
        return register(**kwargs)

    monkeypatch.setattr(connection_records, "server_process_register", fail_once)
    with pytest.raises(RuntimeError):
        await hub.start()
    assert not hub.started and hub._tasks == [] and hub.channel_name is None
    assert hub.layer.groups.get("rt.control", {}) == {}  # its first channel left the group
    await hub.start()
    try:
        receive_loops = [t for t in hub._tasks if "_receive_loop" in repr(t.get_coro())]
        assert len(receive_loops) == 1
        assert list(hub.layer.groups["rt.control"]) == [hub.channel_name]
    finally:
        await hub.stop()


async def test_a_huge_topic_is_delivered_in_slices_in_order(hub, settings):
    settings.REALTIME = {"DELIVERY_SLICE": 100}
    listeners = [Listener(f"c{n}") for n in range(250)]
    for listener in listeners:
        await subscribe(hub, listener, "market:AAPL")
    hub.deliver("market:AAPL", 1, "t1")
    hub.deliver("market:AAPL", 2, "t2")  # queued behind the first one's slices
    handed = sum(len(listener.received) for listener in listeners)
    assert handed == 0  # nothing at once: the slices run on the loop
    await asyncio.sleep(0)
    assert sum(len(listener.received) for listener in listeners) <= 100
    for _ in range(20):
        await asyncio.sleep(0)
    assert all(listener.received == ["t1", "t2"] for listener in listeners)
    assert hub._backlog == {}


async def test_a_connection_that_leaves_between_slices_is_handed_nothing_more(hub, settings):
    """Slices after the first check their part against the topic's members only once
    membership moved; one that left (or was moved to a throttled lane) is skipped from then."""
    settings.REALTIME = {"DELIVERY_SLICE": 100}
    listeners = [Listener(f"c{n}") for n in range(300)]
    for listener in listeners:
        await subscribe(hub, listener, "market:AAPL")
    hub.deliver("market:AAPL", 1, "t1")
    await asyncio.sleep(0)  # the first slice: listeners 0-99
    handed = [n for n, listener in enumerate(listeners) if listener.received]
    assert handed == list(range(100))  # in the order they subscribed
    leaving = listeners[150]
    await hub.unsubscribe(leaving, ["market:AAPL"])
    for _ in range(10):
        await asyncio.sleep(0)
    assert leaving.received == []
    assert all(listener.received == ["t1"] for listener in listeners if listener is not leaving)
    hub.deliver("market:AAPL", 2, "t2")  # and after: a snapshot without it
    for _ in range(10):
        await asyncio.sleep(0)
    assert leaving.received == [] and listeners[299].received == ["t1", "t2"]


# --- throttled subscriptions: lanes (CONTRACT section 10, issue 18) ------------------------------

from realtime.conflation import Conflator  # noqa: E402
from realtime.subscriptions import Filter, parse_subscribe_entry  # noqa: E402
from tests.test_subscriptions import FakeTime  # noqa: E402


def on_a_fake_clock(hub) -> FakeTime:
    """The hub's conflator on a fake clock, so intervals are exact and the test decides when
    they pass."""
    clock = FakeTime()
    hub.conflator = Conflator(clock=lambda: clock.now, call_at=clock.call_at)
    return clock


def shaping(topic, **options):
    return parse_subscribe_entry({"topic": topic, **options}).shaping


async def subscribe_shaped(hub, listener, topic, *, release=True, **options):
    listener.topics.add(topic)
    [result] = await hub.subscribe(
        listener, [SubscribeRequest(topic, shaping=shaping(topic, **options))]
    )
    if release:
        hub.release(topic, listener)
    return result


def ticks(hub, topic, n=1, bid="1"):
    """Publish `n` MARKET_DATA of `topic` with the given bid; their seqs."""
    published = []
    for _ in range(n):
        envelope = envelope_for_topic(
            "MARKET_DATA", topic, json.dumps({"bid": bid}), "2026-11-29T00:00:00.000Z"
        )
        position = hub.history.append_now([topic], [envelope]).positions[0]
        hub.receive(
            topic, position.epoch, position.seq, envelope.text(position.seq, position.epoch)
        )
        published.append(position.seq)
    return published


async def test_throttled_subscriptions_alike_share_a_lane_offered_and_filtered_once_a_tick(
    hub, monkeypatch
):
    clock = on_a_fake_clock(hub)
    topic = "market:AAPL"
    plain = [Listener(f"p{n}") for n in range(30)]
    filtered = [Listener(f"f{n}") for n in range(20)]
    slow = [Listener(f"s{n}") for n in range(10)]
    everything = Listener("all")
    for listener in plain:
        await subscribe_shaped(hub, listener, topic, throttleMs=250)
    for listener in filtered:
        await subscribe_shaped(hub, listener, topic, throttleMs=250, filter={"bid": "1"})
    for listener in slow:
        await subscribe_shaped(hub, listener, topic, throttleMs=1000)
    await subscribe(hub, everything, topic)
    assert len(hub._lanes[topic]) == 3 and hub.conflator.lanes == 3
    offers, checks = [], []
    offer, accepts = hub.conflator.offer, Filter.accepts
    monkeypatch.setattr(hub.conflator, "offer", lambda *a: offers.append(a) or offer(*a))
    monkeypatch.setattr(Filter, "accepts", lambda f, p: checks.append(p) or accepts(f, p))
    first = ticks(hub, topic, 5, bid="1") + ticks(hub, topic, 5, bid="2")
    assert len(checks) == 10  # the filter once a tick, for its whole lane
    # Per lane, not per subscriber: the first tick is sent, the next held, and the rest only
    # replace what the lane holds.
    assert len(offers) == 2 * 3
    assert all(seqs(listener) == first[:1] for listener in plain + filtered + slow)
    clock.advance(0.25)
    assert all(seqs(listener) == [first[0], first[9]] for listener in plain)
    assert all(seqs(listener) == [first[0], first[4]] for listener in filtered)
    assert all(seqs(listener) == first[:1] for listener in slow)
    clock.advance(0.75)
    assert all(seqs(listener) == [first[0], first[9]] for listener in slow)
    assert seqs(everything) == first


async def test_a_fenced_throttled_subscription_gets_what_follows_its_position_and_no_more(hub):
    """A subscription joining a lane between two of its sends is held (fenced) meanwhile: the
    lane skips it; released, it never gets the tick the lane holds for the others at or below
    its position, and gets a newer one within the interval, one an interval at most."""
    clock = on_a_fake_clock(hub)
    topic = "market:AAPL"
    early, late, later = Listener("early"), Listener("late"), Listener("later")
    await subscribe_shaped(hub, early, topic, throttleMs=250)
    first = ticks(hub, topic, 3)  # 1 at once, 3 held for the lane
    [result] = [await subscribe_shaped(hub, late, topic, throttleMs=250)]
    assert result.position.seq == first[2]
    clock.advance(0.25)
    assert seqs(early) == [first[0], first[2]] and seqs(late) == []
    await subscribe_shaped(hub, later, topic, throttleMs=250, release=False)
    clock.advance(0.1)
    [fourth] = ticks(hub, topic)  # while `later` is held: it waits in the lane, not for it
    clock.advance(0.15)  # the lane sends 4 at 0.5, to `early` and `late`
    assert seqs(early)[-1] == seqs(late)[-1] == fourth and seqs(later) == []
    clock.advance(0.1)
    hub.release(topic, later)  # it missed 4: owed, one interval after the lane's last send
    clock.advance(0.1)
    assert seqs(later) == []
    clock.advance(0.05)
    assert seqs(later) == [fourth] and seqs(early) == [first[0], first[2], fourth]
    [fifth] = ticks(hub, topic)  # the lane's cadence counts from that send, for everyone
    clock.advance(0.2)
    assert seqs(later) == [fourth]
    clock.advance(0.05)
    assert seqs(later) == seqs(late) == [fourth, fifth] and seqs(early)[-1] == fifth


async def test_churning_throttled_subscriptions_leaves_no_lane_behind(hub):
    import random

    clock = on_a_fake_clock(hub)
    rng = random.Random(18)
    listeners = [Listener(f"c{n}") for n in range(40)]
    topics = ["market:AAPL", "market:MSFT"]
    options = [
        {"throttleMs": 250},
        {"throttleMs": 500},
        {"throttleMs": 250, "filter": {"bid": "1"}},
    ]
    for _ in range(300):
        listener, topic = rng.choice(listeners), rng.choice(topics)
        action = rng.random()
        if action < 0.45:
            await subscribe_shaped(hub, listener, topic, **rng.choice(options))
        elif action < 0.55:
            await subscribe(hub, listener, topic)
        elif action < 0.85:
            listener.topics.discard(topic)
            await hub.unsubscribe(listener, [topic])
        else:
            [seq] = ticks(hub, topic, bid=rng.choice("12"))
            for each in hub.topics.get(topic, ()):  # the unthrottled ones get it at once
                if hub.shaping_of(topic, each) is None:
                    assert seqs(each)[-1] == seq
            clock.advance(rng.random() * 0.3)
    assert hub.conflator.lanes > 0
    for listener in listeners:
        await hub.unsubscribe(listener, list(listener.topics))
        listener.topics.clear()
    clock.advance(1)
    assert hub._lanes == {} and hub._direct == {} and hub._shaped == {} and hub._held == {}
    assert hub.conflator.lanes == 0 and hub.conflator.entries == 0


async def test_a_throttled_subscription_being_rechecked_is_skipped_then_gets_the_latest(hub):
    """While its permissions are re-checked (CONTRACT section 11) a throttled subscription's
    lane skips it; once allowed again it gets the latest tick it missed, within the interval."""
    clock = on_a_fake_clock(hub)
    topic = "market:AAPL"
    gate = asyncio.Event()

    class Rechecked(Listener):
        async def recheck_permissions(self, topics):
            await gate.wait()
            return []

    steady, rechecked = Listener("steady", user_id=2), Rechecked("rechecked", user_id=1)
    hub.register(steady)
    hub.register(rechecked)
    await subscribe_shaped(hub, steady, topic, throttleMs=250)
    await subscribe_shaped(hub, rechecked, topic, throttleMs=250)
    first = ticks(hub, topic)
    hub.handle_control({"action": "recheck", "user_ids": [1]})
    later = ticks(hub, topic, 3)
    clock.advance(0.25)
    assert seqs(steady) == [first[0], later[-1]] and seqs(rechecked) == first
    gate.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not hub._held
    clock.advance(0.2)
    assert seqs(rechecked) == first
    clock.advance(0.05)
    assert seqs(rechecked) == [first[0], later[-1]] and seqs(steady) == [first[0], later[-1]]


async def test_lanes_take_only_the_newest_of_a_backlog_one_assignment_an_entry(
    hub, settings, monkeypatch
):
    """A topic whose plain subscribers are delivered in slices queues its next ticks behind
    them; its lanes are not in that queue: each queued tick replaces what a lane holds (an
    assignment, no call), and the lane sends the newest when its interval has passed, however
    far the slices have got."""
    settings.REALTIME = {"DELIVERY_SLICE": 100}
    clock = on_a_fake_clock(hub)
    topic = "market:AAPL"
    plain = [Listener(f"p{n}") for n in range(250)]
    throttled = [Listener(f"t{n}") for n in range(300)]
    for listener in plain:
        await subscribe(hub, listener, topic)
    for listener in throttled:
        await subscribe_shaped(hub, listener, topic, throttleMs=250)
    offers = []
    offer = hub.conflator.offer
    monkeypatch.setattr(hub.conflator, "offer", lambda *a: offers.append(a) or offer(*a))
    published = ticks(hub, topic, 30)
    assert hub._backlog[topic]  # the plain subscribers' slices have not run yet
    assert len(offers) == 2  # the first sent, the second held, 28 assignments
    clock.advance(0.25)
    assert all(seqs(listener) == [published[0], published[-1]] for listener in throttled)
    for _ in range(200):
        await asyncio.sleep(0)
        if topic not in hub._backlog:
            break
    assert all(seqs(listener) == published for listener in plain)


async def test_a_gap_repaired_from_the_history_costs_a_lane_an_assignment_an_entry(
    hub, monkeypatch
):
    clock = on_a_fake_clock(hub)
    topic = "market:AAPL"
    plain, throttled = Listener("plain"), Listener("throttled")
    await subscribe(hub, plain, topic)
    await subscribe_shaped(hub, throttled, topic, throttleMs=250)
    offers = []
    offer = hub.conflator.offer
    monkeypatch.setattr(hub.conflator, "offer", lambda *a: offers.append(a) or offer(*a))
    publish(hub, topic, 40, deliver=False)  # the layer dropped 40
    [last] = ticks(hub, topic)  # the 41st shows the gap: repaired from the history
    for _ in range(50):
        await asyncio.sleep(0)
        if seqs(plain) and seqs(plain)[-1] == last:
            break
    assert seqs(plain) == list(range(1, last + 1))
    assert len(offers) == 2 and seqs(throttled) == [1]
    clock.advance(0.25)
    assert seqs(throttled) == [1, last]
