"""Filters, per-subscription throttling and presence (CONTRACT section 10).

Units first (option parsing, the conflator on a fake clock, presence bookkeeping), then the
wire behaviour through real Daphne processes (presence across two on Redis, and after one is
SIGKILLed).
"""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest
from asgiref.sync import sync_to_async

from realtime.conf import DEFAULTS
from realtime.conflation import Conflator
from realtime.presence import PresenceTracker
from realtime.subscriptions import SubscribeOptionError, parse_subscribe_entry
from tests.conftest import access_token_for
from tests.factories import UserFactory
from tests.live import live_server
from tests.test_delivery import open_ws, subscribe_entries, updates
from tests.wsclient import receive, request

# --- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        ({"topic": "orders", "filter": {"nope": "x"}}, "not a field"),
        ({"topic": "orders", "filter": {"symbol": {"a": 1}}}, "values must be"),
        ({"topic": "orders", "filter": {"symbol": []}}, "1 to 100 values"),
        ({"topic": "orders", "filter": []}, "must be an object"),
        ({"topic": "orders", "throttleMs": 250}, "only for market"),
        ({"topic": "market:AAPL", "throttleMs": 49}, "from 50 to 60000"),
        ({"topic": "market:AAPL", "throttleMs": 60001}, "from 50 to 60000"),
        ({"topic": "market:AAPL", "throttleMs": True}, "from 50 to 60000"),
        ({"topic": "market:AAPL", "presence": "yes"}, "true or false"),
    ],
)
def test_a_malformed_option_says_what_is_wrong(db, entry, complaint):
    with pytest.raises(SubscribeOptionError, match=complaint):
        parse_subscribe_entry(entry)


def test_a_filter_matches_every_field_by_json_value(db):
    entry = parse_subscribe_entry(
        {"topic": "orders", "filter": {"symbol": ["AAPL", "MSFT"], "side": "BUY"}}
    )
    accepts = entry.shaping.filter.accepts
    assert accepts({"symbol": "AAPL", "side": "BUY", "status": "NEW"})
    assert not accepts({"symbol": "AAPL", "side": "SELL"})
    assert not accepts({"symbol": "TSLA", "side": "BUY"})
    assert not accepts({"side": "BUY"})  # a missing field is not a match
    numbers = parse_subscribe_entry({"topic": "orders", "filter": {"strategyId": 1}})
    assert numbers.shaping.filter.accepts({"strategyId": 1})
    assert not numbers.shaping.filter.accepts({"strategyId": True})  # JSON types differ
    assert not numbers.shaping.filter.accepts({"strategyId": "1"})


# --- the conflator, on a fake clock -----------------------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, object]] = []

    def call_at(self, at, callback):
        timer = Timer(at, callback)
        self.timers.append((at, timer))
        return timer

    def advance(self, seconds: float) -> None:
        """Move the clock, firing every timer that falls due, in order."""
        end = self.now + seconds
        while True:
            due = sorted(
                (t for t in self.timers if t[0] <= end and not t[1].cancelled), key=lambda t: t[0]
            )
            if not due:
                break
            at, timer = due[0]
            self.timers.remove((at, timer))
            self.now = max(self.now, at)
            timer.callback()
        self.now = end


class Timer:
    def __init__(self, at, callback) -> None:
        self.at, self.callback, self.cancelled = at, callback, False

    def cancel(self) -> None:
        self.cancelled = True


def test_a_throttled_subscription_gets_the_latest_tick_at_most_once_per_interval():
    time = FakeTime()
    conflator = Conflator(clock=lambda: time.now, call_at=time.call_at)
    sent: list[tuple[float, int]] = []
    lane = conflator.lane(250)
    conflator.join(lane, "a", lambda tick: sent.append((time.now, tick)))
    for tick in range(100):  # a burst: 100 ticks in 99 ms
        conflator.offer(lane, tick)
        time.advance(0.001)
    assert sent == [(0.0, 0)]  # the first at once
    time.advance(0.3)
    assert sent == [(0.0, 0), (0.25, 99)]  # the last of the burst, one interval after the first
    time.advance(0.5)
    conflator.offer(lane, 100)  # a quiet spell later: at once again
    assert sent[-1] == (pytest.approx(0.9), 100)
    for tick in range(101, 111):  # ticks every 100 ms: one per 250 ms, never older than 250 ms
        time.advance(0.1)
        conflator.offer(lane, tick)
    time.advance(1.0)
    times = [at for at, _ in sent]
    assert all(b - a >= 0.25 - 1e-9 for a, b in itertools.pairwise(times))
    assert sent[-1][1] == 110


def test_one_timer_serves_every_throttled_subscription():
    time = FakeTime()
    conflator = Conflator(clock=lambda: time.now, call_at=time.call_at)
    got: dict[int, list[int]] = {n: [] for n in range(1000)}
    lanes = [conflator.lane(250 + n) for n in range(1000)]  # intervals differ: 1,000 lanes
    for n, lane in enumerate(lanes):
        conflator.join(lane, n, got[n].append)
    for tick in range(5):
        for lane in lanes:
            conflator.offer(lane, tick)
    live = [t for _, t in time.timers if not t.cancelled]
    assert len(live) == 1  # not one per subscription
    time.advance(1.25)
    assert all(values == [0, 4] for values in got.values())
    assert conflator.leave(lanes[0], 0)
    conflator.offer(lanes[0], 9)
    time.advance(1)
    assert got[0] == [0, 4]


def test_a_lane_holding_a_message_is_always_scheduled_and_a_freed_one_holds_nothing():
    """The invariant the hub's inline replacement of a held tick relies on, under a random mix
    of offers, flushes and frees."""
    import random

    time = FakeTime()
    conflator = Conflator(clock=lambda: time.now, call_at=time.call_at, slice_size=7)
    rng = random.Random(19)
    sent: dict[int, list[int]] = {n: [] for n in range(40)}
    lanes = [conflator.lane(rng.choice([50, 100, 250])) for n in range(40)]
    for n, lane in enumerate(lanes):
        conflator.join(lane, n, sent[n].append)
    for step in range(3000):
        action = rng.random()
        n = rng.randrange(40)
        lane = lanes[n]
        if action < 0.8:
            conflator.offer(lane, step)
        elif action < 0.99:
            time.advance(rng.random() * 0.05)
        else:
            conflator.leave(lane, n)
        for each in lanes:
            if each.held is not None:
                assert (each.scheduled or each.cursor is not None) and each.active
    time.advance(1)
    assert conflator.waiting == 0


def test_a_flush_of_thousands_due_at_once_goes_out_in_slices_on_separate_loop_turns():
    """2,500 subscriptions offered the same ticks fall due together: the timer sends 1,000
    (the slice) and leaves the rest to timers due at once, so other work runs in between; each
    subscription still gets its latest tick exactly once, never an older one after it."""
    time = FakeTime()
    conflator = Conflator(clock=lambda: time.now, call_at=time.call_at, slice_size=1000)
    got: dict[int, list[int]] = {n: [] for n in range(2500)}
    lanes = [conflator.lane(250) for n in range(2500)]
    for n, lane in enumerate(lanes):
        conflator.join(lane, n, got[n].append)
    for tick in range(3):
        for lane in lanes:
            conflator.offer(lane, tick)
    assert sum(len(v) for v in got.values()) == 2500  # the first tick at once, to each
    batches = []
    original = time.call_at

    def counting_call_at(at, callback):
        batches.append(sum(len(v) for v in got.values()))
        return original(at, callback)

    conflator._call_at = counting_call_at
    time.advance(0.25)
    assert all(values == [0, 2] for values in got.values())
    # After the first timer: 1,000 more sent, re-armed at once; then 1,000; then the last 500.
    assert batches[:2] == [2500 + 1000, 2500 + 2000]
    assert conflator.waiting == 0


class Membership:
    """One subscription's time in a lane: what it got, and when; it must get nothing after it
    left."""

    def __init__(self, time: FakeTime, step: int) -> None:
        self.time = time
        self.joined_step, self.joined_at = step, time.now
        self.left_at: float | None = None
        self.got: list[tuple[float, int]] = []

    def push(self, tick: int) -> None:
        assert self.left_at is None, "a member got a tick after it left"
        self.got.append((self.time.now, tick))


@pytest.mark.parametrize("busy_loop", [False, True])
def test_members_joining_and_leaving_a_lane_get_the_latest_at_most_once_per_interval(busy_loop):
    """Random ticks, joins (between two lane sends, and during a flush cut short by the slice)
    and leaves (mid-flush too): every member gets at most one tick per interval, ticks only
    newer than the last it got, never one after it left, and every tick offered while it was a
    member is superseded in what it gets within the interval (on a busy loop, where the next
    turn comes after other work, by then: the loop's lateness is not the lane's to make up)."""
    import random

    time = FakeTime()
    parked: list[Timer] = []  # on a busy loop: timers due now, waiting for the next turn

    def call_at(at, callback):
        if busy_loop and at <= time.now:
            parked.append(timer := Timer(at, callback))
            return timer
        return time.call_at(at, callback)

    def next_turn() -> None:
        turn = parked[:]
        parked.clear()
        for timer in turn:
            if not timer.cancelled:
                timer.callback()

    conflator = Conflator(clock=lambda: time.now, call_at=call_at, slice_size=7)
    rng = random.Random(18)
    lane = conflator.lane(100)
    memberships: list[Membership] = []
    current: dict[int, Membership] = {}

    def leave(key: int) -> None:
        conflator.leave(lane, key)
        current.pop(key).left_at = time.now

    def join(key: int, step: int) -> None:
        if key in current:
            leave(key)
        membership = current[key] = Membership(time, step)
        memberships.append(membership)
        conflator.join(lane, key, membership.push)

    for key in range(20):
        join(key, 0)
    offers: list[tuple[int, float, int]] = []
    for step in range(1, 4000):
        action = rng.random()
        if action < 0.45:
            offers.append((step, time.now, step))
            conflator.offer(lane, step, step)
        elif action < 0.55:
            join(rng.randrange(1, 40), step)  # a new member, or one coming back
        elif action < 0.65:
            if len(current) > 1:  # member 0 stays: the lane lives on
                leave(rng.choice([key for key in current if key]))
        elif action < 0.7:
            next_turn()  # a flush cut short goes on
            time.advance(0)
        else:
            next_turn()
            time.advance(rng.random() * 0.03)
    for _ in range(20):
        next_turn()
        time.advance(0.1)
    assert conflator.waiting == 0 and conflator.entries == 0
    sends = 0
    for membership in memberships:
        times = [at for at, _ in membership.got]
        ticks = [tick for _, tick in membership.got]
        sends += len(ticks)
        assert all(b - a >= 0.1 - 1e-9 for a, b in itertools.pairwise(times))
        assert ticks == sorted(set(ticks))
        if busy_loop:
            if membership.left_at is None:
                assert ticks[-1] == offers[-1][2]
            continue
        for step, at, tick in offers:
            stayed = membership.left_at is None or membership.left_at > at + 0.1
            if membership.joined_step < step and stayed:
                assert any(
                    at <= when <= at + 0.1 + 1e-9 and got >= tick for when, got in membership.got
                )
    assert sends > 1000  # the run did exercise the lane


def test_a_member_that_leaves_during_a_flush_cut_short_gets_nothing_of_its_rest():
    time = FakeTime()
    conflator = Conflator(clock=lambda: time.now, call_at=time.call_at, slice_size=1000)
    lane = conflator.lane(250)
    got: dict[int, list[int]] = {n: [] for n in range(2501)}
    for n in range(2500):
        conflator.join(lane, n, got[n].append)
    busy = [0.05]  # the loop's next turn comes 50 ms later (it had other work)
    conflator._call_at = lambda at, callback: time.call_at(
        at + (busy.pop() if busy else 0), callback
    )
    conflator.offer(lane, 1, 1)  # idle: sent at once, to the first slice now
    assert sum(len(v) for v in got.values()) == 1000
    conflator.leave(lane, 1500)
    conflator.leave(lane, 1600)
    conflator.join(lane, 1600, got[1600].append)  # left and came back: a new subscription
    conflator.join(lane, 2500, got[2500].append)  # joined mid-flush
    conflator.offer(lane, 2, 2)  # meanwhile: waits a whole interval after the last slice
    time.advance(0.05)
    assert got[1500] == [] and got[1600] == [] and got[2500] == []
    assert all(got[n] == [1] for n in range(2500) if n not in (1500, 1600))
    time.advance(0.249)
    assert got[2499] == [1]  # the interval runs from the last slice, for the slowest member too
    time.advance(0.001)
    assert got[0] == [1, 2] and got[2499] == [1, 2] and got[1600] == [2] and got[2500] == [2]
    assert got[1500] == []


def test_a_paused_member_is_skipped_and_on_resuming_gets_what_it_missed_within_the_interval():
    time = FakeTime()
    conflator = Conflator(clock=lambda: time.now, call_at=time.call_at)
    lane = conflator.lane(250)
    steady: list[tuple[float, int]] = []
    paused: list[tuple[float, int]] = []
    conflator.join(lane, "steady", lambda tick: steady.append((time.now, tick)))
    conflator.join(lane, "paused", lambda tick: paused.append((time.now, tick)))
    conflator.offer(lane, 1, 1)
    conflator.pause(lane, "paused")  # its subscription is being re-checked, at position 1
    time.advance(0.1)
    conflator.offer(lane, 2, 2)
    time.advance(0.2)  # the lane sends 2 at 0.25, not to the paused member
    assert steady == [(0, 1), (0.25, 2)] and paused == [(0, 1)]
    conflator.resume(
        lane, "paused", lambda tick: paused.append((time.now, tick)), position=1, missed=2
    )
    time.advance(0.3)  # owed 2: alone, one interval after the lane's last send
    assert paused == [(0, 1), (0.5, 2)] and steady == [(0, 1), (0.25, 2)]
    conflator.offer(lane, 3, 3)  # the lane's cadence now counts from that send
    time.advance(0.3)
    assert paused[-1] == (0.75, 3) and steady[-1] == (0.75, 3)


def test_a_resumed_member_never_gets_the_held_tick_its_position_already_covers():
    """A new subscription fenced at seq 5 while the lane holds seq 5 for the others: it gets
    the next newer tick, never 5 (CONTRACT section 9: nothing at or below its position)."""
    time = FakeTime()
    conflator = Conflator(clock=lambda: time.now, call_at=time.call_at)
    lane = conflator.lane(250)
    old: list[int] = []
    new: list[int] = []
    conflator.join(lane, "old", old.append)
    conflator.offer(lane, 4, 4)
    conflator.offer(lane, 5, 5)  # held for "old"
    conflator.join(lane, "new", new.append, paused=True)
    conflator.resume(lane, "new", new.append, position=5)
    time.advance(0.25)
    assert old == [4, 5] and new == []
    conflator.offer(lane, 6, 6)
    conflator.offer(lane, 7, 7)
    time.advance(0.25)
    assert old == [4, 5, 7] and new == [7]


def test_a_lane_is_freed_with_its_last_member_and_churn_leaves_nothing_behind():
    time = FakeTime()
    conflator = Conflator(clock=lambda: time.now, call_at=time.call_at)
    for round_ in range(50):
        lanes = [conflator.lane(100 + n) for n in range(5)]
        for n in range(100):
            conflator.join(lanes[n % 5], n, lambda tick: None, paused=n % 7 == 0)
        for tick in range(3):
            for lane in lanes:
                conflator.offer(lane, tick, tick)
        assert conflator.lanes == 5
        for n in range(100):
            freed = conflator.leave(lanes[n % 5], n)
            assert freed == (n >= 95)
        assert conflator.lanes == 0
        assert all(lane.held is None and not lane.members for lane in lanes)
        time.advance(0.01 * (round_ % 3))
    time.advance(1)
    assert conflator.lanes == 0 and conflator.entries == 0 and conflator.waiting == 0


# --- presence bookkeeping -------------------------------------------------------------------------


class Watcher:
    def __init__(self) -> None:
        self.received: list[dict] = []

    def push(self, text: str) -> None:
        self.received.append(json.loads(text))

    def events(self) -> list[tuple[str, int]]:
        return [(m["payload"]["event"], m["payload"]["userId"]) for m in self.received]


def test_presence_joins_leaves_after_the_grace_and_a_quick_return_does_not_flap(settings):
    settings.REALTIME = {"PRESENCE_LEAVE_GRACE_SECS": 5}
    tracker = PresenceTracker(hub=None)
    now = [0.0]
    tracker.clock = lambda: now[0]
    watcher = Watcher()
    tracker.watch("strategy:1", watcher, True)
    tracker.apply({"strategy:1": {1: "alice"}})  # the baseline: no news
    tracker.apply({"strategy:1": {1: "alice", 2: "bob"}})
    assert watcher.events() == [("join", 2)]
    now[0] = 1
    tracker.apply({"strategy:1": {1: "alice"}})  # bob's connection dropped...
    now[0] = 3
    tracker.apply({"strategy:1": {1: "alice", 2: "bob"}})  # ...and came back within 5 s
    now[0] = 4
    tracker.apply({"strategy:1": {1: "alice"}})
    now[0] = 8.9
    tracker.apply({"strategy:1": {1: "alice"}})
    assert watcher.events() == [("join", 2)]  # no leave, no second join
    now[0] = 9
    tracker.apply({"strategy:1": {1: "alice"}})
    assert watcher.events() == [("join", 2), ("leave", 2)]
    message = watcher.received[-1]
    assert message["type"] == "PRESENCE" and message["topic"] == "strategy:1"
    assert "seq" not in message and message["payload"]["username"] == "bob"


# --- through real servers -----------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_filters_on_orders_by_symbol_side_and_status_combined_with_resume(
    cluster, redis_layer, trader
):
    from orders.services import order_cancel, order_create

    a, _ = cluster
    topic = f"user:{trader.pk}:orders"
    wanted = {"symbol": ["AAPL", "MSFT"], "side": "BUY", "status": "NEW"}

    def place_mix() -> list[int]:
        ids = []
        for symbol, side in [("AAPL", "BUY"), ("TSLA", "BUY"), ("MSFT", "SELL"), ("MSFT", "BUY")]:
            order = order_create(
                user=trader, symbol=symbol, side=side, order_type="LIMIT", quantity="1",
                price="10",
            )  # fmt: skip
            ids.append(order.pk)
        order_cancel(order=type(order).objects.get(pk=ids[0]))  # CANCELED: filtered out
        return ids

    ws = await open_ws(a, trader)
    reply = await subscribe_entries(ws, {"topic": topic, "filter": wanted})
    start = reply["positions"][topic]
    ids = await sync_to_async(place_mix)()
    got = await updates(ws, topic, until_seq=start["seq"] + 4)  # seq 5 (the cancel) filtered
    assert [(m["payload"]["id"], m["payload"]["event"]) for m in got] == [
        (ids[0], "created"),
        (ids[3], "created"),
    ]
    assert [m["seq"] for m in got] == [start["seq"] + 1, start["seq"] + 4]  # gaps: expected
    with pytest.raises(TimeoutError):
        await receive(ws, timeout=0.5)
    await ws.close()

    more = await sync_to_async(place_mix)()  # while away: resume, still filtered
    ws = await open_ws(a, trader)
    since = {"epoch": got[-1]["epoch"], "seq": got[-1]["seq"]}
    reply = await subscribe_entries(ws, {"topic": topic, "filter": wanted, "since": since})
    assert reply["recovered"] == [topic]
    replayed = await updates(ws, topic, until_seq=start["seq"] + 8)
    assert [m["payload"]["id"] for m in replayed] == [more[0], more[3]]
    await ws.close()

    ws = await open_ws(a, trader)  # and a snapshot is narrowed the same way
    await subscribe_entries(ws, {"topic": topic, "filter": wanted, "snapshot": True})
    snapshot = await receive(ws)
    assert snapshot["type"] == "SNAPSHOT"
    assert sorted(i["id"] for i in snapshot["payload"]["items"]) == sorted([ids[3], more[3]])
    await ws.close()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_a_throttled_market_subscription_gets_few_ticks_ending_with_the_last(live, trader):
    topic = "market:THROT"
    ws = await open_ws(live, trader)
    plain = await open_ws(live, trader)
    await subscribe_entries(ws, {"topic": topic, "throttleMs": 200})
    start = (await subscribe_entries(plain, topic))["positions"][topic]["seq"]
    token = await sync_to_async(access_token_for)(trader)
    await sync_to_async(_grant_feed)(trader)
    import httpx

    async with httpx.AsyncClient(
        base_url=live.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as client:
        for n in range(100):  # a burst of 100 ticks through the real publish path
            response = await client.post(
                "/api/market-data/", json={"symbol": "THROT", "last": str(100 + n)}
            )
            assert response.status_code in (200, 201, 202), response.text
    everything = await updates(plain, topic, until_seq=start + 100)
    assert len(everything) == 100  # the unthrottled neighbour gets every tick
    throttled = []
    with pytest.raises(TimeoutError):
        while True:
            message = await receive(ws, timeout=1.0)
            if message.get("topic") == topic:
                throttled.append(message)
    assert 1 <= len(throttled) < 50, len(throttled)
    assert throttled[-1]["payload"]["last"] == everything[-1]["payload"]["last"]
    assert throttled[-1]["seq"] == start + 100
    await ws.close()
    await plain.close()


def _grant_feed(user) -> None:
    from django.contrib.auth.models import Permission

    user.user_permissions.add(Permission.objects.get(codename="publish_market_data"))


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_market_presence_is_for_staff_and_view_connection_holders_and_options_fail_alone(
    live, trader, staff
):
    ws = await open_ws(live, trader)
    reply = await subscribe_entries(
        ws,
        {"topic": "market:PRIV", "presence": True},
        {"topic": f"user:{trader.pk}:orders", "presence": True},
        {"topic": f"user:{trader.pk}:positions", "throttleMs": 100},  # not a market topic
        {"topic": "market:OBJ", "filter": {"symbol": {"is": "OBJ"}}},  # a value, not an object
        {"topic": "market:SLOW", "throttleMs": 49},  # just below the range
        {"topic": "market:FAST", "throttleMs": 60001},  # just above it
        {"topic": "market:LOWEST", "throttleMs": 50},  # the range's ends are accepted
        {"topic": "market:HIGHEST", "throttleMs": 60000},
    )
    assert reply["topics"] == [f"user:{trader.pk}:orders", "market:LOWEST", "market:HIGHEST"]
    assert sorted((r["topic"], r["reason"]) for r in reply["rejected"]) == [
        ("market:FAST", "invalid_option"),
        ("market:OBJ", "invalid_option"),
        ("market:PRIV", "forbidden"),
        ("market:SLOW", "invalid_option"),
        (f"user:{trader.pk}:positions", "invalid_option"),
    ]
    assert all(r["message"] for r in reply["rejected"] if r["reason"] == "invalid_option")
    answer = await request(  # the connection lives on, and answers the next request
        ws, "SUBSCRIPTION", {"action": "presence", "topics": ["market:PRIV", "orders"]}, id="p"
    )
    assert answer["payload"]["presence"] == {}
    assert {r["topic"] for r in answer["payload"]["rejected"]} == {"market:PRIV", "orders"}
    await ws.close()
    boss = await open_ws(live, staff)
    reply = await subscribe_entries(boss, {"topic": "market:PRIV", "presence": True})
    assert reply["topics"] == ["market:PRIV"]
    await boss.close()
    # Not staff, but holding realtime.view_connection (a monitoring system): allowed too.
    monitor = await sync_to_async(UserFactory)(username="presence-monitor")
    await sync_to_async(_grant_view_connection)(monitor)
    watcher = await open_ws(live, monitor)
    reply = await subscribe_entries(watcher, {"topic": "market:PRIV", "presence": True})
    assert reply["topics"] == ["market:PRIV"] and reply["rejected"] == []
    answer = await request(
        watcher, "SUBSCRIPTION", {"action": "presence", "topics": ["market:PRIV"]}, id="p"
    )
    assert answer["payload"]["rejected"] == []
    assert [m["username"] for m in answer["payload"]["presence"]["market:PRIV"]] == [
        monitor.username
    ]
    await watcher.close()


def _grant_view_connection(user) -> None:
    from django.contrib.auth.models import Permission

    user.user_permissions.add(
        Permission.objects.get(codename="view_connection", content_type__app_label="realtime")
    )


@pytest.mark.e2e
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
async def test_presence_across_two_processes_with_no_flapping_and_no_zombies(
    redis_target, redis_layer, staff
):
    realtime = {
        "HEARTBEAT_INTERVAL_SECS": 0.5,
        "PRUNE_INTERVAL_SECS": 1.0,
        "PRESENCE_INTERVAL_SECS": 0.2,
        "PRESENCE_LEAVE_GRACE_SECS": 1.5,
    }
    bob = await sync_to_async(UserFactory)(username="presence-bob")
    carol = await sync_to_async(UserFactory)(username="presence-carol")
    topic = "market:PRES"
    with (
        live_server(realtime=realtime, redis=redis_target) as a,
        live_server(realtime=realtime, redis=redis_target) as b,
    ):
        watcher = await open_ws(a, staff)
        await subscribe_entries(watcher, {"topic": topic, "presence": True})
        await asyncio.sleep(0.5)  # the watcher's first look: who is here already

        bob_ws = await open_ws(b, bob)  # on the other process
        await subscribe_entries(bob_ws, topic)
        assert await presence_event(watcher) == ("join", bob.pk)
        answer = await request(
            watcher, "SUBSCRIPTION", {"action": "presence", "topics": [topic]}, id="q"
        )
        members = answer["payload"]["presence"][topic]
        assert {m["username"] for m in members} == {staff.username, bob.username}
        assert next(m for m in members if m["userId"] == bob.pk)["connections"] == 1

        await bob_ws.close()  # a reconnect within the grace: no leave, no second join
        bob_ws = await open_ws(a, bob)
        await subscribe_entries(bob_ws, topic)
        with pytest.raises(TimeoutError):  # nothing for longer than the grace
            await presence_event(watcher, timeout=2.5)

        carol_ws = await open_ws(b, carol)
        await subscribe_entries(carol_ws, topic)
        assert await presence_event(watcher) == ("join", carol.pk)
        b.kill()  # SIGKILL: carol's connection never says goodbye
        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        assert await presence_event(watcher, timeout=10) == ("leave", carol.pk)
        left_after = loop.time() - killed_at
        # b's last heartbeat was at most now, so its rows stop counting within
        # DEAD_AFTER_HEARTBEATS intervals; a's next poll sees carol gone and starts her grace;
        # the leave goes out at the first poll past the grace.
        heartbeats = realtime.get("DEAD_AFTER_HEARTBEATS", DEFAULTS["DEAD_AFTER_HEARTBEATS"])
        dead_after = heartbeats * realtime["HEARTBEAT_INTERVAL_SECS"]
        grace = realtime["PRESENCE_LEAVE_GRACE_SECS"]
        poll = realtime["PRESENCE_INTERVAL_SECS"]
        margin = 0.5  # the poll's query, and two busy cores shared with other suites
        assert grace <= left_after < dead_after + poll + grace + poll + margin, left_after
        await bob_ws.close()
        assert await presence_event(watcher, timeout=10) == ("leave", bob.pk)
        await watcher.close()


async def presence_event(ws, timeout: float = 5.0) -> tuple[str, int]:
    async with asyncio.timeout(timeout):
        while True:
            message = await receive(ws, timeout=timeout)
            if message["type"] == "PRESENCE":
                return message["payload"]["event"], message["payload"]["userId"]


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_a_large_presence_is_paged(live, staff):
    from django.contrib.auth.models import Permission

    users = await sync_to_async(lambda: [UserFactory(username=f"pager{n}") for n in range(5)])()
    for user in users:
        await sync_to_async(user.user_permissions.add)(
            await sync_to_async(Permission.objects.get)(codename="view_order")
        )
    sockets = []
    for user in users:
        ws = await open_ws(live, user)
        await subscribe_entries(ws, "orders")
        sockets.append(ws)
    boss = await open_ws(live, staff)
    seen = []
    after = None
    while True:
        payload = {"action": "presence", "topics": ["orders"], "limit": 2}
        if after is not None:
            payload["after"] = {"orders": after}
        answer = (await request(boss, "SUBSCRIPTION", payload, id="page"))["payload"]
        seen.extend(m["username"] for m in answer["presence"]["orders"])
        after = answer.get("next", {}).get("orders")
        if after is None:
            break
    assert seen == [u.username for u in users]
    for ws in [*sockets, boss]:
        await ws.close()
