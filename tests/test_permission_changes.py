"""Permission changes on open connections (CONTRACT section 11), on two servers sharing Redis.

The changes are made in this test process, as an admin or a shell would, and reach both servers
through the channel layer after commit. The users are bots on the project's Python client
(tradingrt_client); the revocations are checked as the server sent them too.
"""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Group, Permission
from tradingrt_client import Rejection, Revoked

from orders.services import order_create
from strategies.models import Strategy

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.django_db(transaction=True)]


def _permission(name: str) -> Permission:
    app_label, codename = name.split(".")
    return Permission.objects.get(content_type__app_label=app_label, codename=codename)


async def _revoked(bot) -> dict:
    """The server's one revocation, as sent; the client hands on a Revoked for each of its
    topics, and nothing before them."""
    first = await bot.next()
    assert isinstance(first, Revoked), first
    [payload] = [
        m["payload"]
        for m in bot.wire
        if m["type"] == "SUBSCRIPTION" and m["payload"].get("action") == "revoked"
    ]
    rest = [await bot.next() for _ in payload["topics"][1:]]
    reason = payload["reason"]
    assert [first, *rest] == [Revoked(topic, reason) for topic in payload["topics"]]
    return payload


async def test_a_demoted_staff_user_loses_staff_topics_on_every_server_at_once(
    bots, cluster, same_heartbeat, staff, trader
):
    on_a = await bots(cluster[0], staff, "orders", "market:AAPL")
    on_b = await bots(cluster[1], staff, "positions", f"user:{staff.pk}:orders")

    staff.is_staff = False
    await sync_to_async(staff.save)()

    assert await _revoked(on_a) == {
        "action": "revoked",
        "topics": ["orders"],
        "reason": "forbidden",
    }
    assert await _revoked(on_b) == {
        "action": "revoked",
        "topics": ["positions"],
        "reason": "forbidden",
    }
    await sync_to_async(order_create)(
        user=trader, symbol="AAPL", side="BUY", order_type="MARKET", quantity="1"
    )
    await on_a.quiet(1.0)  # nothing more on `orders`
    ack = await on_a.client.subscribe("orders", snapshot=False)
    assert ack.rejected == [Rejection("orders", "forbidden")]  # not with stale rights
    assert on_a.subscribe_replies()[-1]["rejected"] == [{"topic": "orders", "reason": "forbidden"}]
    listed = await on_b.client.subscribe(f"user:{staff.pk}:orders", snapshot=False)  # own stay
    assert listed.topics == [f"user:{staff.pk}:orders"]


async def test_a_permission_taken_from_a_group_revokes_what_it_granted(
    bots, cluster, same_heartbeat, trader, other_trader
):
    desk = await sync_to_async(Group.objects.create)(name="desk")
    view_order = await sync_to_async(_permission)("orders.view_order")
    await sync_to_async(desk.permissions.add)(view_order)
    await sync_to_async(other_trader.groups.add)(desk)
    bot = await bots(cluster[1], other_trader, f"user:{trader.pk}:orders", "market:AAPL")

    await sync_to_async(desk.permissions.remove)(view_order)

    payload = await _revoked(bot)
    assert payload["topics"] == [f"user:{trader.pk}:orders"]
    await sync_to_async(order_create)(
        user=trader, symbol="AAPL", side="BUY", order_type="MARKET", quantity="1"
    )
    await bot.quiet(1.0)


@pytest.mark.parametrize("how", ["user_permissions", "group_removed", "group_deleted"])
async def test_losing_a_permission_any_way_revokes(
    bots, cluster, same_heartbeat, trader, other_trader, how
):
    view_order = await sync_to_async(_permission)("orders.view_order")
    desk = await sync_to_async(Group.objects.create)(name=f"desk-{how}")
    if how == "user_permissions":
        await sync_to_async(other_trader.user_permissions.add)(view_order)
    else:
        await sync_to_async(desk.permissions.add)(view_order)
        await sync_to_async(desk.user_set.add)(other_trader)  # the group's side of the relation
    bot = await bots(cluster[0], other_trader, "orders")

    if how == "user_permissions":
        await sync_to_async(view_order.user_set.remove)(other_trader)
    elif how == "group_removed":
        await sync_to_async(other_trader.groups.clear)()
    else:
        await sync_to_async(desk.delete)()

    assert (await _revoked(bot))["topics"] == ["orders"]


async def test_a_strategy_given_to_another_owner_is_revoked_before_its_update_arrives(
    bots, cluster, same_heartbeat, trader, other_trader
):
    strategy = await sync_to_async(Strategy.objects.create)(owner=trader, name="momentum")
    old_owner = await bots(
        cluster[0], trader, f"strategy:{strategy.pk}", f"strategy:{strategy.pk}:orders"
    )
    staff_view = await bots(cluster[1], other_trader, f"user:{other_trader.pk}:strategies")

    strategy.owner = other_trader
    await sync_to_async(strategy.save)()

    payload = await _revoked(old_owner)
    assert payload["topics"] == [f"strategy:{strategy.pk}", f"strategy:{strategy.pk}:orders"]
    await old_owner.quiet(1.0)  # the update that reveals the new owner never came
    update = await staff_view.update("STRATEGY_UPDATE")  # ... while the new owner's did
    assert update.payload["ownerId"] == other_trader.pk
    await bots(cluster[0], other_trader, f"strategy:{strategy.pk}")  # the new owner may subscribe


async def test_a_change_that_grants_nothing_revokes_nothing(
    bots, cluster, same_heartbeat, trader, other_trader
):
    bot = await bots(cluster[0], trader, f"user:{trader.pk}:orders")
    trader.is_staff = True  # promoted: more, never less
    await sync_to_async(trader.save)()
    await bot.quiet(0.5)
    order = await sync_to_async(order_create)(
        user=trader, symbol="AAPL", side="BUY", order_type="MARKET", quantity="1"
    )
    assert (await bot.update("ORDER_UPDATE")).payload["id"] == order.pk
