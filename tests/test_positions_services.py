"""positions.services and positions.selectors: average cost, realized P&L, marks, exposure."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db.models.signals import post_save

from positions.models import Position
from positions.selectors import (
    portfolio_weight,
    total_exposure_by_user,
    user_total_exposure,
)
from positions.services import position_apply_fill, position_mark
from tests.factories import PositionFactory, UserFactory

D = Decimal


def apply(user, side, quantity, price, symbol="BTC-USD"):
    return position_apply_fill(
        user=user, symbol=symbol, side=side, quantity=D(quantity), price=D(price)
    )


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def saves():
    """The (created, update_fields, quantity) of every Position save while the test runs."""
    seen = []

    def record(sender, instance, created, update_fields, **kwargs):
        seen.append((created, update_fields, instance.quantity))

    post_save.connect(record, sender=Position, dispatch_uid="test-position-saves")
    yield seen
    post_save.disconnect(sender=Position, dispatch_uid="test-position-saves")


def test_first_buy_opens_a_long_at_the_fill_price_and_marks_it_there(user):
    position = apply(user, "BUY", "10", "100")

    position.refresh_from_db()
    assert position.quantity == D("10")
    assert position.average_price == D("100")
    assert position.market_price == D("100")
    assert position.realized_pnl == 0


def test_first_fill_inserts_the_position_once_with_its_real_quantity(user, saves):
    apply(user, "SELL", "3", "100")

    assert saves == [(True, None, D("-3"))]


def test_adding_to_a_long_moves_the_average_to_the_weighted_price(user):
    apply(user, "BUY", "10", "100")
    position = apply(user, "BUY", "30", "120")

    assert position.quantity == D("40")
    assert position.average_price == D("115")
    assert position.realized_pnl == 0


def test_adding_to_a_short_moves_the_average_to_the_weighted_price(user):
    apply(user, "SELL", "1", "200")
    position = apply(user, "SELL", "3", "100")

    assert position.quantity == D("-4")
    assert position.average_price == D("125")


def test_weighted_average_is_rounded_to_the_stored_precision(user):
    apply(user, "BUY", "1", "1")
    position = apply(user, "BUY", "2", "2")

    assert position.average_price == D("1.66666667")
    position.refresh_from_db()
    assert position.average_price == D("1.66666667")


def test_reducing_a_long_realizes_pnl_and_keeps_the_average(user):
    apply(user, "BUY", "10", "100")
    position = apply(user, "SELL", "4", "110")

    assert position.quantity == D("6")
    assert position.average_price == D("100")
    assert position.realized_pnl == D("40")


def test_reducing_a_short_at_a_lower_price_realizes_a_profit(user):
    apply(user, "SELL", "10", "100")
    position = apply(user, "BUY", "4", "90")

    assert position.quantity == D("-6")
    assert position.average_price == D("100")
    assert position.realized_pnl == D("40")


def test_reducing_a_long_at_a_lower_price_realizes_a_loss(user):
    apply(user, "BUY", "10", "100")
    position = apply(user, "SELL", "5", "95")

    assert position.realized_pnl == D("-25")


def test_closing_keeps_the_row_flat_with_a_zero_average(user):
    apply(user, "BUY", "10", "100")
    position = apply(user, "SELL", "10", "120")

    position.refresh_from_db()
    assert position.quantity == 0
    assert position.average_price == 0
    assert position.realized_pnl == D("200")
    assert Position.objects.filter(user=user).count() == 1


def test_flip_from_long_to_short_realizes_the_closed_part_and_opens_the_rest_at_the_fill(user):
    apply(user, "BUY", "10", "100")
    position = apply(user, "SELL", "15", "110")

    assert position.realized_pnl == D("100")
    assert position.quantity == D("-5")
    assert position.average_price == D("110")


def test_flip_from_short_to_long_realizes_the_closed_part_and_opens_the_rest_at_the_fill(user):
    apply(user, "SELL", "10", "100")
    position = apply(user, "BUY", "15", "90")

    assert position.realized_pnl == D("100")
    assert position.quantity == D("5")
    assert position.average_price == D("90")


def test_realized_pnl_accumulates_across_fills(user):
    apply(user, "BUY", "10", "100")
    apply(user, "SELL", "5", "110")
    position = apply(user, "SELL", "5", "90")

    assert position.realized_pnl == D("0")


def test_a_fill_keeps_an_existing_market_price(user):
    apply(user, "BUY", "1", "100")
    position_mark(symbol="BTC-USD", price=D("105"))
    position = apply(user, "BUY", "1", "102")

    assert position.market_price == D("105")


def test_positions_are_per_user_and_symbol(user):
    other = UserFactory()
    apply(user, "BUY", "1", "100")
    apply(user, "BUY", "2", "10", symbol="ETH-USD")
    apply(other, "SELL", "3", "100")

    quantities = dict(Position.objects.filter(user=user).values_list("symbol", "quantity"))
    assert quantities == {"BTC-USD": D("1"), "ETH-USD": D("2")}
    assert Position.objects.get(user=other).quantity == D("-3")


@pytest.mark.parametrize(("quantity", "price"), [("0", "100"), ("-1", "100"), ("1", "0")])
def test_a_fill_without_positive_quantity_and_price_is_refused(user, quantity, price):
    with pytest.raises(ValidationError):
        apply(user, "BUY", quantity, price)
    assert not Position.objects.exists()


def test_unrealized_pnl_of_a_short_gains_when_the_price_falls(user):
    apply(user, "SELL", "4", "100")
    (position,) = position_mark(symbol="BTC-USD", price=D("90"))

    assert position.market_value == D("-360")
    assert position.unrealized_pnl == D("40")
    assert position.exposure == D("360")
    assert position.total_pnl == D("40")


def test_mark_updates_only_positions_in_that_symbol_whose_price_differs(user, saves):
    other = UserFactory()
    apply(user, "BUY", "1", "100")
    apply(other, "SELL", "1", "105")
    untouched = apply(user, "BUY", "1", "10", symbol="ETH-USD")
    saves.clear()

    changed = position_mark(symbol="BTC-USD", price=D("105"))

    assert [(p.user, p.market_price) for p in changed] == [(user, D("105"))]
    assert saves == [(False, frozenset({"market_price", "updated_at", "version"}), D("1"))]
    untouched.refresh_from_db()
    assert untouched.market_price == D("10")


def test_mark_with_an_unchanged_price_saves_nothing(user, saves):
    apply(user, "BUY", "1", "100")
    saves.clear()

    assert position_mark(symbol="BTC-USD", price=D("100")) == []
    assert saves == []


def test_mark_reaches_positions_without_a_market_price(user):
    PositionFactory(user=user, quantity=D("2"), average_price=D("50"), market_price=None)

    (position,) = position_mark(symbol="BTC-USD", price=D("60"))

    assert position.market_price == D("60")


def test_mark_accepts_a_lower_case_symbol(user):
    apply(user, "BUY", "1", "100")

    assert len(position_mark(symbol=" btc-usd ", price=D("101"))) == 1


@pytest.mark.parametrize("price", ["0", "-1"])
def test_mark_refuses_a_price_that_is_not_positive(user, price):
    with pytest.raises(ValidationError):
        position_mark(symbol="BTC-USD", price=D(price))


def test_total_exposure_uses_market_price_else_average_price_in_one_query(
    user, django_assert_num_queries
):
    other = UserFactory()
    PositionFactory(user=user, quantity=D("-2"), average_price=D("100"), market_price=D("110"))
    PositionFactory(user=user, symbol="ETH-USD", quantity=D("3"), average_price=D("10"))
    PositionFactory(user=other, quantity=D("1"), average_price=D("100"), market_price=D("90"))
    lonely = UserFactory()

    with django_assert_num_queries(1):
        totals = total_exposure_by_user(user_ids=[user.pk, other.pk, lonely.pk])

    assert totals == {user.pk: D("250"), other.pk: D("90")}
    assert user_total_exposure(user_id=lonely.pk) == 0


def test_portfolio_weight_is_rounded_to_six_places_and_zero_without_exposure():
    assert portfolio_weight(exposure=D("1"), total_exposure=D("3")) == D("0.333333")
    assert portfolio_weight(exposure=D("0"), total_exposure=D("0")) == 0
