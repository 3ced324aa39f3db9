"""End to end: every write path reaches exactly its topics' subscribers (CONTRACT section 5).

A real Daphne serves both the REST API (and admin) and /bot; changes are made through HTTP, as
clients and staff make them, and observed as a bot observes them: through the project's Python
client (tradingrt_client), over real listeners.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Permission
from tradingrt_client import Update

from tests.rest import api, place

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


async def updates(events, count: int) -> list[Update]:
    return [await events.update() for _ in range(count)]


async def test_order_created_reaches_the_owner_and_staff_with_the_rest_representation(
    bots, live, trader, trader_token, staff_token
):
    mine = await bots(live, trader_token, f"user:{trader.pk}:orders")
    everyone = await bots(live, staff_token, "orders")
    async with api(live, trader_token) as client:
        order = await place(client)
    for bot, topic in ((mine, f"user:{trader.pk}:orders"), (everyone, "orders")):
        message = await bot.update("ORDER_UPDATE")
        assert message.topic == topic
        assert message.payload == order | {"event": "created"}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", message.timestamp)


async def test_a_fill_sends_order_position_and_strategy_execution_updates(
    bots, live, trader, trader_token, staff_token
):
    async with api(live, trader_token) as client:
        strategy = (await client.post("/api/strategies/", json={"name": "momentum"})).json()
        await client.post(f"/api/strategies/{strategy['id']}/start/")
        order = await place(client, strategyId=strategy["id"])
    topics = [
        f"user:{trader.pk}:orders",
        f"user:{trader.pk}:positions",
        f"strategy:{strategy['id']}",
        f"strategy:{strategy['id']}:orders",
    ]
    bot = await bots(live, trader_token, *topics)
    async with api(live, staff_token) as gateway:
        response = await gateway.post(
            f"/api/orders/{order['id']}/fills/", json={"quantity": "4", "price": "99.5"}
        )
        assert response.status_code == 201, response.text
    received = await updates(bot, 4)
    by_topic = {message.topic: message for message in received}
    assert set(by_topic) == set(topics)

    order_update = by_topic[f"user:{trader.pk}:orders"]
    assert order_update.type == "ORDER_UPDATE"
    assert order_update.payload["event"] == "partially_filled"
    assert order_update.payload["previousStatus"] == "NEW"
    assert order_update.payload["status"] == "PARTIALLY_FILLED"
    assert order_update.payload["filledQuantity"] == "4"
    assert order_update.payload["averageFillPrice"] == "99.5"
    assert by_topic[f"strategy:{strategy['id']}:orders"].payload == order_update.payload

    position = by_topic[f"user:{trader.pk}:positions"]
    assert position.type == "POSITION_UPDATE"
    assert position.payload["event"] == "opened"
    assert position.payload["symbol"] == "AAPL"
    assert position.payload["quantity"] == "4"
    assert position.payload["averagePrice"] == "99.5"
    for key in ("unrealizedPnl", "realizedPnl", "totalPnl", "exposure", "portfolioWeight"):
        assert key in position.payload

    execution = by_topic[f"strategy:{strategy['id']}"]
    assert execution.type == "STRATEGY_UPDATE"
    assert execution.payload["event"] == "execution"
    assert execution.payload["execution"] | {"fillId": None, "executedAt": None} == {
        "orderId": order["id"],
        "fillId": None,
        "symbol": "AAPL",
        "side": "BUY",
        "quantity": "4",
        "price": "99.5",
        "executedAt": None,
    }
    assert execution.payload["metrics"]["filledOrderCount"] in (0, 1)


async def test_updates_of_one_order_arrive_in_commit_order(
    bots, live, trader, trader_token, staff_token
):
    async with api(live, trader_token) as client:
        order = await place(client, quantity="5")
    bot = await bots(live, trader_token, f"user:{trader.pk}:orders")
    async with api(live, staff_token) as gateway:
        await asyncio.gather(
            *(
                gateway.post(
                    f"/api/orders/{order['id']}/fills/", json={"quantity": "1", "price": "100"}
                )
                for _ in range(5)
            )
        )
    received = [m.payload for m in await updates(bot, 5)]
    assert [p["filledQuantity"] for p in received] == ["1", "2", "3", "4", "5"]
    assert [p["event"] for p in received] == ["partially_filled"] * 4 + ["filled"]


async def test_cancel_and_status_changes_carry_previous_status(bots, live, trader, trader_token):
    async with api(live, trader_token) as client:
        order = await place(client)
        strategy = (await client.post("/api/strategies/", json={"name": "s"})).json()
        bot = await bots(
            live, trader_token, f"user:{trader.pk}:orders", f"strategy:{strategy['id']}"
        )
        assert (await client.post(f"/api/orders/{order['id']}/cancel/")).status_code == 200
        canceled = await bot.update("ORDER_UPDATE")
        assert canceled.payload["event"] == "canceled"
        assert canceled.payload["previousStatus"] == "NEW"
        assert canceled.payload["status"] == "CANCELED"

        assert (await client.post(f"/api/strategies/{strategy['id']}/start/")).status_code == 200
        started = await bot.update("STRATEGY_UPDATE")
        assert started.payload["event"] == "status_changed"
        assert started.payload["status"] == "RUNNING"
        assert started.payload["previousStatus"] == "DRAFT"

        renamed = await client.patch(f"/api/strategies/{strategy['id']}/", json={"name": "t"})
        assert renamed.status_code == 200
        updated = await bot.update("STRATEGY_UPDATE")
        assert updated.payload["event"] == "updated"
        assert updated.payload["name"] == "t"
        assert "previousStatus" not in updated.payload


async def test_a_refused_change_sends_nothing(bots, live, trader, trader_token, staff_token):
    async with api(live, trader_token) as client:
        order = await place(client, quantity="2")
    bot = await bots(live, trader_token, f"user:{trader.pk}:orders", f"user:{trader.pk}:positions")
    async with api(live, staff_token) as gateway:
        overfill = await gateway.post(
            f"/api/orders/{order['id']}/fills/", json={"quantity": "3", "price": "100"}
        )
    assert overfill.status_code == 400
    await bot.quiet(0.7)


async def test_a_trader_never_receives_another_traders_updates(
    bots, live, trader, trader_token, other_trader, other_token, staff_token
):
    alice = await bots(
        live,
        trader_token,
        f"user:{trader.pk}:orders",
        f"user:{trader.pk}:positions",
        f"user:{trader.pk}:strategies",
    )
    async with api(live, other_token) as bob:
        strategy = (await bob.post("/api/strategies/", json={"name": "bob's"})).json()
        order = await place(bob, strategyId=strategy["id"])
    async with api(live, staff_token) as gateway:
        await gateway.post(
            f"/api/orders/{order['id']}/fills/", json={"quantity": "10", "price": "1"}
        )
    await alice.quiet(1.0)


async def test_staff_subscriber_of_the_global_topics_receives_everyones(
    bots, live, trader_token, other_token, staff_token
):
    bot = await bots(live, staff_token, "orders", "positions", "strategies")
    async with api(live, trader_token) as alice, api(live, other_token) as bob:
        first = await place(alice)
        second = await place(bob, symbol="MSFT")
        await bob.post("/api/strategies/", json={"name": "x"})
    received = await updates(bot, 3)
    assert [(m.type, m.topic) for m in received] == [
        ("ORDER_UPDATE", "orders"),
        ("ORDER_UPDATE", "orders"),
        ("STRATEGY_UPDATE", "strategies"),
    ]
    assert [m.payload["id"] for m in received[:2]] == [first["id"], second["id"]]


async def test_a_permission_holder_receives_the_global_topic(
    bots, live, other_trader, trader_token, other_token
):
    def grant():
        other_trader.user_permissions.add(
            Permission.objects.get(codename="view_order", content_type__app_label="orders")
        )

    await sync_to_async(grant)()
    bot = await bots(live, other_token, "orders")
    async with api(live, trader_token) as alice:
        order = await place(alice)
    message = await bot.update("ORDER_UPDATE")
    assert message.payload["id"] == order["id"]


async def test_a_change_made_in_django_admin_reaches_a_subscriber(
    bots, live, trader, trader_token, staff
):
    staff.is_superuser = True  # admin pages need model permissions; a superuser holds them all
    await sync_to_async(staff.save)()
    async with api(live, trader_token) as client:
        order = await place(client)
    bot = await bots(live, trader_token, f"user:{trader.pk}:orders")
    async with httpx.AsyncClient(base_url=live.http_url, timeout=10) as browser:
        login_page = await browser.get("/admin/login/")
        csrf = browser.cookies["csrftoken"]
        logged_in = await browser.post(
            "/admin/login/?next=/admin/",
            data={
                "username": "staff",
                "password": "correct-horse-battery",
                "csrfmiddlewaretoken": csrf,
                "next": "/admin/",
            },
            headers={"Referer": f"{live.http_url}/admin/login/"},
        )
        assert login_page.status_code == 200 and logged_in.status_code == 302, logged_in.text
        action = await browser.post(
            "/admin/orders/order/",
            data={
                "action": "cancel_orders",
                "_selected_action": [str(order["id"])],
                "csrfmiddlewaretoken": browser.cookies["csrftoken"],
            },
            headers={"Referer": f"{live.http_url}/admin/orders/order/"},
        )
        assert action.status_code == 302, action.text
    message = await bot.update("ORDER_UPDATE")
    assert message.payload["id"] == order["id"]
    assert message.payload["event"] == "canceled"


async def test_market_data_reaches_its_symbols_subscribers_and_marks_positions(
    bots, live, trader, trader_token, staff_token
):
    async with api(live, trader_token) as client:
        order = await place(client, symbol="NVDA", quantity="2", price="100")
    async with api(live, staff_token) as gateway:
        await gateway.post(
            f"/api/orders/{order['id']}/fills/", json={"quantity": "2", "price": "100"}
        )
        await asyncio.sleep(0.6)  # past the mark-to-market window of the fill's own mark
        bot = await bots(live, trader_token, "market:NVDA", f"user:{trader.pk}:positions")
        response = await gateway.post(
            "/api/market-data/",
            json={"symbol": "nvda", "last": "110", "bid": "109.9", "ask": "110.1"},
        )
        assert response.status_code == 202, response.text
    tick = await bot.update("MARKET_DATA")
    assert tick.topic == "market:NVDA"
    assert tick.payload | {"timestamp": None} == {
        "symbol": "NVDA",
        "last": "110",
        "bid": "109.9",
        "ask": "110.1",
        "volume": None,
        "timestamp": None,
    }
    marked = await bot.update("POSITION_UPDATE")
    assert marked.payload["event"] == "marked"
    assert marked.payload["marketPrice"] == "110"
    assert marked.payload["unrealizedPnl"] == "20"


async def test_a_burst_of_ticks_is_conflated_into_few_marks_ending_at_the_last_price(
    bots, live, trader, trader_token, staff_token
):
    async with api(live, trader_token) as client:
        order = await place(client, symbol="TSLA", quantity="1", price="200")
    async with api(live, staff_token) as gateway:
        await gateway.post(
            f"/api/orders/{order['id']}/fills/", json={"quantity": "1", "price": "200"}
        )
        bot = await bots(live, trader_token, "market:TSLA", f"user:{trader.pk}:positions")
        prices = [str(201 + n) for n in range(30)]
        for price in prices:
            response = await gateway.post(
                "/api/market-data/", json={"symbol": "TSLA", "last": price}
            )
            assert response.status_code == 202
    ticks, marks = [], []
    while len(ticks) < len(prices) or not marks or marks[-1]["marketPrice"] != prices[-1]:
        try:
            message = await bot.update(timeout=5)
        except TimeoutError:
            raise AssertionError(
                f"ticks {ticks} marks {[m['marketPrice'] for m in marks]}"
            ) from None
        if message.type == "MARKET_DATA":
            ticks.append(message.payload["last"])
        elif message.type == "POSITION_UPDATE":
            marks.append(message.payload)
    assert ticks == prices  # market data itself is never conflated
    assert all(mark["event"] == "marked" for mark in marks)
    assert len(marks) < len(prices) / 3


# --- every event on every one of its topics ------------------------------------------------------


async def _topic_listeners(bots, live, trader, trader_token, staff_token, strategy_id, kind):
    """Subscribers of every topic that carries `kind` updates: the owner's and staff's."""
    owner_topics = {
        "orders": [f"user:{trader.pk}:orders", f"strategy:{strategy_id}:orders"],
        "positions": [f"user:{trader.pk}:positions"],
        "strategies": [f"user:{trader.pk}:strategies", f"strategy:{strategy_id}"],
    }[kind]
    owner = await bots(live, trader_token, *owner_topics)
    staff = await bots(live, staff_token, kind)
    return [(owner, owner_topics), (staff, [kind])], [*owner_topics, kind]


async def _one_on_each(listeners, topics, message_type):
    """The next update on each topic; all must be `message_type` with one same payload."""
    got = {}
    for bot, bot_topics in listeners:
        for _ in bot_topics:
            message = await bot.update(message_type)
            got[message.topic] = message.payload
    assert set(got) == set(topics), got
    payloads = list(got.values())
    assert all(p == payloads[0] for p in payloads), "every topic carries the same payload"
    return payloads[0]


async def test_order_events_reach_all_their_topics_with_the_same_payload(
    bots, live, trader, trader_token, staff_token
):
    async with api(live, trader_token) as client:
        strategy = (await client.post("/api/strategies/", json={"name": "matrix"})).json()
        listeners, topics = await _topic_listeners(
            bots, live, trader, trader_token, staff_token, strategy["id"], "orders"
        )
        order = await place(client, strategyId=strategy["id"], quantity="3")
        created = await _one_on_each(listeners, topics, "ORDER_UPDATE")
        assert created == order | {"event": "created"}
        async with api(live, staff_token) as gateway:
            rejected_order = await place(client, strategyId=strategy["id"])
            await _one_on_each(listeners, topics, "ORDER_UPDATE")
            response = await gateway.post(
                f"/api/orders/{rejected_order['id']}/reject/", json={"reason": "no liquidity"}
            )
            assert response.status_code == 200, response.text
            rejected = await _one_on_each(listeners, topics, "ORDER_UPDATE")
            assert rejected["event"] == "rejected"
            assert rejected["previousStatus"] == "NEW"
            assert rejected["status"] == "REJECTED"
            assert rejected["rejectReason"] == "no liquidity"

            await gateway.post(
                f"/api/orders/{order['id']}/fills/", json={"quantity": "1", "price": "10"}
            )
            partial = await _one_on_each(listeners, topics, "ORDER_UPDATE")
            assert (partial["event"], partial["previousStatus"]) == ("partially_filled", "NEW")
            await gateway.post(
                f"/api/orders/{order['id']}/fills/", json={"quantity": "2", "price": "13"}
            )
            filled = await _one_on_each(listeners, topics, "ORDER_UPDATE")
            assert filled["event"] == "filled"
            assert filled["previousStatus"] == "PARTIALLY_FILLED"
            assert (filled["filledQuantity"], filled["averageFillPrice"]) == ("3", "12")
            rest = (await client.get(f"/api/orders/{order['id']}/")).json()
            assert filled == rest | {"event": "filled", "previousStatus": "PARTIALLY_FILLED"}


async def test_position_events_opened_updated_closed_reach_all_their_topics(
    bots, live, trader, trader_token, staff_token
):
    listeners, topics = await _topic_listeners(
        bots, live, trader, trader_token, staff_token, 1, "positions"
    )
    async with api(live, trader_token) as client, api(live, staff_token) as gateway:
        buy = await place(client, symbol="AMD", quantity="4", price="100")
        sell = await place(client, symbol="AMD", side="SELL", quantity="4", price="110")
        fills = [(buy, "3", "100"), (buy, "1", "104"), (sell, "4", "110")]
        events = []
        for order, quantity, price in fills:
            await gateway.post(
                f"/api/orders/{order['id']}/fills/", json={"quantity": quantity, "price": price}
            )
            events.append(await _one_on_each(listeners, topics, "POSITION_UPDATE"))
        rest = (await client.get(f"/api/positions/{events[-1]['id']}/")).json()
    assert [e["event"] for e in events] == ["opened", "updated", "closed"]
    assert [e["quantity"] for e in events] == ["3", "4", "0"]
    assert events[1]["averagePrice"] == "101"
    assert events[2]["realizedPnl"] == "36"
    assert events[2] == rest | {"event": "closed"}


async def test_strategy_events_reach_all_their_topics(
    bots, live, trader, trader_token, staff_token
):
    async with api(live, trader_token) as client:
        # The strategy topic needs the strategy to exist: create it, then watch the rest.
        strategy = (await client.post("/api/strategies/", json={"name": "alpha"})).json()
        listeners, topics = await _topic_listeners(
            bots, live, trader, trader_token, staff_token, strategy["id"], "strategies"
        )
        await client.post(f"/api/strategies/{strategy['id']}/start/")
        started = await _one_on_each(listeners, topics, "STRATEGY_UPDATE")
        assert (started["event"], started["previousStatus"]) == ("status_changed", "DRAFT")
        await client.patch(f"/api/strategies/{strategy['id']}/", json={"parameters": {"k": 2}})
        updated = await _one_on_each(listeners, topics, "STRATEGY_UPDATE")
        assert (updated["event"], updated["parameters"]) == ("updated", {"k": 2})
        await client.post(f"/api/strategies/{strategy['id']}/pause/")
        paused = await _one_on_each(listeners, topics, "STRATEGY_UPDATE")
        assert (paused["status"], paused["previousStatus"]) == ("PAUSED", "RUNNING")
        rest = (await client.get(f"/api/strategies/{strategy['id']}/")).json()
        assert paused == rest | {"event": "status_changed", "previousStatus": "RUNNING"}
