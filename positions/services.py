"""Position writes: apply a fill with average cost, and mark positions to a price."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from positions.costing import Holding, apply_trade, signed_quantity
from positions.models import Position
from tradingrt.amounts import to_amount
from tradingrt.symbols import symbol_normalize

# What a fill writes; the row is loaded under its lock, so nothing else is written back.
FILL_FIELDS = ("quantity", "average_price", "realized_pnl", "market_price", "updated_at")


def position_apply_fill(
    *, user: Any, symbol: str, side: str, quantity: Decimal, price: Decimal
) -> Position:
    """Apply a fill to `user`'s position in `symbol` (created on the first fill), under a row lock.

    A new position is inserted once, with the fill applied, so a receiver sees it created
    with its real quantity rather than created empty and then updated.
    """
    symbol = symbol_normalize(symbol)
    quantity = to_amount(quantity, field="quantity")
    price = to_amount(price, field="price")
    if quantity <= 0 or price <= 0:
        raise ValidationError("A fill needs a quantity and a price above 0.")
    trade = signed_quantity(side=side, quantity=quantity)
    with transaction.atomic():
        position = Position.objects.select_for_update().filter(
            user=user, symbol=symbol
        ).first() or Position(user=user, symbol=symbol)
        _apply(position, trade=trade, price=price)
        if position.pk is not None:
            position.save(update_fields=FILL_FIELDS)
            return position
        try:
            with transaction.atomic():
                position.save()
        except IntegrityError:
            # A concurrent first fill inserted the row meanwhile; apply ours to that row.
            position = Position.objects.select_for_update().get(user=user, symbol=symbol)
            _apply(position, trade=trade, price=price)
            position.save(update_fields=FILL_FIELDS)
    return position


def _apply(position: Position, *, trade: Decimal, price: Decimal) -> None:
    outcome = apply_trade(
        Holding(position.quantity, position.average_price), quantity=trade, price=price
    )
    position.quantity = outcome.holding.quantity
    position.average_price = outcome.holding.average_price
    position.realized_pnl += outcome.realized_pnl
    if position.market_price is None:
        position.market_price = price


def position_mark(*, symbol: str, price: Decimal) -> list[Position]:
    """Set the market price of every position in `symbol` to `price`; return those that changed.

    Each changed position is saved with update_fields=["market_price", "updated_at"], which is
    how receivers tell a mark from a fill. Strategies are not touched here (positions know
    nothing above them): market.services.market_mark refreshes their metrics as well.
    """
    symbol = symbol_normalize(symbol)
    price = to_amount(price, field="market_price")
    if price <= 0:
        raise ValidationError({"market_price": "A market price must be above 0."})
    with transaction.atomic():
        changed = list(
            Position.objects.select_for_update()
            .filter(symbol=symbol)
            .exclude(market_price=price)
            .order_by("id")
        )
        for position in changed:
            position.market_price = price
            position.save(update_fields=["market_price", "updated_at"])
    return changed
