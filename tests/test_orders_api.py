"""The orders REST API: fields and formats, isolation, permissions and status codes."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from orders.models import Fill, Order, OrderStatus
from orders.services import order_cancel, order_fill
from positions.models import Position
from strategies.models import StrategyStatus
from tests.factories import PASSWORD, OrderFactory, StrategyFactory

pytestmark = pytest.mark.django_db

D = Decimal
ORDER_FIELDS = {
    "id",
    "userId",
    "strategyId",
    "symbol",
    "side",
    "orderType",
    "quantity",
    "price",
    "stopPrice",
    "status",
    "filledQuantity",
    "averageFillPrice",
    "createdAt",
    "updatedAt",
    "version",
}
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
LIMIT_BUY = {"symbol": "btc-usd", "side": "BUY", "orderType": "LIMIT", "quantity": "1.50"}


def url(order=None, action=None):
    if order is None:
        return "/api/orders/"
    return f"/api/orders/{order.pk}/" + (f"{action}/" if action else "")


@pytest.fixture
def alice_order(trader):
    return OrderFactory(user=trader)


@pytest.fixture
def bob_order(other_trader):
    return OrderFactory(user=other_trader)


# --- create -----------------------------------------------------------------------------------


def test_create_answers_201_with_exactly_the_contract_fields(trader, trader_client):
    response = trader_client.post(url(), {**LIMIT_BUY, "price": "42000.10"}, format="json")

    assert response.status_code == 201
    body = response.json()
    assert set(body) == ORDER_FIELDS
    assert body["id"] == Order.objects.get().pk
    assert body["userId"] == trader.pk
    assert body["strategyId"] is None
    assert body["symbol"] == "BTC-USD"
    assert (body["side"], body["orderType"], body["status"]) == ("BUY", "LIMIT", "NEW")
    assert (body["quantity"], body["price"]) == ("1.5", "42000.1")
    assert (body["stopPrice"], body["averageFillPrice"]) == (None, None)
    assert body["filledQuantity"] == "0"
    assert TIMESTAMP.match(body["createdAt"])
    assert TIMESTAMP.match(body["updatedAt"])


def test_create_with_a_token_from_the_token_endpoint(trader, api_client):
    tokens = api_client.post(
        "/api/auth/token/", {"username": "alice", "password": PASSWORD}, format="json"
    ).json()
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access']}")

    response = api_client.post(url(), {**LIMIT_BUY, "price": "1"}, format="json")

    assert response.status_code == 201


def test_create_with_own_strategy(trader, trader_client):
    strategy = StrategyFactory(owner=trader, status=StrategyStatus.RUNNING)

    response = trader_client.post(
        url(),
        {**LIMIT_BUY, "orderType": "STOP", "stopPrice": "39000", "strategyId": strategy.pk},
        format="json",
    )

    assert response.status_code == 201
    assert (response.json()["strategyId"], response.json()["stopPrice"]) == (strategy.pk, "39000")


def test_create_errors_name_the_fields_the_client_sent(trader_client):
    response = trader_client.post(
        url(), {**LIMIT_BUY, "orderType": "STOP_LIMIT", "price": "1"}, format="json"
    )

    assert response.status_code == 400
    assert set(response.json()) == {"stopPrice"}


def test_create_refuses_a_price_on_a_market_order(trader_client):
    response = trader_client.post(
        url(), {**LIMIT_BUY, "orderType": "MARKET", "price": "100"}, format="json"
    )

    assert response.status_code == 400
    assert "price" in response.json()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"symbol": "BTC USD"}, "symbol"),
        ({"side": "HOLD"}, "side"),
        ({"orderType": "ICEBERG"}, "orderType"),
        ({"quantity": "0"}, "quantity"),
        ({"quantity": "abc"}, "quantity"),
        ({"quantity": "0.123456789"}, "quantity"),
        ({"price": "-5"}, "price"),
    ],
)
def test_create_refuses_an_invalid_body_with_400(trader_client, change, field):
    response = trader_client.post(url(), {**LIMIT_BUY, "price": "1", **change}, format="json")

    assert response.status_code == 400
    assert field in response.json()
    assert not Order.objects.exists()


def test_create_with_another_users_strategy_looks_exactly_like_a_missing_one(
    trader_client, other_trader
):
    foreign = StrategyFactory(owner=other_trader, status=StrategyStatus.RUNNING)
    body = {**LIMIT_BUY, "price": "1"}

    foreign_answer = trader_client.post(url(), {**body, "strategyId": foreign.pk}, format="json")
    missing_answer = trader_client.post(url(), {**body, "strategyId": 999999}, format="json")

    assert foreign_answer.status_code == missing_answer.status_code == 400
    assert foreign_answer.json() == missing_answer.json() == {"strategyId": ["Strategy not found."]}


def test_create_with_a_stopped_strategy_is_409(trader, trader_client):
    strategy = StrategyFactory(owner=trader, status=StrategyStatus.STOPPED)

    response = trader_client.post(
        url(), {**LIMIT_BUY, "price": "1", "strategyId": strategy.pk}, format="json"
    )

    assert response.status_code == 409
    assert "STOPPED" in response.json()["detail"]


def test_anonymous_cannot_list_or_create_orders(api_client):
    assert api_client.get(url()).status_code == 401
    assert api_client.post(url(), {**LIMIT_BUY, "price": "1"}, format="json").status_code == 401


def test_a_forged_token_is_401(api_client):
    api_client.credentials(HTTP_AUTHORIZATION="Bearer not-a-jwt")
    assert api_client.get(url()).status_code == 401


# --- list and retrieve ------------------------------------------------------------------------


def test_traders_list_only_their_own_orders(trader_client, alice_order, bob_order):
    response = trader_client.get(url())

    assert response.status_code == 200
    assert [order["id"] for order in response.json()] == [alice_order.pk]


def test_staff_list_every_order(staff_client, alice_order, bob_order):
    ids = {order["id"] for order in staff_client.get(url()).json()}
    assert ids == {alice_order.pk, bob_order.pk}


def test_list_filters_by_status_symbol_and_strategy(trader, trader_client):
    strategy = StrategyFactory(owner=trader)
    eth = OrderFactory(user=trader, symbol="ETH-USD")
    filled = OrderFactory(user=trader, status=OrderStatus.FILLED)
    placed_by_strategy = OrderFactory(strategy=strategy)

    def ids(query):
        return [order["id"] for order in trader_client.get(url() + query).json()]

    assert ids("?symbol=eth-usd") == [eth.pk]
    assert ids("?status=FILLED") == [filled.pk]
    assert ids(f"?strategyId={strategy.pk}") == [placed_by_strategy.pk]


def test_list_refuses_an_unknown_status_filter(trader_client):
    assert trader_client.get(url() + "?status=DONE").status_code == 400


def test_owner_and_staff_retrieve_an_order(trader_client, staff_client, alice_order):
    assert trader_client.get(url(alice_order)).json()["id"] == alice_order.pk
    assert staff_client.get(url(alice_order)).status_code == 200


def test_another_users_order_is_404(trader_client, bob_order):
    assert trader_client.get(url(bob_order)).status_code == 404


def test_an_absent_order_is_404(trader_client):
    assert trader_client.get("/api/orders/999999/").status_code == 404


# --- cancel -----------------------------------------------------------------------------------


def test_owner_cancels_an_open_order(trader_client, alice_order):
    response = trader_client.post(url(alice_order, "cancel"))

    assert response.status_code == 200
    assert response.json()["status"] == "CANCELED"
    alice_order.refresh_from_db()
    assert alice_order.status == OrderStatus.CANCELED


def test_version_counts_each_committed_change_and_matches_the_database(
    trader_client, gateway_client
):
    created = trader_client.post(url(), {**LIMIT_BUY, "price": "100"}, format="json").json()
    order = Order.objects.get(pk=created["id"])
    filled = gateway_client.post(
        url(order, "fills"), {"quantity": "1", "price": "100"}, format="json"
    ).json()
    canceled = trader_client.post(url(order, "cancel")).json()
    order.refresh_from_db()

    assert [created["version"], filled["order"]["version"], canceled["version"]] == [1, 2, 3]
    assert trader_client.get(url(order)).json()["version"] == order.version == 3


def test_staff_cancel_any_users_order(staff_client, bob_order):
    assert staff_client.post(url(bob_order, "cancel")).status_code == 200


def test_trader_cannot_cancel_another_users_order(trader_client, bob_order):
    assert trader_client.post(url(bob_order, "cancel")).status_code == 404
    bob_order.refresh_from_db()
    assert bob_order.status == OrderStatus.NEW


def test_cancelling_a_filled_order_is_409(trader_client, alice_order):
    order_fill(order=alice_order, quantity=alice_order.quantity, price=D("100"))

    response = trader_client.post(url(alice_order, "cancel"))

    assert response.status_code == 409
    assert "FILLED" in response.json()["detail"]


def test_cancelling_twice_is_409(trader_client, alice_order):
    order_cancel(order=alice_order)
    assert trader_client.post(url(alice_order, "cancel")).status_code == 409


# --- fills ------------------------------------------------------------------------------------


def test_gateway_records_a_fill_on_any_users_order(gateway_client, trader, alice_order):
    response = gateway_client.post(
        url(alice_order, "fills"), {"quantity": "4", "price": "101.50"}, format="json"
    )

    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "orderId", "quantity", "price", "executedAt", "order"}
    assert (body["orderId"], body["quantity"], body["price"]) == (alice_order.pk, "4", "101.5")
    assert TIMESTAMP.match(body["executedAt"])
    assert body["order"]["status"] == "PARTIALLY_FILLED"
    assert body["order"]["filledQuantity"] == "4"
    assert body["order"]["averageFillPrice"] == "101.5"
    position = Position.objects.get(user=trader, symbol="BTC-USD")
    assert position.quantity == D("4")


def test_staff_record_a_fill(staff_client, alice_order):
    response = staff_client.post(
        url(alice_order, "fills"), {"quantity": "10", "price": "100"}, format="json"
    )

    assert response.status_code == 201
    assert response.json()["order"]["status"] == "FILLED"


def test_trader_cannot_record_fills_even_on_their_own_order(trader_client, alice_order):
    response = trader_client.post(
        url(alice_order, "fills"), {"quantity": "1", "price": "100"}, format="json"
    )

    assert response.status_code == 403
    assert not Fill.objects.exists()


def test_trader_recording_a_fill_on_another_users_order_is_403(trader_client, bob_order):
    response = trader_client.post(
        url(bob_order, "fills"), {"quantity": "1", "price": "100"}, format="json"
    )
    assert response.status_code == 403


def test_anonymous_recording_a_fill_is_401(api_client, alice_order):
    response = api_client.post(
        url(alice_order, "fills"), {"quantity": "1", "price": "100"}, format="json"
    )
    assert response.status_code == 401


def test_overfill_is_400_naming_the_remaining_quantity(gateway_client, alice_order):
    order_fill(order=alice_order, quantity=D("8"), price=D("100"))

    response = gateway_client.post(
        url(alice_order, "fills"), {"quantity": "3", "price": "100"}, format="json"
    )

    assert response.status_code == 400
    assert "remaining quantity of 2" in response.json()["quantity"][0]


def test_a_fill_on_a_cancelled_order_is_409(gateway_client, alice_order):
    order_cancel(order=alice_order)

    response = gateway_client.post(
        url(alice_order, "fills"), {"quantity": "1", "price": "100"}, format="json"
    )

    assert response.status_code == 409
    assert not Fill.objects.exists()


def test_a_fill_with_a_missing_price_is_400(gateway_client, alice_order):
    response = gateway_client.post(url(alice_order, "fills"), {"quantity": "1"}, format="json")

    assert response.status_code == 400
    assert set(response.json()) == {"price"}


def test_a_fill_on_an_absent_order_is_404(gateway_client):
    response = gateway_client.post(
        "/api/orders/999999/fills/", {"quantity": "1", "price": "1"}, format="json"
    )
    assert response.status_code == 404


def test_owner_lists_the_fills_of_an_order(trader_client, alice_order):
    order_fill(order=alice_order, quantity=D("1"), price=D("100"))
    order_fill(order=alice_order, quantity=D("2"), price=D("99.5"))

    response = trader_client.get(url(alice_order, "fills"))

    assert response.status_code == 200
    assert [(f["quantity"], f["price"]) for f in response.json()] == [("1", "100"), ("2", "99.5")]


def test_fills_of_another_users_order_are_404(trader_client, bob_order):
    assert trader_client.get(url(bob_order, "fills")).status_code == 404


def test_the_gateway_reads_only_its_own_orders(gateway_client, alice_order):
    assert gateway_client.get(url(alice_order)).status_code == 404
    assert gateway_client.get(url()).json() == []


# --- reject -----------------------------------------------------------------------------------


def test_gateway_rejects_a_new_order(gateway_client, alice_order):
    response = gateway_client.post(
        url(alice_order, "reject"), {"reason": "Insufficient margin."}, format="json"
    )

    assert response.status_code == 200
    assert response.json()["status"] == "REJECTED"
    alice_order.refresh_from_db()
    assert alice_order.reject_reason == "Insufficient margin."


def test_trader_cannot_reject_orders(trader_client, alice_order):
    response = trader_client.post(url(alice_order, "reject"), {"reason": "No."}, format="json")
    assert response.status_code == 403


def test_rejecting_a_partially_filled_order_is_409(staff_client, alice_order):
    order_fill(order=alice_order, quantity=D("1"), price=D("100"))

    response = staff_client.post(url(alice_order, "reject"), {"reason": "Late."}, format="json")

    assert response.status_code == 409


def test_rejecting_without_a_reason_is_400(staff_client, alice_order):
    response = staff_client.post(url(alice_order, "reject"), {"reason": " "}, format="json")

    assert response.status_code == 400
    assert set(response.json()) == {"reason"}


def test_a_strategy_filter_past_the_largest_id_is_a_400_not_a_500(trader_client):
    """Found by the schemathesis fuzzer: SQLite cannot bind an integer past 64 bits."""
    response = trader_client.get("/api/orders/", {"strategyId": str(2**66)})
    assert response.status_code == 400
    assert "strategyId" in response.json()
