"""strategies.services and strategies.selectors: creation, edits, lifecycle and metrics."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models.signals import post_save

from market.services import market_mark
from market.ticks import Tick
from orders.models import Order
from orders.selectors import strategy_metrics
from orders.services import (
    order_cancel,
    order_create,
    order_fill,
    strategy_refresh_marked,
    strategy_refresh_metrics,
)
from positions.models import Position
from strategies.models import Strategy, StrategyStatus, empty_metrics
from strategies.services import (
    strategy_create,
    strategy_pause,
    strategy_start,
    strategy_stop,
    strategy_update,
)
from tests.factories import StrategyFactory, UserFactory
from tradingrt.errors import StateConflict

D = Decimal
S = StrategyStatus


@pytest.fixture
def owner(db):
    return UserFactory()


@pytest.fixture
def running(owner):
    return StrategyFactory(owner=owner, status=S.RUNNING)


def trade(strategy, side, quantity, price, symbol="BTC-USD"):
    """A MARKET order of the strategy, filled completely at `price`."""
    order = order_create(
        user=strategy.owner,
        strategy=strategy,
        symbol=symbol,
        side=side,
        order_type="MARKET",
        quantity=D(quantity),
    )
    order_fill(order=order, quantity=D(quantity), price=D(price))
    return order


def metrics_of(strategy):
    strategy.refresh_from_db()
    return strategy.metrics


# --- create and update ------------------------------------------------------------------------


def test_create_makes_a_draft_with_empty_metrics(owner):
    strategy = strategy_create(owner=owner, name="  Momentum  ", parameters={"window": 20})

    strategy.refresh_from_db()
    assert (strategy.name, strategy.status) == ("Momentum", S.DRAFT)
    assert strategy.parameters == {"window": 20}
    assert strategy.description == ""
    assert strategy.metrics == empty_metrics()


def test_create_without_parameters_stores_an_empty_object(owner):
    assert strategy_create(owner=owner, name="Plain").parameters == {}


@pytest.mark.parametrize("name", ["", "   ", "x" * 101])
def test_create_refuses_a_blank_or_too_long_name(owner, name):
    with pytest.raises(ValidationError) as excinfo:
        strategy_create(owner=owner, name=name)
    assert set(excinfo.value.message_dict) == {"name"}


@pytest.mark.parametrize("parameters", [[1, 2], "window=20", 3])
def test_create_refuses_parameters_that_are_not_a_json_object(owner, parameters):
    with pytest.raises(ValidationError) as excinfo:
        strategy_create(owner=owner, name="Bad", parameters=parameters)
    assert set(excinfo.value.message_dict) == {"parameters"}
    assert not Strategy.objects.exists()


def test_update_changes_only_the_given_fields(running):
    strategy_update(strategy=running, description="Now with a stop.", parameters={"stop": "0.02"})

    running.refresh_from_db()
    assert running.description == "Now with a stop."
    assert running.parameters == {"stop": "0.02"}
    assert running.status == S.RUNNING


def test_update_refuses_parameters_that_are_not_an_object_and_changes_nothing(running):
    before = running.parameters

    with pytest.raises(ValidationError):
        strategy_update(strategy=running, name="Renamed", parameters=["not", "an", "object"])

    running.refresh_from_db()
    assert running.parameters == before
    assert running.name != "Renamed"


def test_update_cannot_change_the_status(running):
    with pytest.raises(TypeError, match="status"):
        strategy_update(strategy=running, status=S.STOPPED)


# --- lifecycle --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "before", "after"),
    [
        (strategy_start, S.DRAFT, S.RUNNING),
        (strategy_start, S.PAUSED, S.RUNNING),
        (strategy_pause, S.RUNNING, S.PAUSED),
        (strategy_stop, S.DRAFT, S.STOPPED),
        (strategy_stop, S.RUNNING, S.STOPPED),
        (strategy_stop, S.PAUSED, S.STOPPED),
        (strategy_stop, S.ERROR, S.STOPPED),
    ],
)
def test_legal_transitions(owner, service, before, after):
    strategy = StrategyFactory(owner=owner, status=before)

    returned = service(strategy=strategy)

    assert returned.status == after
    strategy.refresh_from_db()
    assert strategy.status == after


@pytest.mark.parametrize(
    ("service", "action", "before"),
    [
        (strategy_start, "start", S.RUNNING),
        (strategy_start, "start", S.STOPPED),
        (strategy_start, "start", S.ERROR),
        (strategy_pause, "pause", S.DRAFT),
        (strategy_pause, "pause", S.PAUSED),
        (strategy_pause, "pause", S.STOPPED),
        (strategy_pause, "pause", S.ERROR),
        (strategy_stop, "stop", S.STOPPED),
    ],
)
def test_illegal_transitions_are_conflicts_naming_status_and_action(owner, service, action, before):
    strategy = StrategyFactory(owner=owner, status=before)

    with pytest.raises(StateConflict) as excinfo:
        service(strategy=strategy)

    assert action in str(excinfo.value)
    assert before in str(excinfo.value)
    strategy.refresh_from_db()
    assert strategy.status == before


def test_transition_reads_the_current_status_not_a_stale_copy(owner):
    strategy = StrategyFactory(owner=owner, status=S.RUNNING)
    strategy_stop(strategy=Strategy.objects.get(pk=strategy.pk))

    with pytest.raises(StateConflict, match="STOPPED"):
        strategy_pause(strategy=strategy)  # this copy still says RUNNING


# --- metrics ----------------------------------------------------------------------------------


def test_metrics_count_orders_by_state(running):
    trade(running, "BUY", "1", "100")
    order_create(
        user=running.owner,
        strategy=running,
        symbol="BTC-USD",
        side="BUY",
        order_type="LIMIT",
        quantity=D("2"),
        price=D("90"),
    )
    cancelled = order_create(
        user=running.owner,
        strategy=running,
        symbol="BTC-USD",
        side="SELL",
        order_type="LIMIT",
        quantity=D("1"),
        price=D("200"),
    )
    order_cancel(order=cancelled)

    metrics = metrics_of(running)
    assert metrics["orderCount"] == 3
    assert metrics["openOrderCount"] == 1
    assert metrics["filledOrderCount"] == 1
    assert metrics["fillCount"] == 1


def test_metrics_realized_pnl_and_win_rate_from_closing_trades(running):
    trade(running, "BUY", "10", "100")
    trade(running, "SELL", "4", "110")  # closes 4: +40, a win
    trade(running, "SELL", "3", "95")  # closes 3: -15, a loss
    trade(running, "SELL", "3", "120")  # closes 3: +60, a win

    metrics = metrics_of(running)
    assert metrics["realizedPnl"] == "85"
    assert metrics["unrealizedPnl"] == "0"
    assert metrics["totalPnl"] == "85"
    assert (metrics["closedTradeCount"], metrics["winningTradeCount"]) == (3, 2)
    assert metrics["winRate"] == "0.666667"
    assert metrics["grossTradedValue"] == str(1000 + 440 + 285 + 360)


def test_metrics_win_rate_is_null_without_closing_trades(running):
    trade(running, "BUY", "1", "100")
    trade(running, "BUY", "1", "105")

    assert metrics_of(running)["winRate"] is None


def test_metrics_unrealized_pnl_uses_the_owners_market_price(running):
    trade(running, "SELL", "2", "100")
    market_mark(ticks=[Tick(symbol="BTC-USD", last=D("90"))])

    metrics = metrics_of(running)
    assert metrics["unrealizedPnl"] == "20"
    assert metrics["totalPnl"] == "20"


def test_metrics_unrealized_pnl_falls_back_to_the_last_fill_price(running):
    trade(running, "BUY", "1", "100")
    trade(running, "BUY", "1", "110")
    Position.objects.filter(user=running.owner).update(market_price=None)

    assert strategy_metrics(strategy=running)["unrealizedPnl"] == "10"


def test_metrics_keep_each_symbol_and_each_strategy_apart(owner, running):
    other = StrategyFactory(owner=owner, status=S.RUNNING)
    trade(running, "BUY", "1", "100")
    trade(running, "BUY", "10", "5", symbol="ETH-USD")
    trade(other, "SELL", "1", "120")  # the owner's BTC position is now flat
    trade(running, "SELL", "1", "130")  # closes the strategy's own BTC long: +30

    metrics = metrics_of(running)
    assert metrics["realizedPnl"] == "30"
    assert metrics["closedTradeCount"] == 1
    assert metrics_of(other)["realizedPnl"] == "0"


def test_metrics_realized_pnl_on_a_flip(running):
    trade(running, "BUY", "2", "100")
    trade(running, "SELL", "5", "110")  # closes 2 (+20), opens 3 short at 110
    trade(running, "BUY", "3", "100")  # closes the short: +30

    metrics = metrics_of(running)
    assert metrics["realizedPnl"] == "50"
    assert (metrics["closedTradeCount"], metrics["winRate"]) == (2, "1")


def test_refresh_metrics_rebuilds_metrics_that_drifted(running):
    trade(running, "BUY", "1", "100")
    Strategy.objects.filter(pk=running.pk).update(metrics=empty_metrics())

    strategy_refresh_metrics(strategy=running)

    assert metrics_of(running)["fillCount"] == 1


def test_a_mark_refreshes_the_unrealized_pnl_of_strategies_holding_the_symbol(running):
    flat = StrategyFactory(owner=running.owner, status=S.RUNNING)
    trade(running, "BUY", "2", "100")
    trade(flat, "BUY", "1", "10", symbol="ETH-USD")
    flat.refresh_from_db()
    flat_updated_at = flat.updated_at

    market_mark(ticks=[Tick(symbol="BTC-USD", last=D("125"))])

    assert metrics_of(running)["unrealizedPnl"] == "50"
    flat.refresh_from_db()
    assert flat.updated_at == flat_updated_at


def test_refresh_marked_saves_only_strategies_whose_metrics_changed(running):
    trade(running, "BUY", "1", "100")

    assert strategy_refresh_marked(symbol="BTC-USD", owner_ids={running.owner_id}) == []
    Position.objects.filter(user=running.owner).update(market_price=D("101"))
    changed = strategy_refresh_marked(symbol="BTC-USD", owner_ids={running.owner_id})

    assert changed == [running]
    assert metrics_of(running)["unrealizedPnl"] == "1"


def test_update_without_fields_saves_nothing(running):
    running.refresh_from_db()
    updated_at = running.updated_at

    strategy_update(strategy=running)

    running.refresh_from_db()
    assert running.updated_at == updated_at


# --- concurrent writers -----------------------------------------------------------------------


def test_update_of_a_stale_instance_keeps_the_metrics_and_status_saved_meanwhile(running):
    """The edit form's instance was loaded before a fill: saving it must not undo the fill."""
    stale = Strategy.objects.get(pk=running.pk)
    trade(running, "BUY", "2", "100")
    strategy_pause(strategy=Strategy.objects.get(pk=running.pk))
    fresh = Strategy.objects.get(pk=running.pk)

    updated = strategy_update(strategy=stale, name="Renamed")

    row = Strategy.objects.get(pk=running.pk)
    assert row.name == "Renamed"
    assert row.metrics == fresh.metrics
    assert row.metrics["fillCount"] == 1
    assert row.status == S.PAUSED
    assert row.version == updated.version == fresh.version + 1


def test_update_that_changes_nothing_saves_nothing(running):
    version = Strategy.objects.get(pk=running.pk).version

    strategy_update(strategy=running, name=running.name, parameters=dict(running.parameters))

    assert Strategy.objects.get(pk=running.pk).version == version


@pytest.mark.django_db(transaction=True)
def test_concurrent_edits_and_executions_all_land_with_contiguous_versions():
    """An editor and an execution gateway write one strategy at once, each from a stale copy.

    Every change reaches the row and every save gets its own version, one after the other,
    so a reader ordering updates by version neither drops one nor ends on a state the
    database does not hold.
    """
    rounds = 5
    strategy = StrategyFactory(owner=UserFactory(), status=S.RUNNING)
    orders = [
        order_create(
            user=strategy.owner,
            strategy=strategy,
            symbol="BTC-USD",
            side="BUY",
            order_type="MARKET",
            quantity=D("1"),
        )
        for _ in range(rounds)
    ]
    start_version = Strategy.objects.get(pk=strategy.pk).version
    saved_versions: list[int] = []
    versions_lock = threading.Lock()

    def record_version(sender, instance, **kwargs):
        with versions_lock:
            saved_versions.append(instance.version)

    start = threading.Barrier(2)
    failures: list[BaseException] = []

    def edit() -> None:
        try:
            stale = Strategy.objects.get(pk=strategy.pk)
            for number in range(rounds):
                start.wait()  # each round, both writers go at once
                strategy_update(strategy=stale, description=f"edit {number}")
        except BaseException as error:  # reported by the main thread
            failures.append(error)
        finally:
            connection.close()

    def execute() -> None:
        try:
            stale_orders = [Order.objects.get(pk=order.pk) for order in orders]
            for order in stale_orders:
                start.wait()
                order_fill(order=order, quantity=D("1"), price=D("100"))
        except BaseException as error:
            failures.append(error)
        finally:
            connection.close()

    post_save.connect(record_version, sender=Strategy, dispatch_uid="test.record_version")
    try:
        threads = [threading.Thread(target=edit), threading.Thread(target=execute)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        post_save.disconnect(sender=Strategy, dispatch_uid="test.record_version")

    assert failures == []
    row = Strategy.objects.get(pk=strategy.pk)
    assert row.description == f"edit {rounds - 1}"
    assert row.metrics["fillCount"] == rounds
    assert row.metrics["filledOrderCount"] == rounds
    assert row.status == S.RUNNING
    assert sorted(saved_versions) == list(range(start_version + 1, row.version + 1))
    assert len(saved_versions) == 2 * rounds


# --- bounded free-form fields -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"description": "x" * 2001}, "description"),
        ({"parameters": {"blob": "x" * (128 * 1024)}}, "parameters"),
        ({"parameters": {"price": float("nan")}}, "parameters"),
    ],
)
def test_update_refuses_what_a_strategy_update_could_not_carry(running, fields, field):
    with pytest.raises(ValidationError) as excinfo:
        strategy_update(strategy=running, **fields)

    assert set(excinfo.value.message_dict) == {field}
