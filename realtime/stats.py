"""Per-process counters of what the real-time module could not do (failed publishes, drops).

Every drop that remains is logged where it happens and counted here, in one place, so tests
(and the metrics endpoint, when it exists) can see that it happened.
"""

from __future__ import annotations

import collections

counters: collections.Counter[str] = collections.Counter()


def count(name: str, amount: int = 1) -> None:
    counters[name] += amount
