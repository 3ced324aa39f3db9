"""The admin: pages load for staff, and every change goes through the domain services."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.messages import get_messages

from orders.models import Fill, Order, OrderStatus
from orders.services import order_create, order_fill
from positions.models import Position
from strategies.models import Strategy, StrategyStatus
from strategies.services import strategy_create, strategy_start
from tests.factories import OrderFactory, UserFactory

pytestmark = pytest.mark.django_db

D = Decimal


@pytest.fixture
def book(db):
    """A trader with a running strategy, a partly filled order (so a position) and a new one."""
    trader = UserFactory(username="carol")
    strategy = strategy_start(strategy=strategy_create(owner=trader, name="Carry"))
    partly = order_create(
        user=trader,
        strategy=strategy,
        symbol="BTC-USD",
        side="BUY",
        order_type="LIMIT",
        quantity=D("10"),
        price=D("100"),
    )
    order_fill(order=partly, quantity=D("4"), price=D("99"))
    fresh = OrderFactory(user=trader, symbol="ETH-USD")
    return {
        "trader": trader,
        "strategy": strategy,
        "partly": partly,
        "fresh": fresh,
        "fill": partly.fills.get(),
        "position": Position.objects.get(user=trader),
    }


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


@pytest.mark.parametrize(
    "model", ["orders/order", "orders/fill", "positions/position", "strategies/strategy"]
)
def test_changelists_load_with_data(admin_client, book, model):
    response = admin_client.get(f"/admin/{model}/")
    assert response.status_code == 200


@pytest.mark.parametrize(
    "model", ["orders/order", "orders/fill", "positions/position", "strategies/strategy"]
)
def test_changelists_search_and_drill_down_by_date(admin_client, book, model):
    assert admin_client.get(f"/admin/{model}/?q=carol").status_code == 200


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("orders/order", "partly"),
        ("orders/fill", "fill"),
        ("positions/position", "position"),
        ("strategies/strategy", "strategy"),
    ],
)
def test_change_pages_load(admin_client, book, model, key):
    response = admin_client.get(f"/admin/{model}/{book[key].pk}/change/")
    assert response.status_code == 200


def test_order_page_shows_fills_and_pnl_fields_read_only(admin_client, book):
    content = admin_client.get(f"/admin/orders/order/{book['partly'].pk}/change/").content.decode()

    assert "Record a fill" in content
    assert 'name="_save"' not in content
    assert 'name="status"' not in content


def test_position_page_shows_computed_risk(admin_client, book):
    content = admin_client.get(
        f"/admin/positions/position/{book['position'].pk}/change/"
    ).content.decode()

    assert "portfolio weight" in content.lower()
    assert 'name="_save"' not in content


@pytest.mark.parametrize("model", ["orders/order", "strategies/strategy"])
def test_add_pages_load(admin_client, model):
    assert admin_client.get(f"/admin/{model}/add/").status_code == 200


def test_editing_an_order_directly_is_refused(admin_client, book):
    order = book["fresh"]

    response = admin_client.post(
        f"/admin/orders/order/{order.pk}/change/", {"status": OrderStatus.FILLED}
    )

    assert response.status_code == 403
    order.refresh_from_db()
    assert order.status == OrderStatus.NEW


def test_add_order_form_places_the_order_through_the_service(admin_client, book):
    response = admin_client.post(
        "/admin/orders/order/add/",
        {
            "user": book["trader"].pk,
            "strategy": book["strategy"].pk,
            "symbol": " sol-usd ",
            "side": "SELL",
            "order_type": "LIMIT",
            "quantity": "3",
            "price": "150",
        },
    )

    assert response.status_code == 302
    order = Order.objects.get(symbol="SOL-USD")
    assert (order.user, order.status) == (book["trader"], OrderStatus.NEW)
    book["strategy"].refresh_from_db()
    assert book["strategy"].metrics["orderCount"] == 2


def test_add_order_form_shows_service_errors_on_the_form(admin_client, book):
    response = admin_client.post(
        "/admin/orders/order/add/",
        {
            "user": book["trader"].pk,
            "symbol": "SOL-USD",
            "side": "BUY",
            "order_type": "STOP_LIMIT",
            "quantity": "3",
            "price": "150",
        },
    )

    assert response.status_code == 200
    assert "needs a stop price" in response.content.decode()
    assert not Order.objects.filter(symbol="SOL-USD").exists()


def test_add_order_with_another_users_strategy_is_refused_on_the_form(admin_client, book):
    response = admin_client.post(
        "/admin/orders/order/add/",
        {
            "user": UserFactory().pk,
            "strategy": book["strategy"].pk,
            "symbol": "SOL-USD",
            "side": "BUY",
            "order_type": "MARKET",
            "quantity": "1",
        },
    )

    assert response.status_code == 200
    assert "Strategy not found." in response.content.decode()
    assert not Order.objects.filter(symbol="SOL-USD").exists()


def test_cancel_action_cancels_open_orders_and_reports_the_others(admin_client, book):
    filled = OrderFactory(user=book["trader"], status=OrderStatus.FILLED)

    response = admin_client.post(
        "/admin/orders/order/",
        {
            "action": "cancel_orders",
            "_selected_action": [book["partly"].pk, book["fresh"].pk, filled.pk],
        },
    )

    assert response.status_code == 302
    statuses = dict(Order.objects.values_list("pk", "status"))
    assert statuses[book["partly"].pk] == OrderStatus.CANCELED
    assert statuses[book["fresh"].pk] == OrderStatus.CANCELED
    assert statuses[filled.pk] == OrderStatus.FILLED
    notes = messages_of(response)
    assert any("2 orders cancelled" in note for note in notes)
    assert any("can no longer be cancelled" in note for note in notes)
    book["strategy"].refresh_from_db()
    assert book["strategy"].metrics["openOrderCount"] == 0


def test_reject_action_rejects_new_orders(admin_client, book):
    admin_client.post(
        "/admin/orders/order/",
        {"action": "reject_orders", "_selected_action": [book["fresh"].pk]},
    )

    book["fresh"].refresh_from_db()
    assert book["fresh"].status == OrderStatus.REJECTED
    assert book["fresh"].reject_reason


def test_record_fill_form_fills_through_the_service(admin_client, book):
    order = book["partly"]
    url = f"/admin/orders/order/{order.pk}/record-fill/"
    assert admin_client.get(url).status_code == 200

    response = admin_client.post(url, {"quantity": "6", "price": "101"})

    assert response.status_code == 302
    order.refresh_from_db()
    assert (order.status, order.average_fill_price) == (OrderStatus.FILLED, D("100.2"))
    book["position"].refresh_from_db()
    assert book["position"].quantity == D("10")


def test_record_fill_form_shows_an_overfill_as_a_form_error(admin_client, book):
    response = admin_client.post(
        f"/admin/orders/order/{book['partly'].pk}/record-fill/", {"quantity": "7", "price": "1"}
    )

    assert response.status_code == 200
    assert "remaining quantity of 6" in response.content.decode()
    assert Fill.objects.count() == 1


def test_record_fill_on_a_cancelled_order_shows_the_conflict(admin_client, book):
    Order.objects.filter(pk=book["fresh"].pk).update(status=OrderStatus.CANCELED)

    response = admin_client.post(
        f"/admin/orders/order/{book['fresh'].pk}/record-fill/", {"quantity": "1", "price": "1"}
    )

    assert response.status_code == 200
    assert "CANCELED" in response.content.decode()


def test_staff_without_the_fill_permission_cannot_record_fills(client, book):
    client.force_login(UserFactory(username="clerk", is_staff=True))

    response = client.get(f"/admin/orders/order/{book['partly'].pk}/record-fill/")

    assert response.status_code == 403


def test_strategy_actions_go_through_the_lifecycle(admin_client, book):
    strategy = book["strategy"]

    def act(action):
        return admin_client.post(
            "/admin/strategies/strategy/", {"action": action, "_selected_action": [strategy.pk]}
        )

    act("pause_strategies")
    strategy.refresh_from_db()
    assert strategy.status == StrategyStatus.PAUSED

    response = act("pause_strategies")
    assert any("Cannot pause" in note for note in messages_of(response))

    act("stop_strategies")
    strategy.refresh_from_db()
    assert strategy.status == StrategyStatus.STOPPED


def test_refresh_metrics_action_recomputes_metrics(admin_client, book):
    strategy = book["strategy"]
    Strategy.objects.filter(pk=strategy.pk).update(metrics={})

    admin_client.post(
        "/admin/strategies/strategy/",
        {"action": "refresh_strategy_metrics", "_selected_action": [strategy.pk]},
    )

    strategy.refresh_from_db()
    assert strategy.metrics["fillCount"] == 1


def test_add_strategy_form_creates_a_draft_through_the_service(admin_client, book):
    response = admin_client.post(
        "/admin/strategies/strategy/add/",
        {
            "owner": book["trader"].pk,
            "name": "  Grid  ",
            "description": "",
            "parameters": '{"levels": 10}',
        },
    )

    assert response.status_code == 302
    strategy = Strategy.objects.get(name="Grid")
    assert (strategy.status, strategy.parameters) == (StrategyStatus.DRAFT, {"levels": 10})


def test_strategy_change_form_refuses_parameters_that_are_not_an_object(admin_client, book):
    strategy = book["strategy"]

    response = admin_client.post(
        f"/admin/strategies/strategy/{strategy.pk}/change/",
        {"name": "Carry", "description": "", "parameters": "[1, 2]"},
    )

    assert response.status_code == 200
    assert "JSON object" in response.content.decode()
    strategy.refresh_from_db()
    assert strategy.parameters == {}


def test_strategy_change_form_saves_edits_but_not_the_status(admin_client, book):
    strategy = book["strategy"]

    response = admin_client.post(
        f"/admin/strategies/strategy/{strategy.pk}/change/",
        {"name": "Carry v2", "description": "Tuned.", "parameters": "{}", "status": "STOPPED"},
    )

    assert response.status_code == 302
    strategy.refresh_from_db()
    assert (strategy.name, strategy.status) == ("Carry v2", StrategyStatus.RUNNING)
