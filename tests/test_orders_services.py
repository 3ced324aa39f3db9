"""orders.services: placing, cancelling, rejecting and filling orders, in one transaction."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models.signals import post_save, pre_save

from orders.models import Fill, Order, OrderStatus
from orders.services import order_cancel, order_create, order_fill, order_reject
from positions.models import Position
from strategies.models import Strategy, StrategyStatus
from tests.factories import OrderFactory, StrategyFactory, UserFactory
from tradingrt.errors import StateConflict

D = Decimal


@pytest.fixture
def user(db):
    return UserFactory()


def place(user, **overrides):
    fields = {
        "symbol": "BTC-USD",
        "side": "BUY",
        "order_type": "LIMIT",
        "quantity": D("10"),
        "price": D("100"),
    }
    return order_create(user=user, **{**fields, **overrides})


def fill(order, quantity, price):
    return order_fill(order=order, quantity=D(quantity), price=D(price))


def error_fields(excinfo) -> dict:
    return excinfo.value.message_dict


# --- order_create ---------------------------------------------------------------------------


def test_create_places_a_new_order_with_a_normalised_symbol(user):
    order = place(user, symbol="  btc-usd ")

    order.refresh_from_db()
    assert order.symbol == "BTC-USD"
    assert order.status == OrderStatus.NEW
    assert order.filled_quantity == 0
    assert order.average_fill_price is None
    assert order.user == user


@pytest.mark.parametrize("symbol", ["", "BTC USD", "BTC/USD", "X" * 33, "ÄPFEL", "a:b"])
def test_create_refuses_a_symbol_unfit_for_topic_names(user, symbol):
    with pytest.raises(ValidationError) as excinfo:
        place(user, symbol=symbol)
    assert set(error_fields(excinfo)) == {"symbol"}


@pytest.mark.parametrize("quantity", ["0", "-1"])
def test_create_refuses_a_quantity_that_is_not_positive(user, quantity):
    with pytest.raises(ValidationError) as excinfo:
        place(user, quantity=D(quantity))
    assert set(error_fields(excinfo)) == {"quantity"}


def test_create_refuses_more_than_eight_decimal_places(user):
    with pytest.raises(ValidationError) as excinfo:
        place(user, quantity=D("0.123456789"))
    assert "8 decimal places" in error_fields(excinfo)["quantity"][0]


def test_create_refuses_a_price_that_is_not_positive(user):
    with pytest.raises(ValidationError) as excinfo:
        place(user, price=D("0"))
    assert set(error_fields(excinfo)) == {"price"}


@pytest.mark.parametrize(
    ("order_type", "price", "stop_price", "bad_field"),
    [
        ("LIMIT", None, None, "price"),
        ("STOP_LIMIT", None, D("90"), "price"),
        ("STOP", None, None, "stop_price"),
        ("STOP_LIMIT", D("95"), None, "stop_price"),
        ("MARKET", D("100"), None, "price"),
        ("STOP", D("100"), D("90"), "price"),
        ("MARKET", None, D("90"), "stop_price"),
        ("LIMIT", D("100"), D("90"), "stop_price"),
    ],
)
def test_create_checks_which_prices_each_order_type_takes(
    user, order_type, price, stop_price, bad_field
):
    with pytest.raises(ValidationError) as excinfo:
        place(user, order_type=order_type, price=price, stop_price=stop_price)
    assert set(error_fields(excinfo)) == {bad_field}


@pytest.mark.parametrize(
    ("order_type", "price", "stop_price"),
    [
        ("MARKET", None, None),
        ("LIMIT", D("100"), None),
        ("STOP", None, D("90")),
        ("STOP_LIMIT", D("89"), D("90")),
    ],
)
def test_create_accepts_each_order_type_with_its_prices(user, order_type, price, stop_price):
    order = place(user, order_type=order_type, price=price, stop_price=stop_price)
    assert (order.order_type, order.price, order.stop_price) == (order_type, price, stop_price)


def test_create_reports_every_problem_at_once(user):
    with pytest.raises(ValidationError) as excinfo:
        place(user, symbol="bad symbol", side="HOLD", quantity=D("-1"))
    assert set(error_fields(excinfo)) == {"symbol", "side", "quantity"}


def test_create_refuses_another_users_strategy_as_not_found(user):
    foreign = StrategyFactory(status=StrategyStatus.RUNNING)

    with pytest.raises(ValidationError) as excinfo:
        place(user, strategy=foreign)

    assert error_fields(excinfo) == {"strategy": ["Strategy not found."]}
    assert not Order.objects.exists()


@pytest.mark.parametrize("status", [StrategyStatus.STOPPED, StrategyStatus.ERROR])
def test_create_with_a_stopped_or_failed_strategy_is_a_conflict(user, status):
    strategy = StrategyFactory(owner=user, status=status)

    with pytest.raises(StateConflict, match=status):
        place(user, strategy=strategy)
    assert not Order.objects.exists()


def test_create_counts_the_order_in_the_strategys_metrics(user):
    strategy = StrategyFactory(owner=user, status=StrategyStatus.RUNNING)

    place(user, strategy=strategy)

    strategy.refresh_from_db()
    assert strategy.metrics["orderCount"] == 1
    assert strategy.metrics["openOrderCount"] == 1


# --- order_fill -----------------------------------------------------------------------------


def test_partial_fill_then_full_fill_with_volume_weighted_average_price(user):
    order = place(user)

    fill(order, "4", "100")
    order.refresh_from_db()
    assert (order.status, order.filled_quantity) == (OrderStatus.PARTIALLY_FILLED, D("4"))
    assert order.average_fill_price == D("100")

    fill(order, "6", "110")
    order.refresh_from_db()
    assert (order.status, order.filled_quantity) == (OrderStatus.FILLED, D("10"))
    assert order.average_fill_price == D("106")
    assert list(order.fills.values_list("quantity", "price")) == [
        (D("4"), D("100")),
        (D("6"), D("110")),
    ]


def test_fill_updates_the_users_position(user):
    order = place(user, side="SELL", quantity=D("3"))

    fill(order, "3", "101.5")

    position = Position.objects.get(user=user, symbol="BTC-USD")
    assert (position.quantity, position.average_price) == (D("-3"), D("101.5"))


def test_fill_refreshes_the_strategys_metrics(user):
    strategy = StrategyFactory(owner=user, status=StrategyStatus.RUNNING)
    order = place(user, strategy=strategy)

    fill(order, "10", "100")

    strategy.refresh_from_db()
    assert strategy.metrics["filledOrderCount"] == 1
    assert strategy.metrics["fillCount"] == 1
    assert strategy.metrics["grossTradedValue"] == "1000"


def test_overfill_is_refused_naming_the_remaining_quantity(user):
    order = place(user)
    fill(order, "7.5", "100")

    with pytest.raises(ValidationError) as excinfo:
        fill(order, "3", "100")

    assert "remaining quantity of 2.5" in error_fields(excinfo)["quantity"][0]
    order.refresh_from_db()
    assert order.filled_quantity == D("7.5")
    assert order.fills.count() == 1


@pytest.mark.parametrize(("quantity", "price"), [("0", "100"), ("-1", "100"), ("1", "0")])
def test_fill_without_positive_quantity_and_price_is_refused(user, quantity, price):
    order = place(user)
    with pytest.raises(ValidationError):
        fill(order, quantity, price)
    assert not Fill.objects.exists()


def test_fill_on_a_filled_order_is_a_conflict(user):
    order = place(user)
    fill(order, "10", "100")

    with pytest.raises(StateConflict, match="FILLED"):
        fill(order, "1", "100")


def test_fill_on_a_cancelled_order_is_a_conflict(user):
    order = place(user)
    order_cancel(order=order)

    with pytest.raises(StateConflict, match="CANCELED"):
        fill(order, "1", "100")
    assert not Fill.objects.exists()


def test_fill_on_a_rejected_order_is_a_conflict(user):
    order = place(user)
    order_reject(order=order, reason="No liquidity.")

    with pytest.raises(StateConflict, match="REJECTED"):
        fill(order, "1", "100")


def test_fill_sees_a_cancellation_made_through_another_instance(user):
    order = place(user)
    order_cancel(order=Order.objects.get(pk=order.pk))

    with pytest.raises(StateConflict):
        fill(order, "1", "100")  # `order` in memory is stale: still NEW


def test_fill_rolls_back_order_and_fill_when_the_position_update_fails(user, monkeypatch):
    order = place(user)

    def broken_position_update(**kwargs):
        raise RuntimeError("position store unavailable")

    monkeypatch.setattr("orders.services.position_apply_fill", broken_position_update)
    with pytest.raises(RuntimeError):
        fill(order, "4", "100")

    order.refresh_from_db()
    assert (order.status, order.filled_quantity) == (OrderStatus.NEW, 0)
    assert not Fill.objects.exists()


def test_fill_rolls_back_order_fill_and_position_when_the_strategy_update_fails(user, monkeypatch):
    strategy = StrategyFactory(owner=user, status=StrategyStatus.RUNNING)
    order = place(user, strategy=strategy)

    def broken_metrics(**kwargs):
        raise RuntimeError("metrics failed")

    monkeypatch.setattr("orders.services.strategy_record_execution", broken_metrics)
    with pytest.raises(RuntimeError):
        fill(order, "4", "100")

    order.refresh_from_db()
    assert order.filled_quantity == 0
    assert not Fill.objects.exists()
    assert not Position.objects.exists()


def test_fill_sets_the_strategys_pending_execution_before_saving_it(user):
    strategy = StrategyFactory(owner=user, status=StrategyStatus.RUNNING)
    order = place(user, strategy=strategy)
    seen = []

    # pre_save: post_save receivers (realtime's) consume and clear the attribute.
    def receiver(sender, instance, **kwargs):
        seen.append(instance.pending_execution)

    pre_save.connect(receiver, sender=Strategy, dispatch_uid="test-pending-execution")
    try:
        recorded = fill(order, "4", "100")
    finally:
        pre_save.disconnect(sender=Strategy, dispatch_uid="test-pending-execution")

    assert seen == [recorded]


def test_fill_saves_the_order_so_receivers_see_the_previous_status(user):
    order = place(user)
    seen = []

    def receiver(sender, instance, **kwargs):
        seen.append((instance.previous_value("status"), instance.status))

    post_save.connect(receiver, sender=Order, dispatch_uid="test-order-previous-status")
    try:
        fill(order, "4", "100")
        fill(order, "6", "100")
    finally:
        post_save.disconnect(sender=Order, dispatch_uid="test-order-previous-status")

    assert seen == [
        (OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED),
        (OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED),
    ]


# --- order_cancel and order_reject ------------------------------------------------------------


def test_cancel_a_new_order(user):
    order = order_cancel(order=place(user))

    order.refresh_from_db()
    assert order.status == OrderStatus.CANCELED


def test_cancel_a_partially_filled_order_keeps_its_fills(user):
    order = place(user)
    fill(order, "4", "100")

    order_cancel(order=order)

    order.refresh_from_db()
    assert (order.status, order.filled_quantity) == (OrderStatus.CANCELED, D("4"))


@pytest.mark.parametrize("status", [OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.REJECTED])
def test_cancel_a_closed_order_is_a_conflict(user, status):
    order = OrderFactory(user=user, status=status)

    with pytest.raises(StateConflict, match=status):
        order_cancel(order=order)
    order.refresh_from_db()
    assert order.status == status


def test_cancel_refreshes_the_strategys_open_order_count(user):
    strategy = StrategyFactory(owner=user, status=StrategyStatus.RUNNING)
    order = place(user, strategy=strategy)

    order_cancel(order=order)

    strategy.refresh_from_db()
    assert (strategy.metrics["orderCount"], strategy.metrics["openOrderCount"]) == (1, 0)


def test_reject_a_new_order_records_the_reason(user):
    order = order_reject(order=place(user), reason="  Insufficient margin. ")

    order.refresh_from_db()
    assert (order.status, order.reject_reason) == (OrderStatus.REJECTED, "Insufficient margin.")


def test_reject_a_partially_filled_order_is_a_conflict(user):
    order = place(user)
    fill(order, "1", "100")

    with pytest.raises(StateConflict, match="PARTIALLY_FILLED"):
        order_reject(order=order, reason="Too late.")


def test_reject_needs_a_reason(user):
    with pytest.raises(ValidationError) as excinfo:
        order_reject(order=place(user), reason="   ")
    assert set(error_fields(excinfo)) == {"reject_reason"}


# --- concurrency ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_fills_cannot_together_overfill_an_order():
    """Two gateways fill 8 of a 10 order at once: the row lock lets exactly one through."""
    order = place(UserFactory())
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def fill_eight() -> None:
        try:
            start.wait()
            order_fill(order=Order.objects.get(pk=order.pk), quantity=D("8"), price=D("100"))
            outcomes.append("filled")
        except ValidationError:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=fill_eight) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == ["filled", "refused"]
    order.refresh_from_db()
    assert order.filled_quantity == D("8")
    assert Position.objects.get(user=order.user).quantity == D("8")
