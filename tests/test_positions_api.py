"""The positions REST API and PositionSerializer: fields, risk metrics, isolation, queries."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from positions.models import Position
from positions.serializers import PositionSerializer
from positions.services import position_apply_fill, position_mark
from tests.factories import PositionFactory, UserFactory

pytestmark = pytest.mark.django_db

D = Decimal
POSITION_FIELDS = {
    "id",
    "userId",
    "symbol",
    "quantity",
    "averagePrice",
    "marketPrice",
    "marketValue",
    "unrealizedPnl",
    "realizedPnl",
    "totalPnl",
    "updatedAt",
    "version",
    "exposure",
    "portfolioWeight",
}
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def buy(user, quantity, price, symbol="BTC-USD", side="BUY"):
    return position_apply_fill(
        user=user, symbol=symbol, side=side, quantity=D(quantity), price=D(price)
    )


def test_position_fields_and_formats(trader, trader_client):
    buy(trader, "10", "100")
    buy(trader, "4", "110", side="SELL")
    position_mark(symbol="BTC-USD", price=D("105.50"))

    (body,) = trader_client.get("/api/positions/").json()

    assert set(body) == POSITION_FIELDS
    assert body["userId"] == trader.pk
    assert body["symbol"] == "BTC-USD"
    assert body["quantity"] == "6"
    assert body["averagePrice"] == "100"
    assert body["marketPrice"] == "105.5"
    assert body["marketValue"] == "633"
    assert body["unrealizedPnl"] == "33"
    assert body["realizedPnl"] == "40"
    assert body["totalPnl"] == "73"
    assert body["exposure"] == "633"
    assert body["portfolioWeight"] == "1"
    assert TIMESTAMP.match(body["updatedAt"])


def test_version_counts_each_saved_change_of_a_position(trader, trader_client):
    buy(trader, "10", "100")
    buy(trader, "4", "110", side="SELL")
    position_mark(symbol="BTC-USD", price=D("105"))

    (body,) = trader_client.get("/api/positions/").json()

    assert body["version"] == Position.objects.get().version == 3


def test_a_short_position_has_a_negative_quantity_and_positive_exposure(trader, trader_client):
    buy(trader, "5", "20", side="SELL")

    (body,) = trader_client.get("/api/positions/").json()

    assert (body["quantity"], body["marketValue"], body["exposure"]) == ("-5", "-100", "100")


def test_portfolio_weight_is_the_share_of_the_owners_total_exposure(trader, trader_client):
    buy(trader, "3", "100")
    buy(trader, "1", "100", symbol="ETH-USD", side="SELL")
    buy(UserFactory(), "50", "100")  # another user's exposure does not dilute alice's

    weights = {
        p["symbol"]: p["portfolioWeight"] for p in trader_client.get("/api/positions/").json()
    }

    assert weights == {"BTC-USD": "0.75", "ETH-USD": "0.25"}


def test_a_flat_position_weighs_zero(trader, trader_client):
    buy(trader, "1", "100")
    buy(trader, "1", "100", side="SELL")

    (body,) = trader_client.get("/api/positions/").json()

    assert (body["quantity"], body["exposure"], body["portfolioWeight"]) == ("0", "0", "0")


def test_filtering_by_symbol_keeps_weights_over_all_positions(trader, trader_client):
    buy(trader, "1", "100")
    buy(trader, "1", "300", symbol="ETH-USD")

    (body,) = trader_client.get("/api/positions/?symbol=eth-usd").json()

    assert body["portfolioWeight"] == "0.75"


def test_listing_costs_the_same_queries_for_one_position_or_many(staff_client):
    buy(UserFactory(), "1", "100")
    with CaptureQueriesContext(connection) as one:
        staff_client.get("/api/positions/")

    for symbol in ("ETH-USD", "SOL-USD", "ADA-USD"):
        buy(UserFactory(), "1", "10", symbol=symbol)
        buy(UserFactory(), "2", "10", symbol=symbol)
    with CaptureQueriesContext(connection) as many:
        response = staff_client.get("/api/positions/")

    assert len(response.json()) == 7
    assert len(many.captured_queries) == len(one.captured_queries)


def test_traders_see_only_their_own_positions(trader, other_trader, trader_client):
    own = buy(trader, "1", "100")
    buy(other_trader, "1", "100")

    assert [p["id"] for p in trader_client.get("/api/positions/").json()] == [own.pk]


def test_staff_see_every_position(trader, other_trader, staff_client):
    buy(trader, "1", "100")
    buy(other_trader, "1", "100")

    assert len(staff_client.get("/api/positions/").json()) == 2


def test_retrieve_own_position_and_404_for_another_users(
    trader, other_trader, trader_client, staff_client
):
    own = buy(trader, "1", "100")
    foreign = buy(other_trader, "2", "100")

    assert trader_client.get(f"/api/positions/{own.pk}/").json()["quantity"] == "1"
    assert trader_client.get(f"/api/positions/{foreign.pk}/").status_code == 404
    assert staff_client.get(f"/api/positions/{foreign.pk}/").status_code == 200


def test_positions_are_read_only(trader, trader_client):
    position = buy(trader, "1", "100")

    assert trader_client.post("/api/positions/", {}, format="json").status_code == 405
    assert trader_client.patch(f"/api/positions/{position.pk}/", {}).status_code == 405
    assert trader_client.delete(f"/api/positions/{position.pk}/").status_code == 405


def test_anonymous_is_401(api_client):
    assert api_client.get("/api/positions/").status_code == 401


def test_serializer_works_for_one_position_without_a_request(django_assert_num_queries):
    user = UserFactory()
    PositionFactory(user=user, quantity=D("1"), average_price=D("10"), market_price=D("30"))
    position = PositionFactory(
        user=user, symbol="ETH-USD", quantity=D("-2"), average_price=D("40"), market_price=D("45")
    )

    with django_assert_num_queries(1):
        data = PositionSerializer(position).data

    assert data["exposure"] == "90"
    assert data["portfolioWeight"] == "0.75"
    assert data["unrealizedPnl"] == "-10"


def test_serializer_many_without_context_computes_totals_in_one_query(
    django_assert_num_queries,
):
    users = [UserFactory() for _ in range(3)]
    for user in users:
        PositionFactory(user=user, quantity=D("1"), average_price=D("10"))
        PositionFactory(user=user, symbol="ETH-USD", quantity=D("3"), average_price=D("10"))
    positions = list(Position.objects.all())

    with django_assert_num_queries(1):
        data = PositionSerializer(positions, many=True).data

    assert sorted(p["portfolioWeight"] for p in data) == ["0.25"] * 3 + ["0.75"] * 3
