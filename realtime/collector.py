"""The cyclic garbage collector's young generations, collected on a beat instead of by count.

CPython collects generation 0 when the objects it tracks have grown by its first threshold:
allocations minus deallocations. A server holding many connections mostly *replaces* objects:
each of Daphne's keep-alive pings, per connection, gives the connection a new asyncio
`SelectorKey`, a new autobahn masker and cffi buffer for the pong, new asyncio `Handle`s, while
the old ones are freed. Each replacement is one allocation and one deallocation, so the count
stands still while the young generation fills with live objects the collector must then walk:
at 10,000 connections, young collections of 70,000-160,000 live objects, 12-49 ms each, and
loop stalls over 50 ms (docs/BENCHMARKS.md, "Growth curves"). Collected every
GC_YOUNG_INTERVAL_SECS instead (and generation 1 every tenth time), each collection walks only
what the last interval left alive: the same objects are walked the same number of times in all,
in small steps.

The thresholds still apply in between (tradingrt.asgi sets them), so a burst of allocations is
collected as before.
"""

from __future__ import annotations

import asyncio
import gc

# Every this many beats, generation 1 too (CPython's own ratio between the two: its default
# second threshold is 10).
GENERATION_1_EVERY = 10


async def collect_young_generations(interval: float) -> None:
    """Collect generation 0 every `interval` seconds, and generation 1 every tenth time."""
    beats = 0
    while True:
        await asyncio.sleep(interval)
        beats += 1
        gc.collect(1 if beats % GENERATION_1_EVERY == 0 else 0)
