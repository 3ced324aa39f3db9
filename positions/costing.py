"""Average-cost accounting: how one trade changes a signed holding and what profit it realizes."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from tradingrt.amounts import ZERO, round_amount

BUY = "BUY"
SELL = "SELL"


@dataclass(frozen=True)
class Holding:
    """A signed quantity (negative is short) and the average price it was opened at."""

    quantity: Decimal = ZERO
    average_price: Decimal = ZERO


@dataclass(frozen=True)
class TradeOutcome:
    """The holding after a trade, how much of the old holding it closed, and the P&L realized."""

    holding: Holding
    closed_quantity: Decimal
    realized_pnl: Decimal

    @property
    def is_closing(self) -> bool:
        return self.closed_quantity > 0


def signed_quantity(*, side: str, quantity: Decimal) -> Decimal:
    """A trade's quantity with its direction: positive buys, negative sells."""
    if side not in (BUY, SELL):
        raise ValueError(f"side must be {BUY} or {SELL}, not {side!r}")
    return quantity if side == BUY else -quantity


def apply_trade(holding: Holding, *, quantity: Decimal, price: Decimal) -> TradeOutcome:
    """Apply a trade of signed `quantity` at `price` to `holding`, with average cost.

    Adding in the holding's direction moves the average price; reducing realizes
    closed quantity x (price - average) in the holding's direction and keeps the average;
    going flat resets the average to 0; a flip realizes on the closed part and opens the
    remainder at `price`.
    """
    old = holding.quantity
    new = old + quantity
    if quantity == 0:
        return TradeOutcome(holding, ZERO, ZERO)
    if old == 0 or (old > 0) == (quantity > 0):
        average = (abs(old) * holding.average_price + abs(quantity) * price) / abs(new)
        return TradeOutcome(Holding(new, round_amount(average)), ZERO, ZERO)

    closed = min(abs(quantity), abs(old))
    direction = 1 if old > 0 else -1
    realized = round_amount(closed * (price - holding.average_price) * direction)
    if new == 0:
        average = ZERO
    elif (new > 0) != (old > 0):
        average = price
    else:
        average = holding.average_price
    return TradeOutcome(Holding(new, average), closed, realized)
