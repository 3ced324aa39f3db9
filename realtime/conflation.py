"""Per-subscription throttling of latest-value topics (CONTRACT section 10, `throttleMs`).

A throttled subscription gets at most one message per interval, always the latest, and the last
message of a burst is never held for longer than the interval. Thousands of connections each
throttling dozens of symbols must not cost a task or a timer each: one `Conflator` per hub keeps
the subscriptions that hold a message in a heap ordered by when each may send next, and one
timer handle, armed for the earliest, flushes every one that is due. A held message is the
same text object every subscriber got (encoded once), so holding costs a reference.

Subscriptions offered the same tick fall due together, so one timer may find thousands due at
once; it sends at most `slice_size` of them and leaves the rest for the next loop turn (a timer
due at once), so that a flush never holds the loop for longer than a slice of deliveries, as
the hub's own broadcasts do (DELIVERY_SLICE).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any


class Slot:
    """One throttled subscription: when it last sent, and the message it holds, if any.

    Invariant: a slot that holds a message is scheduled (in the due heap, to be flushed), and a
    cancelled slot holds nothing; so replacing what a holding slot holds is a whole offer (the
    hub does that inline for speed)."""

    __slots__ = ("active", "held", "interval", "last_sent", "push", "scheduled")

    def __init__(self, push: Callable[[Any], None], interval: float) -> None:
        self.push = push
        self.interval = interval
        self.last_sent = float("-inf")
        self.held: Any = None
        self.scheduled = False
        self.active = True


class Conflator:
    """Sends each slot's latest message at most once per its interval, on one timer."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] | None = None,
        call_at: Callable[[float, Callable[[], None]], Any] | None = None,
        slice_size: int = 1000,
    ) -> None:
        self._clock = clock
        self._call_at = call_at
        self.slice_size = max(1, slice_size)
        self._due: list[tuple[float, int, Slot]] = []
        self._order = itertools.count()
        self._timer: Any = None
        self._timer_at = float("inf")

    def now(self) -> float:
        if self._clock is not None:
            return self._clock()
        return asyncio.get_running_loop().time()

    def slot(self, push: Callable[[Any], None], interval_ms: int) -> Slot:
        return Slot(push, interval_ms / 1000)

    def offer(self, slot: Slot, message: Any) -> None:
        """A new message for `slot`: sent now if its interval has passed, else held (replacing
        what it held) until the interval since its last send has passed."""
        if not slot.active:
            return
        now = self.now()
        if slot.held is None and now - slot.last_sent >= slot.interval:
            slot.last_sent = now
            slot.push(message)
            return
        slot.held = message
        if not slot.scheduled:
            slot.scheduled = True
            due = slot.last_sent + slot.interval
            heapq.heappush(self._due, (due, next(self._order), slot))
            if due < self._timer_at:
                self._arm(due)

    def cancel(self, slot: Slot) -> None:
        """The subscription ended: what it holds is dropped (its heap entry lapses)."""
        slot.active = False
        slot.held = None

    def flush(self) -> None:
        """Send what due slots hold, up to `slice_size`; re-arm for the rest or the next one."""
        self._timer = None
        self._timer_at = float("inf")
        now = self.now()
        budget = self.slice_size
        # The loop may run a timer up to its clock resolution early: what is due within a
        # millisecond goes now rather than spinning for it.
        while self._due and self._due[0][0] <= now + 0.001:
            if not budget:  # more are due: they go on the next loop turn, after other work
                self._arm(now)
                return
            _, _, slot = heapq.heappop(self._due)
            slot.scheduled = False
            if slot.active and slot.held is not None:
                message, slot.held = slot.held, None
                slot.last_sent = now
                slot.push(message)
                budget -= 1
        if self._due:
            self._arm(self._due[0][0])

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        if self._call_at is not None:
            self._timer = self._call_at(at, self.flush)
        else:
            self._timer = asyncio.get_running_loop().call_at(at, self.flush)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due.clear()

    @property
    def waiting(self) -> int:
        """Slots with a message held (tests, monitoring)."""
        return sum(1 for _, _, slot in self._due if slot.active and slot.held is not None)
