"""Order reads: listings (the API's filters; the open and recent), fills, strategy performance."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import Count, Q, QuerySet

from orders.models import OPEN_STATUSES, Fill, Order, OrderStatus
from positions.costing import Holding, apply_trade, signed_quantity
from positions.models import Position
from strategies.models import Strategy
from tradingrt.amounts import ZERO, round_amount, round_ratio
from tradingrt.formats import format_decimal


def order_list(
    *,
    user: Any | None,
    status: str | None = None,
    symbol: str | None = None,
    strategy_id: int | None = None,
) -> QuerySet[Order]:
    """`user`'s orders, or everyone's when `user` is None, newest first; optionally filtered."""
    orders = Order.objects.all()
    if user is not None:
        orders = orders.filter(user=user)
    if status:
        orders = orders.filter(status=status)
    if symbol:
        orders = orders.filter(symbol=symbol.strip().upper())
    if strategy_id is not None:
        orders = orders.filter(strategy_id=strategy_id)
    return orders


def order_list_open_or_changed(
    *, changed_since: datetime, user_id: int | None = None, strategy_id: int | None = None
) -> QuerySet[Order]:
    """Orders open now or changed at or after `changed_since`, by id; optionally one user's or
    one strategy's (what a blotter shows: the working orders and those that just finished)."""
    orders = Order.objects.filter(Q(status__in=OPEN_STATUSES) | Q(updated_at__gte=changed_since))
    if user_id is not None:
        orders = orders.filter(user_id=user_id)
    if strategy_id is not None:
        orders = orders.filter(strategy_id=strategy_id)
    return orders.order_by("pk")


def fill_list(*, order: Order) -> QuerySet[Fill]:
    """The order's fills in execution order."""
    return order.fills.all()


def strategy_ids_trading(*, symbol: str, owner_ids: Iterable[int]) -> QuerySet[Any]:
    """The ids (as a subquery) of those owners' strategies with a fill in `symbol`."""
    return Order.objects.filter(
        symbol=symbol, user_id__in=list(owner_ids), filled_quantity__gt=0, strategy__isnull=False
    ).values("strategy_id")


def strategy_metrics(*, strategy: Strategy) -> dict[str, object]:
    """The strategy's performance, recomputed from its orders and fills.

    Per symbol, the strategy's fills are replayed in execution order with average cost: that
    gives the realized P&L and the closing trades (a fill that reduces the holding; it wins when
    it realizes a profit). Unrealized P&L values what is still held at the owner's market price
    for the symbol, else at the last fill price. Money is a decimal string; winRate is a decimal
    string, or None before the first closing trade.
    """
    counts = Order.objects.filter(strategy=strategy).aggregate(
        order_count=Count("id"),
        open_order_count=Count("id", filter=Q(status__in=OPEN_STATUSES)),
        filled_order_count=Count("id", filter=Q(status=OrderStatus.FILLED)),
    )
    fills = (
        Fill.objects.filter(order__strategy=strategy)
        .order_by("executed_at", "id")
        .values_list("order__symbol", "order__side", "quantity", "price")
    )
    holdings: dict[str, Holding] = defaultdict(Holding)
    last_price: dict[str, Decimal] = {}
    realized = gross = ZERO
    fill_count = closing_trades = winning_trades = 0
    for symbol, side, quantity, price in fills:
        outcome = apply_trade(
            holdings[symbol], quantity=signed_quantity(side=side, quantity=quantity), price=price
        )
        holdings[symbol] = outcome.holding
        last_price[symbol] = price
        realized += outcome.realized_pnl
        gross += quantity * price
        fill_count += 1
        if outcome.is_closing:
            closing_trades += 1
            winning_trades += outcome.realized_pnl > 0

    held = {symbol: h for symbol, h in holdings.items() if h.quantity != 0}
    market_prices = dict(
        Position.objects.filter(
            user_id=strategy.owner_id, symbol__in=held, market_price__isnull=False
        ).values_list("symbol", "market_price")
    )
    unrealized = sum(
        (
            (market_prices.get(symbol, last_price[symbol]) - h.average_price) * h.quantity
            for symbol, h in held.items()
        ),
        ZERO,
    )
    realized, unrealized = round_amount(realized), round_amount(unrealized)
    return {
        "orderCount": counts["order_count"],
        "openOrderCount": counts["open_order_count"],
        "filledOrderCount": counts["filled_order_count"],
        "fillCount": fill_count,
        "grossTradedValue": format_decimal(round_amount(gross)),
        "realizedPnl": format_decimal(realized),
        "unrealizedPnl": format_decimal(unrealized),
        "totalPnl": format_decimal(realized + unrealized),
        "closedTradeCount": closing_trades,
        "winningTradeCount": winning_trades,
        "winRate": (
            format_decimal(round_ratio(Decimal(winning_trades) / closing_trades))
            if closing_trades
            else None
        ),
    }
