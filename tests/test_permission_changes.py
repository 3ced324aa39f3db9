"""Permission changes on open connections (CONTRACT section 11), on two servers sharing Redis.

The changes are made in this test process, as an admin or a shell would, and reach both servers
through the channel layer after commit.
"""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Group, Permission

from orders.services import order_create
from strategies.models import Strategy
from tests.wsclient import assert_silent, listen, receive_type, subscribe

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.django_db(transaction=True)]


def _permission(name: str) -> Permission:
    app_label, codename = name.split(".")
    return Permission.objects.get(content_type__app_label=app_label, codename=codename)


async def _revoked(ws) -> dict:
    message = await receive_type(ws, "SUBSCRIPTION")
    assert message["payload"]["action"] == "revoked", message
    return message["payload"]


async def test_a_demoted_staff_user_loses_staff_topics_on_every_server_at_once(
    cluster, same_heartbeat, staff, trader
):
    on_a, _ = await listen(cluster[0], staff, "orders", "market:AAPL")
    on_b, _ = await listen(cluster[1], staff, "positions", f"user:{staff.pk}:orders")

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
    await assert_silent(on_a, 1.0)  # nothing more on `orders`
    ack = await subscribe(on_a, "orders")
    assert ack["rejected"] == [{"topic": "orders", "reason": "forbidden"}]  # not with stale rights
    listed = await subscribe(on_b, f"user:{staff.pk}:orders")  # own topics stay
    assert listed["topics"] == [f"user:{staff.pk}:orders"]
    for ws in (on_a, on_b):
        await ws.close()


async def test_a_permission_taken_from_a_group_revokes_what_it_granted(
    cluster, same_heartbeat, trader, other_trader
):
    desk = await sync_to_async(Group.objects.create)(name="desk")
    view_order = await sync_to_async(_permission)("orders.view_order")
    await sync_to_async(desk.permissions.add)(view_order)
    await sync_to_async(other_trader.groups.add)(desk)
    ws, _ = await listen(cluster[1], other_trader, f"user:{trader.pk}:orders", "market:AAPL")

    await sync_to_async(desk.permissions.remove)(view_order)

    payload = await _revoked(ws)
    assert payload["topics"] == [f"user:{trader.pk}:orders"]
    await sync_to_async(order_create)(
        user=trader, symbol="AAPL", side="BUY", order_type="MARKET", quantity="1"
    )
    await assert_silent(ws, 1.0)
    await ws.close()


@pytest.mark.parametrize("how", ["user_permissions", "group_removed", "group_deleted"])
async def test_losing_a_permission_any_way_revokes(
    cluster, same_heartbeat, trader, other_trader, how
):
    view_order = await sync_to_async(_permission)("orders.view_order")
    desk = await sync_to_async(Group.objects.create)(name=f"desk-{how}")
    if how == "user_permissions":
        await sync_to_async(other_trader.user_permissions.add)(view_order)
    else:
        await sync_to_async(desk.permissions.add)(view_order)
        await sync_to_async(desk.user_set.add)(other_trader)  # the group's side of the relation
    ws, _ = await listen(cluster[0], other_trader, "orders")

    if how == "user_permissions":
        await sync_to_async(view_order.user_set.remove)(other_trader)
    elif how == "group_removed":
        await sync_to_async(other_trader.groups.clear)()
    else:
        await sync_to_async(desk.delete)()

    assert (await _revoked(ws))["topics"] == ["orders"]
    await ws.close()


async def test_a_strategy_given_to_another_owner_is_revoked_before_its_update_arrives(
    cluster, same_heartbeat, trader, other_trader
):
    strategy = await sync_to_async(Strategy.objects.create)(owner=trader, name="momentum")
    old_owner, _ = await listen(
        cluster[0], trader, f"strategy:{strategy.pk}", f"strategy:{strategy.pk}:orders"
    )
    staff_view, _ = await listen(cluster[1], other_trader, f"user:{other_trader.pk}:strategies")

    strategy.owner = other_trader
    await sync_to_async(strategy.save)()

    payload = await _revoked(old_owner)
    assert payload["topics"] == [f"strategy:{strategy.pk}", f"strategy:{strategy.pk}:orders"]
    await assert_silent(old_owner, 1.0)  # the update that reveals the new owner never came
    update = await receive_type(staff_view, "STRATEGY_UPDATE")  # ... while the new owner's did
    assert update["payload"]["ownerId"] == other_trader.pk
    new_owner, _ = await listen(cluster[0], other_trader, f"strategy:{strategy.pk}")
    for ws in (old_owner, staff_view, new_owner):
        await ws.close()


async def test_a_change_that_grants_nothing_revokes_nothing(
    cluster, same_heartbeat, trader, other_trader
):
    ws, _ = await listen(cluster[0], trader, f"user:{trader.pk}:orders")
    trader.is_staff = True  # promoted: more, never less
    await sync_to_async(trader.save)()
    await assert_silent(ws, 0.5)
    order = await sync_to_async(order_create)(
        user=trader, symbol="AAPL", side="BUY", order_type="MARKET", quantity="1"
    )
    assert (await receive_type(ws, "ORDER_UPDATE"))["payload"]["id"] == order.pk
    await ws.close()
