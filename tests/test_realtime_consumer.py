"""The consumer and hub in-process, through Channels' WebsocketCommunicator."""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from realtime import publish
from realtime.hub import current_hub
from realtime.topics import group_name
from tests.conftest import access_token_for
from tradingrt.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def hub_stopper():
    """Stop this test's hub (its loops and records) when the test ends."""
    yield
    hub = current_hub()
    if hub is not None:
        await hub.stop()


async def open_as(user, path: str = "/ws") -> WebsocketCommunicator:
    token = await database_sync_to_async(access_token_for)(user)
    communicator = WebsocketCommunicator(application, f"{path}?token={token}")
    connected, _ = await communicator.connect()
    assert connected
    message = await receive(communicator)
    assert message["type"] == "AUTHENTICATION"
    return communicator


async def receive(communicator: WebsocketCommunicator, timeout: float = 3) -> dict:
    return json.loads(await communicator.receive_from(timeout))


async def request(communicator, message_type: str, payload: dict, id="r") -> dict:
    await communicator.send_to(json.dumps({"type": message_type, "payload": payload, "id": id}))
    return await receive(communicator)


async def closed_code(communicator: WebsocketCommunicator, timeout: float = 3) -> int:
    while True:
        output = await communicator.receive_output(timeout)
        if output["type"] == "websocket.close":
            return output["code"]


async def test_operator_disconnect_of_a_user_closes_only_that_users_sockets(
    hub_stopper, trader, other_trader
):
    alice = await open_as(trader)
    bob = await open_as(other_trader)
    await publish.adisconnect(user_ids=[trader.pk])
    assert await closed_code(alice) == 4000
    reply = await request(bob, "HEARTBEAT", {})
    assert reply["type"] == "HEARTBEAT"
    await bob.disconnect()


async def test_operator_disconnect_of_one_connection(hub_stopper, trader):
    first = await open_as(trader)
    second = await open_as(trader)
    hub = current_hub()
    first_id = next(iter(hub.connections))
    await publish.adisconnect(connection_ids=[first_id])
    assert await closed_code(first) == 4000
    assert (await request(second, "HEARTBEAT", {}))["type"] == "HEARTBEAT"
    await second.disconnect()


async def test_deactivating_a_connected_user_closes_with_4403(hub_stopper, trader):
    communicator = await open_as(trader)

    def deactivate():
        trader.is_active = False
        trader.save()

    await database_sync_to_async(deactivate)()
    assert await closed_code(communicator) == 4403


async def test_deleting_a_connected_user_closes_with_4403(hub_stopper, trader):
    communicator = await open_as(trader)
    await database_sync_to_async(trader.delete)()
    assert await closed_code(communicator) == 4403


async def test_a_client_that_cannot_keep_up_is_closed_with_4508(hub_stopper, trader, settings):
    """A server whose send blocks (backpressure): what cannot be sent queues, up to a bound."""
    settings.REALTIME = {"SEND_BUFFER_MAX_MESSAGES": 5}
    token = await database_sync_to_async(access_token_for)(trader)
    inbound: asyncio.Queue = asyncio.Queue()
    sent: list[dict] = []
    stalled = asyncio.Event()

    async def send(message):
        sent.append(message)
        if message["type"] == "websocket.send" and stalled.is_set():
            await asyncio.Event().wait()  # the socket takes nothing more

    async def sent_matching(predicate):
        for _ in range(200):
            for message in sent:
                if predicate(message):
                    return message
            await asyncio.sleep(0.01)
        raise AssertionError(f"nothing matched in {sent}")

    scope = {
        "type": "websocket",
        "path": "/ws",
        "query_string": f"token={token}".encode(),
        "headers": [],
        "client": ("127.0.0.1", 5000),
        "subprotocols": [],
    }
    app = asyncio.create_task(application(scope, inbound.get, send))
    await inbound.put({"type": "websocket.connect"})
    await sent_matching(lambda m: "AUTHENTICATION" in m.get("text", ""))
    subscribe = {"type": "SUBSCRIPTION", "payload": {"action": "subscribe", "topics": ["market:X"]}}
    await inbound.put({"type": "websocket.receive", "text": json.dumps(subscribe)})
    await sent_matching(lambda m: "subscribed" in m.get("text", ""))

    stalled.set()
    hub = current_hub()
    for n in range(20):
        hub.deliver("market:X", n + 1, json.dumps({"type": "MARKET_DATA", "payload": {"n": n}}))
    close = await sent_matching(lambda m: m["type"] == "websocket.close")
    assert close["code"] == 4508
    assert not hub.topics.get("market:X")
    texts = [m["text"] for m in sent if m["type"] == "websocket.send"]
    assert len(texts) == 3  # AUTHENTICATION, the ack, and the one send that blocked
    await inbound.put({"type": "websocket.disconnect", "code": 4508})
    await asyncio.wait_for(app, 3)


async def test_server_sends_heartbeats_every_interval(hub_stopper, trader, settings):
    settings.REALTIME = {"HEARTBEAT_INTERVAL_SECS": 0.2}
    communicator = await open_as(trader)
    message = await receive(communicator, timeout=2)
    assert message["type"] == "HEARTBEAT"
    assert "id" not in message
    assert message["payload"]["serverTime"].endswith("Z")
    await communicator.disconnect()


async def test_process_joins_a_topic_group_once_and_leaves_with_the_last_subscriber(
    hub_stopper, trader
):
    first = await open_as(trader)
    second = await open_as(trader)
    subscribe = {"action": "subscribe", "topics": ["market:MSFT"]}
    await request(first, "SUBSCRIPTION", subscribe)
    await request(second, "SUBSCRIPTION", subscribe)
    layer = get_channel_layer()
    hub = current_hub()
    members = layer.groups.get(group_name("market:MSFT"), {})
    assert list(members) == [hub.channel_name]
    await request(first, "SUBSCRIPTION", {"action": "unsubscribe", "topics": ["market:MSFT"]})
    assert hub.channel_name in layer.groups.get(group_name("market:MSFT"), {})
    await second.disconnect()
    assert hub.channel_name not in layer.groups.get(group_name("market:MSFT"), {})
    await first.disconnect()


async def test_subscribing_twice_delivers_each_update_once(hub_stopper, trader):
    communicator = await open_as(trader)
    subscribe = {"action": "subscribe", "topics": ["market:AAPL"]}
    await request(communicator, "SUBSCRIPTION", subscribe, id=1)
    again = await request(communicator, "SUBSCRIPTION", subscribe, id=2)
    assert again["payload"]["topics"] == ["market:AAPL"]
    await publish.apublish_rollback_unsafe("MARKET_DATA", ["market:AAPL"], {"symbol": "AAPL"})
    message = await receive(communicator)
    assert message["type"] == "MARKET_DATA"
    assert message["topic"] == "market:AAPL"
    assert message["payload"] == {"symbol": "AAPL"}
    assert await communicator.receive_nothing(0.3)
    await communicator.disconnect()


async def test_updates_reach_only_subscribers_of_their_topic(hub_stopper, trader, other_trader):
    alice = await open_as(trader)
    bob = await open_as(other_trader)
    await request(alice, "SUBSCRIPTION", {"action": "subscribe", "topics": ["market:AAPL"]})
    await request(bob, "SUBSCRIPTION", {"action": "subscribe", "topics": ["market:MSFT"]})
    await publish.apublish_rollback_unsafe("MARKET_DATA", ["market:AAPL"], {"symbol": "AAPL"})
    assert (await receive(alice))["payload"] == {"symbol": "AAPL"}
    assert await bob.receive_nothing(0.3)
    await alice.disconnect()
    await bob.disconnect()


async def test_revoked_permission_applies_to_the_next_subscription(hub_stopper, trader):
    from django.contrib.auth.models import Permission

    def grant(grant: bool):
        permission = Permission.objects.get(codename="view_order", content_type__app_label="orders")
        if grant:
            trader.user_permissions.add(permission)
        else:
            trader.user_permissions.remove(permission)

    await database_sync_to_async(grant)(True)
    communicator = await open_as(trader)
    ok = await request(communicator, "SUBSCRIPTION", {"action": "subscribe", "topics": ["orders"]})
    assert ok["payload"]["topics"] == ["orders"]
    await database_sync_to_async(grant)(False)
    revoked = await receive(communicator)  # CONTRACT section 11: told at once, not at next use
    assert revoked["payload"] == {"action": "revoked", "topics": ["orders"], "reason": "forbidden"}
    refused = await request(
        communicator, "SUBSCRIPTION", {"action": "subscribe", "topics": ["orders"]}
    )
    assert refused["payload"]["topics"] == []
    assert refused["payload"]["rejected"] == [{"topic": "orders", "reason": "forbidden"}]
    await communicator.disconnect()


async def test_a_rolled_back_change_sends_nothing_and_a_committed_one_arrives(hub_stopper, trader):
    from django.db import transaction

    from orders.services import order_create

    communicator = await open_as(trader)
    topic = f"user:{trader.pk}:orders"
    await request(communicator, "SUBSCRIPTION", {"action": "subscribe", "topics": [topic]})

    def place(quantity: str, *, roll_back: bool):
        with transaction.atomic():
            order = order_create(
                user=trader, symbol="AAPL", side="BUY", order_type="MARKET", quantity=quantity
            )
            transaction.set_rollback(roll_back)
        return order

    await database_sync_to_async(place)("1", roll_back=True)
    assert await communicator.receive_nothing(0.3)
    committed = await database_sync_to_async(place)("2", roll_back=False)
    message = await receive(communicator)
    assert message["type"] == "ORDER_UPDATE"
    assert message["payload"]["id"] == committed.pk
    assert message["payload"]["quantity"] == "2"
    await communicator.disconnect()


async def test_a_subscription_whose_group_join_fails_is_rejected_and_not_held(
    hub_stopper, trader, monkeypatch
):
    alice = await open_as(trader)
    hub = current_hub()
    original = hub.layer.group_add

    async def unreachable(group, channel):
        raise ConnectionError("Redis is down")

    monkeypatch.setattr(hub.layer, "group_add", unreachable)
    reply = await request(alice, "SUBSCRIPTION", {"action": "subscribe", "topics": ["market:AAPL"]})
    assert reply["payload"]["topics"] == []
    assert reply["payload"]["rejected"] == [{"topic": "market:AAPL", "reason": "unavailable"}]
    listed = await request(alice, "SUBSCRIPTION", {"action": "list"})
    assert listed["payload"]["topics"] == []  # not half-applied
    assert "market:AAPL" not in hub.topics

    monkeypatch.setattr(hub.layer, "group_add", original)
    retried = await request(
        alice, "SUBSCRIPTION", {"action": "subscribe", "topics": ["market:AAPL"]}
    )
    reply = retried["payload"]
    assert (reply["action"], reply["topics"], reply["rejected"]) == (
        "subscribed",
        ["market:AAPL"],
        [],
    )
    assert reply["positions"]["market:AAPL"]["seq"] >= 0
    await publish.apublish_rollback_unsafe("MARKET_DATA", ["market:AAPL"], {"symbol": "AAPL"})
    assert (await receive(alice))["type"] == "MARKET_DATA"  # and updates do arrive
    await alice.disconnect()
