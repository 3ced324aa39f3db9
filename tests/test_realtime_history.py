"""The topic history on Redis under a burst: it waits for a connection instead of failing.

The history shares the channel layer's connection pool (redis-py's, 100 connections per event
loop, which raises rather than waits when all are taken). A reconnect storm resumes hundreds of
subscriptions at once on one process (bench storm, docs/BENCHMARKS.md); each resume reads the
history. Those reads must neither fail (a wrong `reset: unavailable`) nor take the connections
the layer itself needs (its receive, its group sends), and a publish meanwhile must not wait
behind them.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from realtime.history import Read, RedisHistory
from realtime.protocol import envelope_for_topic

pytestmark = pytest.mark.redis

BURST = 600  # concurrent reads: several times the pool's 100 connections


@pytest.fixture
def layer(redis_target):
    from channels_redis.core import RedisChannelLayer

    return RedisChannelLayer(hosts=[redis_target["url"]], prefix=redis_target["prefix"])


async def test_a_burst_of_resumes_reads_the_history_without_exhausting_the_layers_pool(layer):
    history = RedisHistory(layer.connection, layer.prefix)
    topic = f"market:T{uuid.uuid4().hex[:6].upper()}"
    envelope = envelope_for_topic("MARKET_DATA", topic, "{}", "2026-11-29T00:00:00.000Z")
    for _ in range(10):
        await history.append([topic], [envelope])
    channel = await layer.new_channel("test.burst")
    await layer.group_add("burst", channel)

    async def layer_traffic() -> None:  # the layer's own use of the pool, meanwhile
        for number in range(20):
            await layer.group_send("burst", {"type": "tick", "n": number})
            await asyncio.sleep(0)

    results = await asyncio.gather(
        *(history.read(topic, 0) for _ in range(BURST)), layer_traffic(), return_exceptions=True
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == []
    reads = [r for r in results[:BURST] if isinstance(r, Read)]
    assert len(reads) == BURST
    assert all([seq for seq, _ in read.entries] == list(range(1, 11)) for read in reads)
    assert all(read.complete for read in reads)
    received = [await layer.receive(channel) for _ in range(20)]
    assert [m["n"] for m in received] == list(range(20))
    await layer.group_discard("burst", channel)


async def test_a_publish_does_not_queue_behind_a_burst_of_resume_reads(layer):
    history = RedisHistory(layer.connection, layer.prefix)
    topic = f"market:T{uuid.uuid4().hex[:6].upper()}"
    envelope = envelope_for_topic("MARKET_DATA", topic, "{}", "2026-11-29T00:00:00.000Z")
    await history.append([topic], [envelope])
    finished: list[str] = []

    async def read() -> None:
        await history.read(topic, 0)
        finished.append("read")

    async def publish() -> None:
        await history.append([topic], [envelope])
        finished.append("append")

    reads = [asyncio.ensure_future(read()) for _ in range(BURST)]
    await asyncio.sleep(0)  # every read has asked for its turn
    await asyncio.gather(publish(), *reads)
    # Its own bound: done among the first reads, not after the burst.
    assert finished.index("append") < BURST // 2
