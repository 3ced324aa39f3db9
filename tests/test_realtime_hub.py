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
