"""Strategy reads: listing, ownership lookup and the performance metrics of one strategy."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

from django.db.models import Count, Q, QuerySet

from orders.models import OPEN_STATUSES, Fill, Order, OrderStatus
from positions.costing import Holding, apply_trade, signed_quantity
from positions.models import Position
from strategies.models import Strategy
from tradingrt.amounts import ZERO, round_amount, round_ratio
from tradingrt.formats import format_decimal


def strategy_list(*, owner: Any | None, status: str | None = None) -> QuerySet[Strategy]:
    """`owner`'s strategies, or everyone's when `owner` is None; optionally in one status."""
    strategies = Strategy.objects.all()
    if owner is not None:
        strategies = strategies.filter(owner=owner)
    if status:
        strategies = strategies.filter(status=status)
    return strategies


def strategy_get_owned(*, owner: Any, strategy_id: int) -> Strategy | None:
    """The strategy with this id if `owner` owns it, else None (absent and foreign look alike)."""
    return Strategy.objects.filter(pk=strategy_id, owner=owner).first()


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
