"""End to end: deleting an order, position or strategy publishes its last state as `deleted`.

CONTRACT section 9: on every topic that carried the object, one version past its last change,
after commit only. Deletions have no REST endpoint: they come from the ORM (a shell, a script:
here this test process, publishing through the servers' Redis) and from the admin deleting a
user, which cascades to everything the user owns. Subscribers are bots on tradingrt_client.
"""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.db import transaction
from django.db.models import RestrictedError
from tradingrt_client import Deactivated, Disconnected

from orders.models import Order
from orders.services import order_cancel, order_create, order_fill
from positions.models import Position
from positions.services import position_apply_fill
from strategies.models import Strategy
from strategies.services import strategy_create
from tests.conftest import access_token_for
from tests.live import live_server

D = Decimal

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def server(redis_target, django_db_setup):
    """A Daphne on the Redis channel layer that this test process publishes through."""
    with live_server(redis=redis_target) as live:
        yield live


def delete(model, pk: int) -> None:
    """Delete one object as a shell or script would: `instance.delete()`."""
    model.objects.get(pk=pk).delete()


async def rest(server, user, path: str) -> dict:
    """The REST representation `user` reads at `path` now."""
    token = await sync_to_async(access_token_for)(user)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=server.http_url, headers=headers) as client:
        response = await client.get(path)
    assert response.status_code == 200, response.text
    body: dict = response.json()
    return body


@pytest.mark.redis
async def test_deleting_an_order_publishes_its_last_state_on_each_of_its_topics(
    bots, server, redis_layer, trader, staff
):
    strategy = await sync_to_async(strategy_create)(owner=trader, name="momentum")
    order = await sync_to_async(order_create)(
        user=trader, symbol="AAPL", side="BUY", order_type="LIMIT", quantity=D(5), price=D(100),
        strategy=strategy,
    )  # fmt: skip
    await sync_to_async(order_cancel)(order=order)
    last = await rest(server, trader, f"/api/orders/{order.pk}/")
    owner = await bots(server, trader, f"user:{trader.pk}:orders", f"strategy:{strategy.pk}:orders")
    everyone = await bots(server, staff, "orders")

    await sync_to_async(delete)(Order, order.pk)

    received = [await owner.update(), await owner.update(), await everyone.update()]
    assert sorted(m.topic for m in received) == sorted(
        ["orders", f"user:{trader.pk}:orders", f"strategy:{strategy.pk}:orders"]
    )
    assert {m.type for m in received} == {"ORDER_UPDATE"}
    assert last["version"] == 2
    for message in received:
        assert message.payload == last | {"event": "deleted", "version": 3}
    await owner.quiet(0.3)


@pytest.mark.redis
async def test_a_deleted_position_keeps_the_portfolio_weight_it_had(
    bots, server, redis_layer, trader, staff
):
    def hold_two_positions():
        for symbol, quantity in (("AAPL", "3"), ("MSFT", "1")):
            position = position_apply_fill(
                user=trader,
                symbol=symbol,
                side="BUY",
                quantity=D(quantity),
                price=D(100),
            )
        return position

    position = await sync_to_async(hold_two_positions)()
    last = await rest(server, trader, f"/api/positions/{position.pk}/")
    assert last["portfolioWeight"] == "0.25"  # of 400 exposure, before the row goes
    owner = await bots(server, trader, f"user:{trader.pk}:positions")
    everyone = await bots(server, staff, "positions")

    await sync_to_async(Position.objects.filter(pk=position.pk).delete)()

    for bot, topic in ((owner, f"user:{trader.pk}:positions"), (everyone, "positions")):
        message = await bot.update()
        assert (message.type, message.topic) == ("POSITION_UPDATE", topic)
        assert message.payload == last | {"event": "deleted", "version": last["version"] + 1}


@pytest.mark.redis
async def test_deleting_a_strategy_publishes_deleted_on_its_three_topics(
    bots, server, redis_layer, trader, staff
):
    strategy = await sync_to_async(strategy_create)(owner=trader, name="idle")
    last = await rest(server, trader, f"/api/strategies/{strategy.pk}/")
    owner = await bots(server, trader, f"user:{trader.pk}:strategies", f"strategy:{strategy.pk}")
    everyone = await bots(server, staff, "strategies")

    await sync_to_async(delete)(Strategy, strategy.pk)

    received = [await owner.update(), await owner.update(), await everyone.update()]
    assert sorted(m.topic for m in received) == sorted(
        ["strategies", f"user:{trader.pk}:strategies", f"strategy:{strategy.pk}"]
    )
    for message in received:
        assert message.type == "STRATEGY_UPDATE"
        assert message.payload == last | {"event": "deleted", "version": 2}


@pytest.mark.redis
async def test_a_strategy_with_orders_is_not_deleted_and_nothing_is_sent(
    bots, server, redis_layer, trader
):
    strategy = await sync_to_async(strategy_create)(owner=trader, name="busy")
    await sync_to_async(order_create)(
        user=trader, symbol="AAPL", side="BUY", order_type="MARKET", quantity=D(1),
        strategy=strategy,
    )  # fmt: skip
    bot = await bots(server, trader, f"strategy:{strategy.pk}", f"strategy:{strategy.pk}:orders")

    with pytest.raises(RestrictedError):
        await sync_to_async(delete)(Strategy, strategy.pk)

    await bot.quiet(0.7)
    assert await sync_to_async(Order.objects.filter(strategy_id=strategy.pk).count)() == 1


@pytest.mark.redis
async def test_a_rolled_back_delete_sends_nothing(bots, server, redis_layer, trader):
    first, second = [
        await sync_to_async(order_create)(
            user=trader, symbol="AAPL", side="BUY", order_type="MARKET", quantity=quantity
        )
        for quantity in (D(1), D(2))
    ]
    bot = await bots(server, trader, f"user:{trader.pk}:orders")

    def delete_then_roll_back():
        with transaction.atomic():
            delete(Order, first.pk)
            transaction.set_rollback(True)

    await sync_to_async(delete_then_roll_back)()
    await bot.quiet(0.7)
    assert await sync_to_async(Order.objects.filter(pk=first.pk).exists)()

    await sync_to_async(delete)(Order, second.pk)
    message = await bot.update()  # the first thing to arrive
    assert (message.payload["id"], message.payload["event"]) == (second.pk, "deleted")


@pytest.mark.redis
async def test_deleting_a_user_publishes_each_of_their_objects_deleted_once(
    bots, server, redis_layer, trader, staff
):
    def own_things():
        strategy = strategy_create(owner=trader, name="alpha")
        on_strategy = order_create(
            user=trader, symbol="AAPL", side="BUY", order_type="LIMIT", quantity=D(2),
            price=D(100), strategy=strategy,
        )  # fmt: skip
        order_fill(order=on_strategy, quantity=D(2), price=D(100))  # a position
        alone = order_create(
            user=trader, symbol="MSFT", side="SELL", order_type="MARKET", quantity=D(1)
        )
        return {
            ("ORDER_UPDATE", on_strategy.pk): on_strategy.version + 1,
            ("ORDER_UPDATE", alone.pk): alone.version + 1,
            ("POSITION_UPDATE", (p := Position.objects.get(user=trader)).pk): p.version + 1,
            ("STRATEGY_UPDATE", strategy.pk): Strategy.objects.get(pk=strategy.pk).version + 1,
        }

    expected_versions = await sync_to_async(own_things)()
    watcher = await bots(server, staff, "orders", "positions", "strategies")
    victim = await bots(server, trader)

    # A queryset's delete (as the admin's bulk action does) cascades to all the user owns.
    await sync_to_async(type(trader).objects.filter(pk=trader.pk).delete)()

    received = [await watcher.update() for _ in expected_versions]
    await watcher.quiet(0.7)  # once each, nothing more
    assert {(m.type, m.payload["id"]): m.payload["version"] for m in received} == (
        expected_versions
    )
    assert {m.payload["event"] for m in received} == {"deleted"}
    closed = await victim.until(Disconnected)
    assert closed.code == 4403 and not closed.will_reconnect
    with pytest.raises(Deactivated):
        await victim.next()
