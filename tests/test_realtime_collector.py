"""The young generations collected on a beat (realtime.collector), with CPython's real collector:
why the count-based trigger lets them fill, and that the beat empties them."""

from __future__ import annotations

import asyncio
import gc

import pytest

from realtime.collector import GENERATION_1_EVERY, collect_young_generations


class Connection:
    """Stands for a connection whose objects are replaced, not added (a ping's new selector key
    and masker): the new one allocated, the old one freed."""

    def __init__(self) -> None:
        self.state: list[int] = [0]

    def replace(self) -> None:
        self.state = [len(self.state)]


def young() -> int:
    return len(gc.get_objects(generation=0))


@pytest.fixture
def connections():
    gc.collect()
    held = [Connection() for _ in range(20_000)]
    gc.collect()  # all old now: the young generation is empty of them
    yield held
    del held[:]


def test_replaced_objects_fill_the_young_generation_without_triggering_a_collection(
    connections,
):
    """The premise: one allocation and one deallocation each, so the count never reaches the
    threshold, and 20,000 live objects wait in generation 0 for whatever collects it next."""
    gc.disable()  # only what the count would trigger: nothing, as below
    try:
        before = young()
        threshold = gc.get_threshold()[0]
        assert gc.get_count()[0] < threshold
        for connection in connections:
            connection.replace()
        assert gc.get_count()[0] < threshold, "replacing is not counted as growth"
        assert young() - before >= len(connections)
    finally:
        gc.enable()


async def test_the_beat_collects_the_young_generation_every_interval(connections):
    collections: list[int] = []

    def observe(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.callbacks.append(observe)
    beat = asyncio.get_running_loop().create_task(collect_young_generations(0.01))
    try:
        for connection in connections:
            connection.replace()
        assert young() >= len(connections)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if collections.count(1) >= 2:
                break
        assert young() < len(connections) // 10, "the replaced objects were walked and promoted"
        ones = collections.count(1)
        assert ones >= 2 and collections.count(0) >= (GENERATION_1_EVERY - 1) * (ones - 1)
    finally:
        beat.cancel()
        gc.callbacks.remove(observe)


@pytest.mark.parametrize("interval", [0.1, 0])
async def test_a_started_hub_keeps_the_beat_unless_it_is_zero(transactional_db, settings, interval):
    from realtime.hub import Hub
    from tests.test_realtime_hub import FlakyLayer

    settings.REALTIME = {**getattr(settings, "REALTIME", {}), "GC_YOUNG_INTERVAL_SECS": interval}
    hub = Hub()
    hub.layer = FlakyLayer(capacity=100)
    await hub.start()
    try:
        beats = [t for t in hub._tasks if "collect_young_generations" in repr(t.get_coro())]
        assert len(beats) == (1 if interval else 0)
    finally:
        await hub.stop()
    assert all(beat.done() for beat in beats)
