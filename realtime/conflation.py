"""Throttled subscriptions conflated per lane, on one timer (CONTRACT section 10, `throttleMs`).

A throttled subscription gets at most one message per interval, always the latest, and the last
message of a burst is never held for longer than the interval. Thousands of connections each
throttling dozens of symbols must not cost a task, a timer, or even a call per tick each.

Subscriptions of one topic with the same interval and the same filter want the same thing at
the same pace, so they share a `Lane`: one latest message (a reference to the text every
subscriber gets, encoded once), one `last_sent`, one entry in the due heap. A tick is offered
once per lane, not once per subscriber (an assignment while the lane already holds one, the
common case on a busy symbol), and a flush hands the lane's text to its members in one tight
loop. A member that joins follows the lane's cadence: its first tick may wait up to the
interval, and it never gets two within one, because the lane never sends twice within one.

One `Conflator` per hub keeps the lanes that hold a message in a heap ordered by when each may
send next, and one timer handle, armed for the earliest, flushes every one that is due. Lanes
offered the same tick fall due together, and one lane may have thousands of members, so a
flush sends at most `slice_size` messages and leaves the rest (of a lane, or of the due lanes)
for the next loop turn (a timer due at once), so that it never holds the loop for longer than
a slice of deliveries, as the hub's own broadcasts do (DELIVERY_SLICE). A lane's `last_sent` is
when its last slice went, so its slowest member too waits a whole interval for the next.

Members can be paused (the hub holds a subscription while it is fenced by a snapshot or a
resume, or while its permissions are re-checked): a paused member is skipped by every send,
and when it resumes it may be owed the message it missed, which it gets on the lane's next
send, or alone when the lane's interval has passed with nothing new. The lane is freed (and
its heap entry lapses) when its last member, paused or not, leaves.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
from collections.abc import Callable
from typing import Any

Push = Callable[[Any], None]
Key = Any  # who a member is: anything hashable (the hub uses the subscriber)


class Lane:
    """Throttled subscriptions that share a topic, an interval and a filter.

    Invariant: a lane that holds a message, or owes one to a member, is scheduled (in the due
    heap) or sending (a flush cut short by the slice, `Conflator._sending`); a freed lane holds
    nothing. So replacing what a holding lane holds is a whole offer (the hub does it inline).
    """

    __slots__ = (
        "active",
        "cursor",
        "held",
        "interval",
        "joining",
        "last_sent",
        "latest",
        "members",
        "owed",
        "paused",
        "position",
        "scheduled",
    )

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.last_sent = float("-inf")
        self.held: Any = None  # the latest message, not yet sent
        self.latest: Any = None  # the latest message offered, sent or not
        self.position = 0  # the position (seq) the caller gave with `latest`
        # key -> push. Each join stores its own callable: a flush cut short compares identity
        # to skip a member that left (or left and came back) in between.
        self.members: dict[Key, Push] = {}
        self.paused: dict[Key, Push] = {}
        self.owed: dict[Key, tuple[Push, Any]] = {}  # resumed members and what they missed
        # Resumed members that must not get what the lane holds (it is not newer than their
        # position): key -> (push, position); they join with the first newer send.
        self.joining: dict[Key, tuple[Push, int]] = {}
        self.scheduled = False
        # (message, members' items, next index): a flush cut short by the slice.
        self.cursor: tuple[Any, tuple[tuple[Key, Push], ...], int] | None = None
        self.active = True


class Conflator:
    """Sends each lane's latest message at most once per its interval, on one timer."""

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
        self._due: list[tuple[float, int, Lane]] = []
        self._sending: collections.deque[Lane] = collections.deque()
        self._order = itertools.count()
        self._timer: Any = None
        self._timer_at = float("inf")
        self.lanes = 0  # lanes with a member (tests, monitoring: churn must bring it back to 0)

    def now(self) -> float:
        if self._clock is not None:
            return self._clock()
        return asyncio.get_running_loop().time()

    # --- lanes and members ----------------------------------------------------------------

    def lane(self, interval_ms: int) -> Lane:
        self.lanes += 1
        return Lane(interval_ms / 1000)

    def join(self, lane: Lane, key: Key, push: Push, *, paused: bool = False) -> None:
        """Add a member; it gets the lane's next send (not what the lane is sending now)."""
        (lane.paused if paused else lane.members)[key] = push

    def leave(self, lane: Lane, key: Key) -> bool:
        """Drop a member; True when it was the last and the lane is freed (its heap entry
        lapses, what it holds is dropped)."""
        lane.members.pop(key, None)
        lane.paused.pop(key, None)
        lane.owed.pop(key, None)
        lane.joining.pop(key, None)
        if lane.members or lane.paused or lane.joining or not lane.active:
            return False
        lane.active = False
        lane.held = lane.latest = lane.cursor = None
        self.lanes -= 1
        return True

    def pause(self, lane: Lane, key: Key) -> None:
        """Skip a member in every send until `resume`."""
        push = lane.members.pop(key, None)
        lane.owed.pop(key, None)
        joining = lane.joining.pop(key, None)
        if joining is not None:
            push = joining[0]
        if push is not None:
            lane.paused[key] = push

    def resume(
        self, lane: Lane, key: Key, push: Push, *, position: int, missed: Any = None
    ) -> None:
        """Send to a paused member again, whose subscription stands at `position`.

        `missed`, a message after `position` that it did not get while paused, goes with the
        lane's next send (or alone when the lane has nothing newer), within the interval. A
        message the lane holds that is not after `position` is not for it (a new subscription
        must not get what came before it): it joins with the next send after that one.
        """
        if lane.paused.pop(key, None) is None:
            return
        if lane.held is not None and lane.position <= position:
            lane.joining[key] = (push, position)
            return
        lane.members[key] = push
        if missed is not None and lane.held is None:
            lane.owed[key] = (push, missed)
            self._schedule(lane)

    # --- messages -------------------------------------------------------------------------

    def offer(self, lane: Lane, message: Any, position: int = 0) -> None:
        """A new message for `lane`: sent now if its interval has passed, else held (replacing
        what it held) until the interval since its last send has passed."""
        if not lane.active:
            return
        lane.latest, lane.position = message, position
        if lane.held is None and lane.cursor is None and not lane.scheduled:
            now = self.now()
            if now - lane.last_sent >= lane.interval:
                self._send(lane, message, now, self.slice_size)
                if lane.cursor is not None:
                    self._arm(now)
                return
        lane.held = message
        self._schedule(lane)

    def flush(self) -> None:
        """Send what due lanes hold, up to `slice_size` messages; re-arm for the rest or the
        next one."""
        self._timer = None
        self._timer_at = float("inf")
        now = self.now()
        budget = self.slice_size
        while self._sending:  # flushes cut short first: their members have waited longest
            lane = self._sending[0]
            budget = self._resume_send(lane, now, budget)
            if lane.cursor is not None:
                self._arm(now)
                return
            self._sending.popleft()
            self._sent(lane)
        # The loop may run a timer up to its clock resolution early: what is due within a
        # millisecond goes now rather than spinning for it.
        while self._due and self._due[0][0] <= now + 0.001:
            if not budget:  # more are due: they go on the next loop turn, after other work
                self._arm(now)
                return
            _, _, lane = heapq.heappop(self._due)
            lane.scheduled = False
            if not lane.active:
                continue
            if lane.held is not None:
                message, lane.held = lane.held, None
                budget = self._send(lane, message, now, budget)
            elif lane.owed:
                owed, lane.owed = lane.owed, {}
                lane.last_sent = now
                for push, missed in owed.values():
                    push(missed)
                budget = max(0, budget - len(owed))
            if lane.cursor is not None:
                self._arm(now)
                return
        if self._due:
            self._arm(self._due[0][0])

    def _send(self, lane: Lane, message: Any, now: float, budget: int) -> int:
        """Hand `message` to every member, `budget` of them now and the rest on later loop turns
        (`_sending`); what remains of the budget."""
        lane.last_sent = now
        lane.owed.clear()  # the newest message supersedes what resumed members missed
        members = lane.members
        joining = lane.joining
        if joining:  # those for whom this message is new get it; the others, the next one
            for key, (push, position) in list(joining.items()):
                if lane.position > position:
                    members[key] = push
                    del joining[key]
        if len(members) <= budget:
            for push in members.values():
                push(message)
            left = budget - len(members)
        else:
            items = tuple(members.items())
            for _, push in items[:budget]:
                push(message)
            lane.cursor = (message, items, budget)
            self._sending.append(lane)
            left = 0
        if joining:
            for key, (push, _) in joining.items():
                members[key] = push
            joining.clear()
        return left

    def _resume_send(self, lane: Lane, now: float, budget: int) -> int:
        """Continue a flush cut short, skipping members that left or paused meanwhile."""
        if lane.cursor is None:  # freed meanwhile
            return budget
        message, items, start = lane.cursor
        end = min(len(items), start + budget)
        members = lane.members
        for key, push in items[start:end]:
            if members.get(key) is push:
                push(message)
        lane.last_sent = now
        lane.cursor = (message, items, end) if end < len(items) else None
        return budget - (end - start)

    def _sent(self, lane: Lane) -> None:
        """A flush cut short has ended: what came meanwhile waits a whole interval from now."""
        if lane.active and (lane.held is not None or lane.owed):
            self._schedule(lane)

    def _schedule(self, lane: Lane) -> None:
        if lane.scheduled or lane.cursor is not None:
            return
        lane.scheduled = True
        due = lane.last_sent + lane.interval
        heapq.heappush(self._due, (due, next(self._order), lane))
        if due < self._timer_at:
            self._arm(max(due, self.now()))

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
        self._sending.clear()

    @property
    def waiting(self) -> int:
        """Lanes with a message held or owed (tests, monitoring)."""
        lanes = [lane for _, _, lane in self._due] + list(self._sending)
        return sum(1 for lane in lanes if lane.active and (lane.held is not None or lane.owed))

    @property
    def entries(self) -> int:
        """Heap entries and cut-short flushes, lapsed ones included (tests: none may leak)."""
        return len(self._due) + len(self._sending)
