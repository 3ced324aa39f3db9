"""realtime.snapshots: the state of each kind of topic (CONTRACT section 9), and its pages."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from market.services import quote_record
from market.ticks import Tick
from orders.services import order_cancel, order_fill, order_reject
from realtime.snapshots import PAGE_MAX_BYTES, Snapshots, paged, snapshot_items
from realtime.topics import parse_topic
from tests.factories import OrderFactory, PositionFactory, StrategyFactory, UserFactory

pytestmark = pytest.mark.django_db

D = Decimal


def items(topic: str) -> list[dict]:
    return snapshot_items(parse_topic(topic))


def ids(topic: str) -> list[int]:
    return [item["id"] for item in items(topic)]


@pytest.fixture
def later(monkeypatch):
    """Move the snapshots' clock forward by `hours`."""

    def move(hours: float) -> None:
        moved = timezone.now() + timedelta(hours=hours)
        monkeypatch.setattr(Snapshots, "now", staticmethod(lambda: moved))

    return move


# --- orders -----------------------------------------------------------------------------------


def test_an_orders_item_is_its_rest_representation_with_version_and_no_event(trader, trader_client):
    order = OrderFactory(user=trader)
    order_fill(order=order, quantity=D(4), price=D(100))

    (item,) = items(f"user:{trader.pk}:orders")

    assert item == trader_client.get(f"/api/orders/{order.pk}/").json()
    assert item["version"] == 2
    assert "event" not in item and "previousStatus" not in item


def test_a_rejected_order_keeps_its_reject_reason(trader):
    order = order_reject(order=OrderFactory(user=trader), reason="no liquidity")

    (item,) = items("orders")

    assert (item["id"], item["status"], item["rejectReason"]) == (
        order.pk,
        "REJECTED",
        "no liquidity",
    )


def test_orders_topics_hold_open_orders_and_those_changed_in_the_last_24_hours(trader, later):
    open_order = OrderFactory(user=trader)
    partly = OrderFactory(user=trader)
    order_fill(order=partly, quantity=D(1), price=D(100))
    filled = OrderFactory(user=trader)
    order_fill(order=filled, quantity=filled.quantity, price=D(100))
    canceled = order_cancel(order=OrderFactory(user=trader))
    everything = [open_order.pk, partly.pk, filled.pk, canceled.pk]

    assert ids("orders") == everything
    later(hours=23.9)
    assert ids("orders") == everything
    later(hours=24.1)  # the finished ones are old now; the open ones stay, however old
    assert ids("orders") == [open_order.pk, partly.pk]
    assert ids(f"user:{trader.pk}:orders") == [open_order.pk, partly.pk]


def test_a_users_orders_topic_holds_only_their_orders(trader, other_trader):
    mine = [OrderFactory(user=trader).pk for _ in range(2)]
    theirs = OrderFactory(user=other_trader).pk

    assert ids(f"user:{trader.pk}:orders") == mine
    assert ids(f"user:{other_trader.pk}:orders") == [theirs]
    assert ids("orders") == [*mine, theirs]


def test_a_strategys_orders_topic_holds_only_that_strategys_orders(trader, later):
    strategy = StrategyFactory(owner=trader)
    working = [OrderFactory(strategy=strategy).pk for _ in range(2)]
    finished = order_cancel(order=OrderFactory(strategy=strategy)).pk
    OrderFactory(strategy=StrategyFactory(owner=trader))
    OrderFactory(user=trader)

    assert ids(f"strategy:{strategy.pk}:orders") == [*working, finished]
    later(hours=25)
    assert ids(f"strategy:{strategy.pk}:orders") == working


# --- positions --------------------------------------------------------------------------------


def test_position_items_are_their_rest_representations_with_weights(
    trader, other_trader, staff_client
):
    PositionFactory(user=trader, symbol="AAPL", quantity=D(3), average_price=D(100))
    PositionFactory(user=trader, symbol="MSFT", quantity=D(-1), average_price=D(100))
    PositionFactory(user=other_trader, symbol="AAPL", quantity=D(5), average_price=D(10))

    snapshot = items("positions")

    rest = sorted(staff_client.get("/api/positions/").json(), key=lambda p: p["id"])
    assert snapshot == rest
    assert [p["portfolioWeight"] for p in snapshot] == ["0.75", "0.25", "1"]


def test_a_users_positions_topic_holds_all_and_only_their_positions(trader, other_trader):
    flat = PositionFactory(user=trader, symbol="AAPL")  # flat positions too: "all of them"
    held = PositionFactory(user=trader, symbol="MSFT", quantity=D(2), average_price=D(50))
    PositionFactory(user=other_trader, symbol="AAPL", quantity=D(1), average_price=D(1))

    snapshot = items(f"user:{trader.pk}:positions")

    assert [p["id"] for p in snapshot] == [flat.pk, held.pk]
    assert {p["userId"] for p in snapshot} == {trader.pk}
    assert [p["portfolioWeight"] for p in snapshot] == ["0", "1"]  # over alice's alone


# --- strategies -------------------------------------------------------------------------------


def test_strategies_topics_hold_all_of_them_and_a_strategy_topic_that_one(
    trader, other_trader, trader_client
):
    first, second = StrategyFactory(owner=trader), StrategyFactory(owner=trader)
    theirs = StrategyFactory(owner=other_trader)

    assert ids("strategies") == [first.pk, second.pk, theirs.pk]
    assert ids(f"user:{trader.pk}:strategies") == [first.pk, second.pk]
    assert ids(f"user:{other_trader.pk}:strategies") == [theirs.pk]
    (item,) = items(f"strategy:{second.pk}")
    assert item == trader_client.get(f"/api/strategies/{second.pk}/").json()
    assert item["version"] == 1


# --- market -----------------------------------------------------------------------------------


def test_a_market_topic_holds_the_latest_stored_quote_as_a_tick():
    at = timezone.now()
    quote_record(tick=Tick(symbol="AAPL", last=D("189.5"), timestamp=at - timedelta(seconds=1)))
    quote_record(
        tick=Tick(symbol="AAPL", last=D("190.1"), bid=D(190), ask=D("190.2"), timestamp=at)
    )
    quote_record(tick=Tick(symbol="MSFT", last=D(400), timestamp=at))

    (tick,) = items("market:aapl")

    assert (
        tick
        == Tick(symbol="AAPL", last=D("190.1"), bid=D(190), ask=D("190.2"), timestamp=at).payload()
    )
    assert tick["volume"] is None


# --- empty state and query counts ------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        "orders",
        "positions",
        "strategies",
        "user:{user}:orders",
        "user:{user}:positions",
        "user:{user}:strategies",
        "strategy:{strategy}",
        "strategy:{strategy}:orders",
        "market:AAPL",
    ],
)
def test_a_topic_with_nothing_in_it_has_an_empty_state(topic, trader):
    assert items(topic.format(user=trader.pk, strategy=99999)) == []


@pytest.mark.parametrize(
    ("topic", "count"),
    [
        ("orders", 200),
        ("user:{user}:orders", 50),
        ("strategy:{strategy}:orders", 50),
        ("positions", 200),
        ("user:{user}:positions", 50),
        ("strategies", 201),
        ("user:{user}:strategies", 51),
        ("strategy:{strategy}", 1),
        ("market:AAPL", 1),
    ],
)
def test_a_state_of_200_objects_is_read_with_one_query(
    topic, count, trader, django_assert_max_num_queries
):
    strategy = StrategyFactory(owner=trader)
    users = [trader, *(UserFactory() for _ in range(3))]
    for n in range(200):
        owner = users[n % 4]  # alice owns a quarter, and her orders are her strategy's
        OrderFactory(user=owner, strategy=strategy if owner == trader else None)
        PositionFactory(user=owner, symbol=f"S{n}", quantity=D(n + 1), average_price=D(10))
        StrategyFactory(owner=owner)
    quote_record(tick=Tick(symbol="AAPL", last=D(1)))

    with django_assert_max_num_queries(1):
        state = items(topic.format(user=trader.pk, strategy=strategy.pk))

    assert len(state) == count


# --- pages ------------------------------------------------------------------------------------


def item(n: int, size: int = 0) -> dict:
    return {"id": n, "blob": "x" * size}


def test_pages_hold_at_most_page_size_items_in_order():
    state = [item(n) for n in range(7)]

    pages = paged(state, 3)

    assert [[i["id"] for i in page] for page in pages] == [[0, 1, 2], [3, 4, 5], [6]]


def test_an_exact_multiple_fills_its_last_page_and_adds_no_empty_one():
    assert [len(page) for page in paged([item(n) for n in range(6)], 3)] == [3, 3]


def test_an_empty_state_is_one_empty_page():
    assert paged([], 500) == [[]]


def test_pages_also_stay_under_the_byte_bound():
    big = PAGE_MAX_BYTES // 3  # three such items fit in a page, four do not
    state = [item(n, big) for n in range(7)]

    pages = paged(state, 500)

    assert [len(page) for page in pages] == [2, 2, 2, 1]
    assert all(sum(len(str(i)) for i in page) < PAGE_MAX_BYTES for page in pages)
    assert [i["id"] for page in pages for i in page] == list(range(7))


def test_an_item_larger_than_the_byte_bound_gets_a_page_of_its_own():
    state = [item(0), item(1, PAGE_MAX_BYTES + 1), item(2)]

    assert [[i["id"] for i in page] for page in paged(state, 500)] == [[0], [1], [2]]


def test_without_a_byte_bound_only_the_count_cuts():
    state = [item(n, PAGE_MAX_BYTES) for n in range(3)]

    assert [len(page) for page in paged(state, 500, max_bytes=None)] == [3]


def test_a_page_size_below_one_is_refused():
    with pytest.raises(ValueError, match="page_size"):
        paged([item(0)], 0)


def test_the_page_size_setting_defaults_to_500_and_is_bounded(settings):
    from realtime.conf import realtime_settings, setting_problem

    assert realtime_settings.SNAPSHOT_PAGE_SIZE == 500
    assert setting_problem("SNAPSHOT_PAGE_SIZE", 10_000) is None
    assert "between 1 and 10000" in (setting_problem("SNAPSHOT_PAGE_SIZE", 0) or "")
    assert "between 1 and 10000" in (setting_problem("SNAPSHOT_PAGE_SIZE", 10_001) or "")
    settings.REALTIME = {"SNAPSHOT_PAGE_SIZE": 50}
    assert realtime_settings.SNAPSHOT_PAGE_SIZE == 50
