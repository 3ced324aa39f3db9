"""Delivery guarantees (CONTRACT section 9), caused for real: real Daphne processes, a real Redis,
the suite's database. Missed updates are replayed exactly or refused with a reason; a killed
server, a restarted or flushed Redis and a channel layer dropping messages lose nothing silently.

Where the client's own reconnection and resume is what a test is about, the client is the
project's Python client (tradingrt_client), as a bot's would be; where the test is about the
server's answer to a crafted request (a made-up epoch, `since` the start of an epoch), about the
server's own repair (which a client that repairs gaps itself would hide), or about raw frames,
it speaks the protocol through tests.wsclient.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from tradingrt_client import Connected, Disconnected, Position, Recovered, Reset, Update

from orders.models import Order
from orders.services import order_create
from realtime import publish
from tests.conftest import access_token_for
from tests.live import eventually, live_server
from tests.pyclient import Events
from tests.test_chaos import PrivateRedis
from tests.wsclient import connect, receive, receive_type, request

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


# --- helpers ----------------------------------------------------------------------------------


async def open_ws(server: Any, user: Any):
    token = await sync_to_async(access_token_for)(user)
    ws = await connect(server.ws_url, token=token)
    await receive_type(ws, "AUTHENTICATION")
    return ws


async def subscribe_entries(ws, *entries: Any, id: str = "s1") -> dict[str, Any]:
    reply = await request(
        ws, "SUBSCRIPTION", {"action": "subscribe", "topics": list(entries)}, id=id
    )
    assert reply["type"] == "SUBSCRIPTION", reply
    return reply["payload"]


async def updates(ws, topic: str, *, until_seq: int, timeout: float = 20.0) -> list[dict]:
    """The topic's messages, in arrival order, until one with seq `until_seq` arrives."""
    received: list[dict] = []
    async with asyncio.timeout(timeout):
        while not received or received[-1]["seq"] < until_seq:
            message = await receive(ws, timeout=timeout)
            if message.get("topic") == topic:
                received.append(message)
    return received


def assert_contiguous(messages: list[dict], *, after: int) -> None:
    seqs = [m["seq"] for m in messages]
    assert seqs == list(range(after + 1, after + 1 + len(seqs))), seqs


def place(user, n: int) -> list[int]:
    """Place `n` orders for `user`, one transaction each (as n REST requests would)."""
    return [
        order_create(
            user=user, symbol="AAPL", side="BUY", order_type="LIMIT", quantity="1", price="100"
        ).pk
        for _ in range(n)
    ]


def assert_in_sequence(updates: list[Update], *, after: int) -> None:
    assert [u.seq for u in updates] == list(range(after + 1, after + 1 + len(updates)))


async def read_updates(events: Events, *, until_seq: int, timeout: float = 20.0) -> list[Update]:
    """The client's next events, all updates, until the one with seq `until_seq`."""
    received: list[Update] = []
    async with asyncio.timeout(timeout):
        while not received or received[-1].seq < until_seq:
            received.append(await events.update(timeout=timeout))
    return received


class Gate:
    """A token provider that answers at once while open and waits while shut: it keeps a bot
    offline between two connections for as long as a test needs."""

    def __init__(self, token: str) -> None:
        self._token = token
        self._open = asyncio.Event()
        self._open.set()

    async def token(self, reason: str) -> str:
        await self._open.wait()
        return self._token

    def shut(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()


async def operator_disconnect(server: Any, events: Events) -> Disconnected:
    """Close the bot's connection as an operator does (`ws_disconnect`, 4000); its Disconnected."""
    assert events.client.session is not None
    connection = events.client.session.connection_id
    result = await asyncio.to_thread(server.manage, "ws_disconnect", "--connection", connection)
    assert result.returncode == 0, result.stderr
    closed = await events.next()
    assert isinstance(closed, Disconnected) and closed.code == 4000, closed
    return closed


class Writer:
    """Places orders for `user` until stopped, like a busy trading day; remembers their ids."""

    def __init__(self, user) -> None:
        self.user = user
        self.ids: list[int] = []
        self._stop = False
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while not self._stop:
            self.ids.extend(await sync_to_async(place)(self.user, 1))
            await asyncio.sleep(0.005)

    def __enter__(self) -> Writer:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def stop(self) -> list[int]:
        self._stop = True
        assert self._task is not None
        await self._task
        return self.ids

    def __exit__(self, *exc: Any) -> None:
        self._stop = True


# --- resume on one server ----------------------------------------------------------------------


@pytest.mark.redis
async def test_a_client_that_missed_50_updates_resumes_with_exactly_those_then_live_ones(
    bots, cluster, redis_layer, trader
):
    a, _ = cluster
    topic = f"user:{trader.pk}:orders"
    gate = Gate(await sync_to_async(access_token_for)(trader))
    bot = await bots(a, None, topic, token_provider=gate.token)
    reply = bot.subscribed
    start = reply.positions[topic]
    assert reply.recovered == [] and reply.reset == {}
    seen = await sync_to_async(place)(trader, 3)
    first = await read_updates(bot, until_seq=start.seq + 3)
    assert_in_sequence(first, after=start.seq)
    assert [u.key for u in first] == seen
    assert {u.epoch for u in first} == {start.epoch}
    held = first[-1].seq
    gate.shut()  # it stays away until the gate opens
    await operator_disconnect(a, bot)

    missed = await sync_to_async(place)(trader, 50)
    with Writer(trader) as writer:  # and the market does not wait for the resume
        gate.open()  # the client reconnects and resumes by itself
        again = await bot.next()
        assert isinstance(again, Connected) and again.reconnected
        recovered = await bot.next()
        assert isinstance(recovered, Recovered), recovered
        assert recovered.since == Position(start.epoch, held)
        assert recovered.head.seq >= held + 50
        answer = bot.subscribe_replies()[-1]
        assert answer["recovered"] == [topic] and answer["reset"] == [], answer
        await asyncio.sleep(0.3)
        during = await writer.stop()
    assert during, "the writer placed orders during the resume"
    got = await read_updates(bot, until_seq=held + 50 + len(during))
    assert_in_sequence(got, after=held)
    assert [u.key for u in got] == missed + during  # each once, in commit order
    assert {u.epoch for u in got} == {start.epoch}
    live = await sync_to_async(place)(trader, 1)
    after = await bot.update()
    assert (after.key, after.seq) == (live[0], held + 51 + len(during))
    # The client drops duplicates: on the wire too, each seq came once, in order.
    assert bot.sent_seqs(topic) == list(range(start.seq + 1, after.seq + 1))


@pytest.mark.redis
async def test_a_resume_of_many_topics_at_once_answers_each(cluster, redis_layer, trader):
    a, _ = cluster
    orders_topic = f"user:{trader.pk}:orders"
    ws = await open_ws(a, trader)
    reply = await subscribe_entries(ws, orders_topic, "market:MANY1", "market:MANY2")
    positions = reply["positions"]
    await ws.close()
    await sync_to_async(place)(trader, 2)
    for symbol in ("MANY1", "MANY2"):
        await publish.apublish_rollback_unsafe(
            "MARKET_DATA", [f"market:{symbol}"], {"symbol": symbol}
        )
    ws = await open_ws(a, trader)
    reply = await subscribe_entries(
        ws,
        {"topic": orders_topic, "since": positions[orders_topic]},
        {"topic": "market:MANY1", "since": positions["market:MANY1"]},
        {"topic": "market:MANY2", "since": {"epoch": "another", "seq": 1}},
    )
    assert sorted(reply["recovered"]) == sorted([orders_topic, "market:MANY1"])
    assert reply["reset"] == [{"topic": "market:MANY2", "reason": "epoch"}]
    got = await updates(ws, orders_topic, until_seq=positions[orders_topic]["seq"] + 2)
    assert_contiguous(got, after=positions[orders_topic]["seq"])
    await ws.close()


@pytest.mark.redis
async def test_a_resume_older_than_the_history_is_reset_expired(
    bots, cluster, redis_layer, trader, settings
):
    a, _ = cluster
    settings.REALTIME = {"HISTORY_SIZE": 10}  # what this publisher keeps: at least 10
    topic = "market:EXPIRE"
    gate = Gate(await sync_to_async(access_token_for)(trader))
    bot = await bots(a, None, topic, token_provider=gate.token)
    start = bot.subscribed.positions[topic]
    gate.shut()
    await operator_disconnect(a, bot)
    for n in range(300):  # Redis trims whole nodes of 100: far more than 10 are needed
        await publish.apublish_rollback_unsafe("MARKET_DATA", [topic], {"n": n})
    gate.open()
    assert isinstance(await bot.next(), Connected)
    reset = await bot.next()
    assert reset == Reset(topic, "expired", Position(start.epoch, start.seq + 300), snapshot=False)
    answer = bot.subscribe_replies()[-1]
    assert answer["reset"] == [{"topic": topic, "reason": "expired"}] and answer["recovered"] == []
    assert answer["positions"][topic] == {"epoch": start.epoch, "seq": start.seq + 300}
    await bot.quiet(0.5)  # nothing of the missed range is sent


@pytest.mark.redis
async def test_a_resume_from_another_epoch_is_reset_epoch(cluster, redis_layer, trader):
    a, _ = cluster
    topic = f"user:{trader.pk}:orders"
    ws = await open_ws(a, trader)
    reply = await subscribe_entries(ws, {"topic": topic, "since": {"epoch": "gone", "seq": 3}})
    assert reply["reset"] == [{"topic": topic, "reason": "epoch"}]
    assert reply["positions"][topic]["epoch"] != "gone"
    await ws.close()


async def test_a_restarted_single_process_server_names_a_new_epoch(trader):
    topic = f"user:{trader.pk}:orders"
    token = await sync_to_async(access_token_for)(trader)
    with live_server() as server:
        ws = await open_ws(server, trader)
        before = (await subscribe_entries(ws, topic))["positions"][topic]
        await post_order(server, token)
        [update] = await updates(ws, topic, until_seq=before["seq"] + 1)
        await ws.close()
    with live_server() as server:
        ws = await open_ws(server, trader)
        reply = await subscribe_entries(
            ws, {"topic": topic, "since": {"epoch": update["epoch"], "seq": update["seq"]}}
        )
        assert reply["reset"] == [{"topic": topic, "reason": "epoch"}]
        assert reply["positions"][topic]["epoch"] != update["epoch"]
        await ws.close()


async def post_order(server: Any, token: str, *, strategy_id: int | None = None) -> dict[str, Any]:
    order: dict[str, Any] = {
        "symbol": "AAPL",
        "side": "BUY",
        "orderType": "LIMIT",
        "quantity": "1",
        "price": "100",
    }
    if strategy_id is not None:
        order["strategyId"] = strategy_id
    async with httpx.AsyncClient(
        base_url=server.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as client:
        response = await client.post("/api/orders/", json=order)
    assert response.status_code == 201, response.text
    return response.json()


# --- Redis losing its data ---------------------------------------------------------------------


@pytest.fixture
def private_redis():
    server = PrivateRedis()
    server.start()
    yield server
    server.kill()


async def test_a_flushed_redis_means_a_new_epoch_and_resets_never_a_wrong_recovered(
    bots, private_redis, trader
):
    import redis.asyncio as aioredis

    topic = f"user:{trader.pk}:orders"
    token = await sync_to_async(access_token_for)(trader)
    realtime = {"HEARTBEAT_INTERVAL_SECS": 0.5, "LAYER_CHECK_INTERVAL_SECS": 0.2}
    redis = {"url": private_redis.url, "prefix": "tradingrt-delivery"}
    with live_server(realtime=realtime, redis=redis) as server:
        bot = await bots(server, token, topic, backoff_base=0.1, backoff_cap=0.5)
        start = bot.subscribed.positions[topic]
        await post_order(server, token)
        before = await bot.update()
        assert (before.epoch, before.seq) == (start.epoch, start.seq + 1)
        client = aioredis.Redis.from_url(private_redis.url)
        await client.flushall()  # the store loses everything: this Redis is the test's own
        await client.aclose()
        # The server notices and closes its subscribers (4503); the client reconnects until it
        # serves again, and resumes from the position it holds, in the lost epoch.
        closed = await bot.until(Disconnected)
        assert closed.code == 4503 and closed.will_reconnect, closed
        heard = len(bot.subscribe_replies())
        while not isinstance(resumed := await bot.next(timeout=20), Reset | Recovered):
            pass
        assert isinstance(resumed, Reset), resumed  # never a wrong recovered
        assert (resumed.topic, resumed.reason) == (topic, "epoch")
        answer = next(r for r in bot.subscribe_replies()[heard:] if topic in r["topics"])
        assert answer["recovered"] == []
        assert answer["reset"] == [{"topic": topic, "reason": "epoch"}]
        new_epoch = resumed.position.epoch
        assert new_epoch != before.epoch
        order = await post_order(server, token)
        after = await bot.until(Update)
        assert after.key == order["id"]
        assert after.epoch == new_epoch and after.seq == 1


async def test_a_redis_restarted_from_saved_data_means_a_new_epoch_never_a_wrong_recovered(
    bots, trader, tmp_path
):
    """The dangerous loss: Redis comes back with its keys (an RDB saved a while ago), so each
    topic's meta still names the old epoch, at a head behind what clients saw. Only the new run
    id tells; a client past the saved head, or exactly at it, must be reset, never `recovered`.
    Two topics carry the same orders, so that each kind of client meets a reloaded meta."""
    import redis.asyncio as aioredis

    from tests.factories import StrategyFactory

    saving = PrivateRedis(data_dir=tmp_path)
    saving.start()
    try:
        strategy = await sync_to_async(StrategyFactory)(owner=trader)
        mine, its = f"user:{trader.pk}:orders", f"strategy:{strategy.pk}:orders"
        token = await sync_to_async(access_token_for)(trader)
        realtime = {"HEARTBEAT_INTERVAL_SECS": 0.5, "LAYER_CHECK_INTERVAL_SECS": 0.2}
        redis = {"url": saving.url, "prefix": "tradingrt-delivery"}
        with live_server(realtime=realtime, redis=redis) as server:

            async def place_one() -> dict[str, Any]:
                return await post_order(server, token, strategy_id=strategy.pk)

            gate = Gate(token)
            bot = await bots(server, None, mine, token_provider=gate.token, backoff_base=0.1)
            start = bot.subscribed.positions[mine]
            assert start.seq == 0  # a Redis of this test's own
            for _ in range(2):
                await place_one()
            saved = (await read_updates(bot, until_seq=2))[-1]
            client = aioredis.Redis.from_url(saving.url, decode_responses=True)
            [[my_meta], [its_meta]] = [await client.keys(f"*rt:h:{t}:m") for t in (mine, its)]
            metas = {
                my_meta: await client.hgetall(my_meta),
                its_meta: await client.hgetall(its_meta),
            }
            old_run = (await client.info("server"))["run_id"]
            assert metas[my_meta] == {"e": saved.epoch, "s": "2", "r": old_run}
            its_epoch = metas[its_meta]["e"]  # each topic has an epoch of its own
            await client.save()  # the RDB holds seq 2 of each topic's epoch
            for _ in range(2):  # published after the save: lost with the restart
                await place_one()
            held = (await read_updates(bot, until_seq=4))[-1]
            gate.shut()  # the bot stays away while Redis restarts and is looked at
            await operator_disconnect(server, bot)
            await client.aclose()

            saving.kill()
            saving.start()
            client = aioredis.Redis.from_url(saving.url, decode_responses=True)
            assert (await client.info("server"))["run_id"] != old_run
            for meta, before in metas.items():  # the same keys, the same epoch, an older head
                assert await client.hgetall(meta) == before
            await client.aclose()

            ws = await open_ws(server, trader)
            resumes = (
                {"topic": mine, "since": {"epoch": held.epoch, "seq": held.seq}},  # past it
                {"topic": its, "since": {"epoch": its_epoch, "seq": 2}},  # at it
            )
            answers: dict[str, dict[str, Any]] = {}  # each topic's accepting reply
            pending = list(resumes)
            async with asyncio.timeout(10):
                while pending:  # `unavailable` until the server's Redis clients reconnect
                    reply = await subscribe_entries(ws, *pending)
                    answers |= {topic: reply for topic in reply["topics"]}
                    assert {r["reason"] for r in reply["rejected"]} <= {"unavailable"}, reply
                    pending = [e for e in pending if e["topic"] not in answers]
                    await asyncio.sleep(0.2 if pending else 0)
            for topic in (mine, its):
                reply = answers[topic]
                assert topic not in reply["recovered"], reply  # never a wrong recovered
                assert {"topic": topic, "reason": "epoch"} in reply["reset"], reply
                position = reply["positions"][topic]
                assert position["epoch"] not in (saved.epoch, its_epoch) and position["seq"] == 0
            new_epoch = answers[mine]["positions"][mine]["epoch"]

            heard = len(bot.subscribe_replies())
            gate.open()  # the bot resumes by itself from where it was, in the lost epoch
            while not isinstance(resumed := await bot.next(timeout=20), Reset | Recovered):
                pass
            assert isinstance(resumed, Reset), resumed  # never a wrong recovered
            assert (resumed.topic, resumed.reason) == (mine, "epoch")
            assert resumed.position == Position(new_epoch, 0)
            answer = next(r for r in bot.subscribe_replies()[heard:] if mine in r["topics"])
            assert answer["recovered"] == []
            assert answer["reset"] == [{"topic": mine, "reason": "epoch"}]

            order = await place_one()  # and updates flow again, seq from 1
            after = await bot.until(Update)
            assert (after.key, after.epoch, after.seq) == (order["id"], new_epoch, 1)
            got: dict[str, dict[str, Any]] = {}
            async with asyncio.timeout(10):
                while len(got) < 2:
                    message = await receive(ws)
                    got[message["topic"]] = message
            for topic in (mine, its):
                assert got[topic]["payload"]["id"] == order["id"]
                assert got[topic]["seq"] == 1
                assert got[topic]["epoch"] == answers[topic]["positions"][topic]["epoch"]
            await ws.close()
    finally:
        saving.kill()


# --- a server killed mid-stream -----------------------------------------------------------------


@pytest.mark.redis
async def test_clients_of_a_killed_server_resume_on_the_other_with_nothing_lost(
    bots, redis_target, redis_layer, trader
):
    topic = f"user:{trader.pk}:orders"
    realtime = {"HEARTBEAT_INTERVAL_SECS": 0.5}
    with (
        live_server(realtime=realtime, redis=redis_target) as doomed,
        live_server(realtime=realtime, redis=redis_target) as survivor,
    ):
        # Each bot knows both sites and is on the first: when it dies they move to the other.
        clients = [await bots([doomed, survivor], trader, topic) for _ in range(5)]
        start = clients[0].subscribed.positions[topic].seq
        epoch = clients[0].subscribed.positions[topic].epoch
        with Writer(trader) as writer:
            await asyncio.sleep(0.3)
            held = []
            doomed.kill()  # SIGKILL, mid-stream
            for bot in clients:
                got: list[Update] = []
                while not isinstance(event := await bot.next(), Disconnected):
                    assert isinstance(event, Update), event
                    got.append(event)
                assert event.code in (None, 1006) and event.will_reconnect  # it just died
                assert_in_sequence(got, after=start)
                held.append(got[-1].seq if got else start)
            for seq, bot in zip(held, clients, strict=True):
                while isinstance(event := await bot.next(), Disconnected):
                    pass  # the dead site, or the first try at the other
                assert isinstance(event, Connected) and event.reconnected, event
                recovered = await bot.next()
                assert isinstance(recovered, Recovered), recovered
                assert recovered.since == Position(epoch, seq)
                assert bot.subscribe_replies()[-1]["recovered"] == [topic]
                assert bot.client.http_url == survivor.http_url
            await asyncio.sleep(0.3)
            placed = await writer.stop()
        final = start + len(placed)
        for seq, bot in zip(held, clients, strict=True):
            got = await read_updates(bot, until_seq=final)
            assert_in_sequence(got, after=seq)
            ids = [u.key for u in got]
            assert ids == placed[seq - start :]  # nothing lost, nothing twice
            assert bot.sent_seqs(topic) == list(range(start + 1, final + 1))  # on the wire too


# --- order per object under concurrent writers ----------------------------------------------


@pytest.mark.redis
async def test_concurrent_fills_of_one_order_from_two_processes_keep_its_order(
    bots, cluster, redis_layer, trader, gateway
):
    a, b = cluster
    order = await sync_to_async(order_create)(
        user=trader, symbol="AAPL", side="BUY", order_type="LIMIT", quantity="40", price="100"
    )
    topic = f"user:{trader.pk}:orders"
    bot = await bots(a, trader, topic)
    start = bot.subscribed.positions[topic].seq
    token = await sync_to_async(access_token_for)(gateway)
    headers = {"Authorization": f"Bearer {token}"}

    async def fill(server: Any, client: httpx.AsyncClient) -> None:
        response = await client.post(
            f"{server.http_url}/api/orders/{order.pk}/fills/",
            json={"quantity": "1", "price": "100"},
        )
        assert response.status_code == 201, response.text

    async with httpx.AsyncClient(headers=headers, timeout=20) as client:
        await asyncio.gather(*(fill(a if n % 2 else b, client) for n in range(40)))
    got = await read_updates(bot, until_seq=start + 40)
    assert_in_sequence(got, after=start)  # no seq skipped
    assert bot.sent_seqs(topic) == list(range(start + 1, start + 41))  # none sent twice
    filled = [float(u.payload["filledQuantity"]) for u in got]
    assert filled == [float(n) for n in range(1, 41)]  # seq order is commit order
    assert got[-1].payload["status"] == "FILLED"


# --- the channel layer dropping messages ---------------------------------------------------------


@pytest.mark.redis
async def test_group_messages_the_layer_drops_are_repaired_from_the_history(
    redis_target, redis_layer, trader, settings
):
    tiny = copy.deepcopy(settings.CHANNEL_LAYERS)
    tiny["default"]["CONFIG"]["capacity"] = 1  # the sender enforces it: bursts are dropped
    settings.CHANNEL_LAYERS = tiny
    topic = "market:DROPS"
    with live_server(redis=redis_target, env={"REDIS_CHANNEL_CAPACITY": "1"}) as server:
        ws = await open_ws(server, trader)
        start = (await subscribe_entries(ws, topic))["positions"][topic]["seq"]

        async def burst(first: int) -> None:
            for n in range(first, first + 50):
                await publish.apublish_rollback_unsafe("MARKET_DATA", [topic], {"n": n})

        await asyncio.gather(*(burst(first) for first in range(0, 300, 50)))
        got = await updates(ws, topic, until_seq=start + 300)
        assert_contiguous(got, after=start)
        assert sorted(m["payload"]["n"] for m in got) == list(range(300))
        await ws.close()
        assert "repaired seqs" in server.log()


# --- heartbeats carry positions ------------------------------------------------------------------


async def test_a_heartbeat_tells_a_client_the_position_of_each_of_its_topics(live, trader):
    topic = f"user:{trader.pk}:orders"
    ws = await open_ws(live, trader)
    start = (await subscribe_entries(ws, topic))["positions"][topic]
    token = await sync_to_async(access_token_for)(trader)
    await post_order(live, token)
    [update] = await updates(ws, topic, until_seq=start["seq"] + 1)
    beat = await request(ws, "HEARTBEAT", {}, id="hb")
    assert beat["payload"]["positions"] == {topic: {"epoch": update["epoch"], "seq": update["seq"]}}
    await ws.close()


async def test_a_malformed_subscribe_option_rejects_that_entry_only(live, trader):
    topic = f"user:{trader.pk}:orders"
    ws = await open_ws(live, trader)
    reply = await subscribe_entries(
        ws,
        {"topic": topic, "since": {"epoch": "x", "seq": -1}},
        {"topic": "market:OK", "snapshot": "yes"},
        {"topic": "market:FINE"},
        {"topic": "market:LATER", "filter": {"nope": ["X"]}},
    )
    assert reply["topics"] == ["market:FINE"]
    assert [(r["topic"], r["reason"]) for r in reply["rejected"]] == [
        (topic, "invalid_option"),
        ("market:OK", "invalid_option"),
        ("market:LATER", "invalid_option"),
    ]
    assert all(r["message"] for r in reply["rejected"])
    await ws.close()


# --- snapshots fenced by seq --------------------------------------------------------------------


class Churn:
    """Places orders and fills them a unit at a time, at random, until stopped: every fill is a
    new version of an existing order, every placement a new order."""

    def __init__(self, user, seed: int = 7) -> None:
        import random

        self.user = user
        self.rng = random.Random(seed)
        self.open: list[int] = []
        self._stop = False
        self._task: asyncio.Task[None] | None = None

    def _step(self) -> None:
        from decimal import Decimal

        from orders.services import order_fill

        if not self.open or self.rng.random() < 0.3:
            self.open.extend(place(self.user, 1))
            return
        order = Order.objects.get(pk=self.rng.choice(self.open))
        order_fill(order=order, quantity=Decimal("1"), price=Decimal("100"))
        order.refresh_from_db()
        if not order.is_open:
            self.open.remove(order.pk)

    async def _run(self) -> None:
        while not self._stop:
            await sync_to_async(self._step)()
            await asyncio.sleep(0.002)

    def __enter__(self) -> Churn:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def stop(self) -> None:
        self._stop = True
        assert self._task is not None
        await self._task

    def __exit__(self, *exc: Any) -> None:
        self._stop = True


async def snapshot_then_stream(ws, topic: str) -> tuple[dict, list[dict]]:
    """Subscribe with a snapshot: the reply and the snapshot's pages."""
    reply = await subscribe_entries(ws, {"topic": topic, "snapshot": True})
    pages = []
    while not pages or not pages[-1]["payload"]["last"]:
        message = await receive(ws)
        assert message["type"] == "SNAPSHOT" and message["topic"] == topic, message
        pages.append(message)
    return reply, pages


@pytest.mark.redis
async def test_a_snapshot_taken_while_changes_commit_has_each_change_exactly_once(
    cluster, redis_layer, trader
):
    a, b = cluster
    topic = f"user:{trader.pk}:orders"
    await sync_to_async(place)(trader, 5)
    watchers = []
    with Churn(trader) as churn:
        for server in (a, b, a, b, a):  # snapshots taken at different moments of the churn
            await asyncio.sleep(0.15)
            ws = await open_ws(server, trader)
            watchers.append((ws, await snapshot_then_stream(ws, topic)))
        await asyncio.sleep(0.2)
        await churn.stop()
    database = await sync_to_async(
        lambda: {o.pk: o.version for o in Order.objects.filter(user=trader)}
    )()
    head = await sync_to_async(
        lambda: max(Order.objects.filter(user=trader).values_list("version", flat=True))
    )()
    assert head > 1, "the churn filled orders"
    for ws, (reply, pages) in watchers:
        fence = reply["positions"][topic]
        assert {p["seq"] for p in pages} == {fence["seq"]}
        assert {p["epoch"] for p in pages} == {fence["epoch"]}
        state = {item["id"]: item["version"] for p in pages for item in p["payload"]["items"]}
        assert all("event" not in item for p in pages for item in p["payload"]["items"])
        seen: dict[int, list[int]] = {}
        final_seq = await sync_to_async(_topic_head)(topic)
        for message in await updates(ws, topic, until_seq=final_seq):
            assert message["seq"] > fence["seq"]
            seen.setdefault(message["payload"]["id"], []).append(message["payload"]["version"])
        for order_id, version in database.items():
            after = [v for v in seen.get(order_id, []) if v > state.get(order_id, 0)]
            # every change not in the snapshot follows it, once each, in order: none lost
            assert after == list(range(state.get(order_id, 0) + 1, version + 1)), (
                order_id,
                state.get(order_id),
                seen.get(order_id),
            )
            # and one already in the snapshot may follow it only as a duplicate, skipped by version
        await ws.close()


def _topic_head(topic: str) -> int:
    from asgiref.sync import async_to_sync

    from realtime.history import get_history

    return async_to_sync(get_history().head)(topic).seq


async def test_a_snapshot_of_a_market_topic_is_its_latest_tick(live, trader):
    ws = await open_ws(live, trader)
    reply, pages = await snapshot_then_stream(ws, "market:NOTICKS")
    assert reply["positions"]["market:NOTICKS"]["seq"] == 0
    assert [p["payload"] for p in pages] == [{"items": [], "last": True}]
    await ws.close()


async def test_a_large_state_goes_out_in_pages_at_one_fence_then_the_stream_follows(trader):
    topic = f"user:{trader.pk}:orders"
    token = await sync_to_async(access_token_for)(trader)
    # Two orders a page, and a send buffer so small (2 KiB) that each page waits in the
    # consumer (`wait_for_room`) until the one before it has left.
    realtime = {"SNAPSHOT_PAGE_SIZE": 2, "SEND_BUFFER_MAX_BYTES": 2048}
    with live_server(realtime=realtime) as server:
        placed = [(await post_order(server, token))["id"] for _ in range(5)]
        ws = await open_ws(server, trader)
        reply, pages = await snapshot_then_stream(ws, topic)
        fence = reply["positions"][topic]
        assert fence["seq"] == 5  # the five placements were published on this server
        assert len(pages) == 3  # 2 + 2 + 1
        assert {(p["seq"], p["epoch"]) for p in pages} == {(fence["seq"], fence["epoch"])}
        assert [p["payload"]["last"] for p in pages] == [False, False, True]
        assert [len(p["payload"]["items"]) for p in pages] == [2, 2, 1]
        items = [item["id"] for p in pages for item in p["payload"]["items"]]
        assert items == sorted(placed)  # each order once, in id order across the pages
        order = await post_order(server, token)
        [update] = await updates(ws, topic, until_seq=fence["seq"] + 1)
        assert update["type"] == "ORDER_UPDATE" and update["payload"]["id"] == order["id"]
        assert update["epoch"] == fence["epoch"]
        await ws.close()


async def test_a_snapshot_and_a_resume_in_one_request(live, trader):
    topic = f"user:{trader.pk}:orders"
    token = await sync_to_async(access_token_for)(trader)
    order = await post_order(live, token)
    ws = await open_ws(live, trader)
    start = (await subscribe_entries(ws, topic))["positions"][topic]
    await ws.close()
    ws = await open_ws(live, trader)
    both = {"topic": topic, "since": start, "snapshot": True}
    reply = await subscribe_entries(ws, both)
    assert reply["recovered"] == [topic]  # recovered: no snapshot
    beat = await request(ws, "HEARTBEAT", {}, id="hb")  # nothing came between
    assert beat["type"] == "HEARTBEAT"
    await ws.close()
    ws = await open_ws(live, trader)
    reply = await subscribe_entries(ws, {**both, "since": {"epoch": "old", "seq": 9}})
    assert reply["reset"] == [{"topic": topic, "reason": "epoch"}]
    snapshot = await receive_type(ws, "SNAPSHOT")  # reset: the state follows
    assert [item["id"] for item in snapshot["payload"]["items"]] == [order["id"]]
    assert snapshot["payload"]["items"][0]["version"] == order["version"]
    await ws.close()


# --- the outbox: committed, then the publisher dies or Redis is down ---------------------------

KILLED_AFTER_COMMIT = """
import os, signal
from django.contrib.auth import get_user_model
from orders.services import order_create
from realtime import publish

def die(*args, **kwargs):  # the process dies between its commit and its publish
    os.kill(os.getpid(), signal.SIGKILL)

publish._publish_encoded = die
user = get_user_model().objects.get(username={username!r})
order_create(user=user, symbol="AAPL", side="BUY", order_type="LIMIT", quantity="1", price="7")
"""

OUTBOX_QUICK = {"PUBLISH_GRACE_SECS": 0.5, "PUBLISH_SWEEP_SECS": 0.2}


@pytest.mark.redis
async def test_an_update_whose_publisher_was_killed_after_commit_is_published_by_a_server(
    bots, redis_target, trader
):
    from realtime.models import PendingPublication

    topic = f"user:{trader.pk}:orders"
    with live_server(realtime=OUTBOX_QUICK, redis=redis_target) as server:
        bot = await bots(server, trader, topic)
        start = bot.subscribed.positions[topic]
        script = KILLED_AFTER_COMMIT.format(username=trader.username)
        result = await asyncio.to_thread(server.manage, "shell", "-c", script)
        assert result.returncode == -9, (result.returncode, result.stderr)  # SIGKILLed
        order = await sync_to_async(Order.objects.get)(user=trader, price=7)
        update = await bot.update()
        assert (update.epoch, update.seq) == (start.epoch, start.seq + 1)
        assert update.key == order.pk and update.event == "created"
        assert await eventually(lambda: PendingPublication.objects.count() == 0)
        assert "not published by its publisher" in server.log()


async def test_updates_committed_while_redis_is_down_are_published_when_it_is_back(
    private_redis, trader
):
    from realtime.models import PendingPublication

    topic = f"user:{trader.pk}:orders"
    token = await sync_to_async(access_token_for)(trader)
    realtime = {**OUTBOX_QUICK, "LAYER_CHECK_INTERVAL_SECS": 0.2}
    redis = {"url": private_redis.url, "prefix": "tradingrt-outbox"}
    with live_server(realtime=realtime, redis=redis) as server:
        ws = await open_ws(server, trader)
        await subscribe_entries(ws, topic)
        private_redis.kill()
        placed = [await post_order(server, token) for _ in range(3)]  # 201 each, unpublished
        assert await sync_to_async(PendingPublication.objects.count)() == 3
        private_redis.start()  # empty: a new epoch
        for _ in range(50):  # reconnect until the server serves again
            with contextlib.suppress(Exception):
                ws = await open_ws(server, trader)
                reply = await subscribe_entries(ws, topic)
                if topic in reply["topics"]:
                    break
            await asyncio.sleep(0.2)
        assert topic in reply["topics"], reply
        # The sweep may have published some already: ask from the new epoch's start.
        epoch = reply["positions"][topic]["epoch"]
        again = await subscribe_entries(
            ws, {"topic": topic, "since": {"epoch": epoch, "seq": 0}}, id="again"
        )
        assert again["recovered"] == [topic]
        got = await updates(ws, topic, until_seq=3, timeout=20)  # the sweep publishes them
        assert [m["payload"]["id"] for m in got] == [o["id"] for o in placed]
        assert [m["seq"] for m in got] == [1, 2, 3]
        await ws.close()
        # the sweep deletes each row after publishing it: gone once its transaction commits
        assert await eventually(lambda: PendingPublication.objects.count() == 0)
