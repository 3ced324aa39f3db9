"""Order reads: listing with the API's filters, and an order's fills."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from orders.models import Fill, Order


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


def fill_list(*, order: Order) -> QuerySet[Fill]:
    """The order's fills in execution order."""
    return order.fills.all()
