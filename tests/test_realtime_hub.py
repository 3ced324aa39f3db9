"""The hub: ordering of each object's updates (Sequencer) and server-wide broadcasts."""

from __future__ import annotations

import asyncio

import pytest

from realtime.hub import Sequencer


class Recorder:
    def __init__(self):
        self.delivered: list[tuple[str, str]] = []

    def __call__(self, topic: str, text: str) -> None:
        self.delivered.append((topic, text))

    def texts(self, topic: str = "orders") -> list[str]:
        return [text for t, text in self.delivered if t == topic]


@pytest.fixture
def recorder():
    return Recorder()


async def test_in_order_updates_pass_straight_through(recorder):
    sequencer = Sequencer(recorder)
    for seq in (1, 2, 3):
        sequencer.offer("orders", "order:1", seq, f"v{seq}")
    assert recorder.texts() == ["v1", "v2", "v3"]


async def test_an_update_ahead_of_its_predecessor_waits_for_it(recorder, settings):
    settings.REALTIME = {"REORDER_WAIT_SECS": 5}
    sequencer = Sequencer(recorder)
    sequencer.offer("orders", "order:1", 1, "v1")
    sequencer.offer("orders", "order:1", 3, "v3")
    sequencer.offer("orders", "order:1", 4, "v4")
    assert recorder.texts() == ["v1"]
    sequencer.offer("orders", "order:1", 2, "v2")
    assert recorder.texts() == ["v1", "v2", "v3", "v4"]


async def test_a_predecessor_that_never_comes_is_given_up_on(recorder, settings):
    settings.REALTIME = {"REORDER_WAIT_SECS": 0.05}
    sequencer = Sequencer(recorder)
    sequencer.offer("orders", "order:1", 1, "v1")
    sequencer.offer("orders", "order:1", 4, "v4")
    sequencer.offer("orders", "order:1", 3, "v3")
    await asyncio.sleep(0.2)
    assert recorder.texts() == ["v1", "v3", "v4"]
    sequencer.offer("orders", "order:1", 2, "v2")  # too late: never delivered out of order
    sequencer.offer("orders", "order:1", 5, "v5")
    assert recorder.texts() == ["v1", "v3", "v4", "v5"]
    assert sequencer.dropped == 1


async def test_objects_and_topics_are_ordered_independently(recorder, settings):
    settings.REALTIME = {"REORDER_WAIT_SECS": 5}
    sequencer = Sequencer(recorder)
    sequencer.offer("orders", "order:1", 7, "a7")
    sequencer.offer("orders", "order:2", 3, "b3")
    sequencer.offer("user:1:orders", "order:1", 9, "c9")  # first seen on this topic
    sequencer.offer("orders", "order:1", 8, "a8")
    assert recorder.texts() == ["a7", "b3", "a8"]
    assert recorder.texts("user:1:orders") == ["c9"]


async def test_memory_is_bounded(recorder):
    sequencer = Sequencer(recorder)
    sequencer.MAX_TRACKED = 10
    for n in range(100):
        sequencer.offer("orders", f"order:{n}", 1, "x")
    assert len(sequencer._last) == 10
    assert len(recorder.delivered) == 100


class Counted:
    """A subscriber recording, for each message, which turn of the event loop it came in."""

    turn = 0

    def __init__(self, connection_id: str):
        self.connection_id = connection_id
        self.user_id = None
        self.received: list[tuple[str, int]] = []

    def push(self, text: str) -> None:
        self.received.append((text, Counted.turn))

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
from realtime.hub import Hub  # noqa: E402
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
    hub = Hub()
    hub.layer = FlakyLayer(capacity=10_000)
    await hub.start()
    yield hub
    await hub.stop()


async def test_a_failed_group_join_leaves_nothing_half_subscribed(hub):
    listener = Listener("c1")
    hub.layer.down = True
    assert await hub.subscribe(listener, ["market:AAPL", "market:MSFT"]) == [
        "market:AAPL",
        "market:MSFT",
    ]
    assert hub.topics == {}
    assert group_name("market:AAPL") not in hub._joined
    hub.layer.down = False
    assert await hub.subscribe(listener, ["market:AAPL"]) == []
    assert hub.topics == {"market:AAPL": {listener}}


async def test_membership_locks_are_dropped_once_no_change_is_under_way(hub):
    listeners = [Listener(f"c{n}") for n in range(3)]
    for n in range(50):
        topic = f"market:S{n}"
        await asyncio.gather(*(hub.subscribe(listener, [topic]) for listener in listeners))
        await asyncio.gather(*(hub.unsubscribe(listener, [topic]) for listener in listeners))
    assert hub._topic_locks == {}
    assert hub._joined == {"rt.control"}


async def test_leaving_a_topic_forgets_its_ordering_so_a_rejoin_delivers_at_once(hub, settings):
    settings.REALTIME = {"REORDER_WAIT_SECS": 5}
    listener = Listener("c1")
    await hub.subscribe(listener, ["orders"])
    hub.sequencer.offer("orders", "order:1", 1, "v1")
    await hub.unsubscribe(listener, ["orders"])
    await hub.subscribe(listener, ["orders"])
    hub.sequencer.offer("orders", "order:1", 7, "v7")  # v2-v6 went while nobody here listened
    assert listener.received == ["v1", "v7"]


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
        await hub.subscribe(listener, ["market:AAPL"])
    hub.deliver("market:AAPL", "t1")
    hub.deliver("market:AAPL", "t2")  # queued behind the first one's slices
    handed = sum(len(listener.received) for listener in listeners)
    assert handed == 0  # nothing at once: the slices run on the loop
    await asyncio.sleep(0)
    assert sum(len(listener.received) for listener in listeners) <= 100
    for _ in range(20):
        await asyncio.sleep(0)
    assert all(listener.received == ["t1", "t2"] for listener in listeners)
    assert hub._backlog == {}
