"""Scale-out: two Daphne processes sharing a Redis channel layer and the database.

Run on the suite's database (PostgreSQL in CI's second run, SQLite otherwise) and a real
Redis under a key prefix private to this test run (TEST_REDIS_URL). Their users are bots on the
project's Python client (tradingrt_client).
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.db import transaction
from tradingrt_client import Disconnected

from orders.services import order_create
from realtime.selectors import connection_status
from tests.conftest import CLUSTER_HEARTBEAT as HEARTBEAT
from tests.conftest import access_token_for
from tests.live import connections_of, eventually, live_server

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.django_db(transaction=True)]


def bearer(user) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token_for(user)}"}


async def test_a_client_on_a_receives_an_order_placed_through_bs_api(
    bots, cluster, same_heartbeat, trader
):
    a, b = cluster
    bot = await bots(a, trader, f"user:{trader.pk}:orders")
    headers = await sync_to_async(bearer)(trader)
    async with httpx.AsyncClient(base_url=b.http_url, headers=headers, timeout=10) as client:
        response = await client.post(
            "/api/orders/",
            json={"symbol": "AAPL", "side": "BUY", "orderType": "MARKET", "quantity": "3"},
        )
    assert response.status_code == 201, response.text
    message = await bot.update("ORDER_UPDATE")
    assert message.payload == response.json() | {"event": "created"}


async def test_a_client_on_a_receives_a_change_made_in_bs_admin(
    bots, cluster, same_heartbeat, trader, staff
):
    a, b = cluster
    staff.is_superuser = True
    await sync_to_async(staff.save)()
    order = await sync_to_async(order_create)(
        user=trader, symbol="MSFT", side="SELL", order_type="LIMIT", quantity="2", price="400"
    )
    bot = await bots(a, trader, f"user:{trader.pk}:orders")
    async with httpx.AsyncClient(base_url=b.http_url, timeout=10) as browser:
        await browser.get("/admin/login/")
        await browser.post(
            "/admin/login/",
            data={"username": "staff", "password": "correct-horse-battery",
                  "csrfmiddlewaretoken": browser.cookies["csrftoken"], "next": "/admin/"},
            headers={"Referer": f"{b.http_url}/admin/login/"},
        )  # fmt: skip
        action = await browser.post(
            "/admin/orders/order/",
            data={"action": "cancel_orders", "_selected_action": [str(order.pk)],
                  "csrfmiddlewaretoken": browser.cookies["csrftoken"]},
            headers={"Referer": f"{b.http_url}/admin/orders/order/"},
        )  # fmt: skip
        assert action.status_code == 302
    message = await bot.update("ORDER_UPDATE")
    assert message.payload["id"] == order.pk
    assert message.payload["event"] == "canceled"


async def test_management_command_and_shell_changes_reach_clients_on_both_servers(
    bots, cluster, same_heartbeat, trader
):
    a, b = cluster
    on_a = await bots(a, trader, "market:IBM", f"user:{trader.pk}:orders")
    on_b = await bots(b, trader, "market:IBM")
    ticks = "\n".join(json.dumps({"symbol": "IBM", "last": str(price)}) for price in ("150", "151"))
    result = await sync_to_async(a.manage)("publish_market_data", "-", stdin=ticks + "\n")
    assert result.returncode == 0, result.stderr
    assert "Published 2 tick(s); 0 line(s) rejected." in result.stdout
    for bot in (on_a, on_b):
        prices = [(await bot.update("MARKET_DATA")).payload["last"] for _ in range(2)]
        assert prices == ["150", "151"]

    # A service called in this process (as from `manage.py shell`) publishes through Redis too.
    order = await sync_to_async(order_create)(
        user=trader, symbol="IBM", side="BUY", order_type="MARKET", quantity="1"
    )
    message = await on_a.update("ORDER_UPDATE")
    assert message.payload["id"] == order.pk


async def test_a_rolled_back_transaction_sends_nothing(bots, cluster, same_heartbeat, trader):
    a, _ = cluster
    bot = await bots(a, trader, f"user:{trader.pk}:orders", f"user:{trader.pk}:positions")

    def place_then_roll_back():
        with transaction.atomic():
            order_create(user=trader, symbol="AAPL", side="BUY", order_type="MARKET", quantity="1")
            transaction.set_rollback(True)

    await sync_to_async(place_then_roll_back)()
    await bot.quiet(1.0)
    committed = await sync_to_async(order_create)(
        user=trader, symbol="AAPL", side="BUY", order_type="MARKET", quantity="2"
    )
    message = await bot.update("ORDER_UPDATE")
    assert message.payload["id"] == committed.pk  # the first thing to arrive


async def test_status_counts_the_connections_of_both_servers(
    bots, cluster, same_heartbeat, trader, staff
):
    a, b = cluster
    await bots(a, trader, "market:AAPL")
    await bots(a, trader)
    await bots(b, trader, "market:AAPL")
    assert await eventually(lambda: connection_status()["activeConnections"] == 3)
    headers = await sync_to_async(bearer)(staff)
    for server in cluster:
        async with httpx.AsyncClient(base_url=server.http_url, headers=headers) as client:
            document = (await client.get("/ws/status")).json()
        assert document["activeConnections"] == 3
        assert document["topicSubscriptions"]["market:AAPL"] == 2
        assert connections_of(document, a, b) == [2, 1]


async def test_ws_disconnect_drops_clients_on_either_server(
    bots, cluster, same_heartbeat, trader, other_trader
):
    a, b = cluster
    alice_a = await bots(a, trader)
    alice_b = await bots(b, trader)
    bob_b = await bots(b, other_trader)
    bob_id = bob_b.client.session.connection_id
    bystander = await bots(a, other_trader)

    result = await sync_to_async(a.manage)("ws_disconnect", "--user", "alice")
    assert result.returncode == 0, result.stderr
    assert "Asked 2 live connection(s) to close with code 4000." in result.stdout
    for alice in (alice_a, alice_b):
        closed = await alice.until(Disconnected)
        assert closed.code == 4000 and closed.will_reconnect  # an operator's close: come back

    result = await sync_to_async(b.manage)("ws_disconnect", "--connection", bob_id, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"requested": 1, "code": 4000}
    closed = await bob_b.until(Disconnected)
    assert closed.code == 4000 and closed.will_reconnect

    heartbeat = await bystander.client.request("HEARTBEAT", {})
    assert heartbeat["type"] == "HEARTBEAT"
    assert bystander.of(Disconnected) == []


async def test_killing_one_server_leaves_the_other_serving_and_its_connections_leave_the_counts(
    bots, cluster, redis_target, same_heartbeat, trader
):
    a, _ = cluster
    with live_server(realtime={"HEARTBEAT_INTERVAL_SECS": HEARTBEAT}, redis=redis_target) as doomed:
        victims = [await bots(doomed, trader, "market:AAPL") for _ in range(2)]
        await bots(a, trader, "market:AAPL")  # the survivor
        assert await eventually(lambda: connection_status()["activeConnections"] == 3)
        doomed.kill()
        for victim in victims:
            closed = await victim.until(Disconnected)
            assert closed.code in (None, 1006)  # the socket just dies
        assert await eventually(lambda: connection_status()["activeConnections"] == 1)
        headers = await sync_to_async(bearer)(trader)
        async with httpx.AsyncClient(base_url=a.http_url, headers=headers) as client:
            response = await client.post(
                "/api/orders/",
                json={"symbol": "AAPL", "side": "BUY", "orderType": "MARKET", "quantity": "1"},
            )
        assert response.status_code == 201
        assert await eventually(
            lambda: connection_status()["topicSubscriptions"]["market:AAPL"] == 1
        )


async def test_one_orders_updates_arrive_in_commit_order_when_two_servers_race(
    bots, cluster, same_heartbeat, trader, staff
):
    a, b = cluster
    order = await sync_to_async(order_create)(
        user=trader, symbol="AAPL", side="BUY", order_type="MARKET", quantity="10"
    )
    listeners = [await bots(server, trader, f"user:{trader.pk}:orders") for server in cluster]
    headers = await sync_to_async(bearer)(staff)
    async with (
        httpx.AsyncClient(base_url=a.http_url, headers=headers, timeout=10) as via_a,
        httpx.AsyncClient(base_url=b.http_url, headers=headers, timeout=10) as via_b,
    ):
        responses = await asyncio.gather(
            *(
                client.post(f"/api/orders/{order.pk}/fills/", json={"quantity": "1", "price": "1"})
                for client in (via_a, via_b) * 5
            )
        )
    assert [r.status_code for r in responses] == [201] * 10
    for bot in listeners:
        received = [(await bot.update("ORDER_UPDATE")).payload for _ in range(10)]
        assert [p["filledQuantity"] for p in received] == [str(n) for n in range(1, 11)]
        assert received[-1]["event"] == "filled"
