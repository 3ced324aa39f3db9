"""The Position model: one user's signed holding in one symbol, with its P&L."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models

from tradingrt.formats import format_decimal
from tradingrt.models import TracksLoadedValues, decimal_field

ZERO = Decimal("0")


class Position(TracksLoadedValues):
    tracked_fields = ("quantity", "market_price")

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="positions"
    )
    symbol = models.CharField(max_length=32)
    quantity = decimal_field(default=ZERO)  # signed: negative is short
    average_price = decimal_field(default=ZERO)
    market_price = decimal_field(null=True, blank=True)
    realized_pnl = decimal_field(default=ZERO)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["symbol", "id"]
        constraints = [
            models.UniqueConstraint(fields=["user", "symbol"], name="position_user_symbol_unique")
        ]
        indexes = [models.Index(fields=["symbol"])]

    def __str__(self) -> str:
        return (
            f"{self.user_id}:{self.symbol} {format_decimal(self.quantity)} "
            f"@ {format_decimal(self.average_price)}"
        )

    @property
    def mark(self) -> Decimal:
        """The price the position is valued at: the market price, else its own average."""
        return self.market_price if self.market_price is not None else self.average_price

    @property
    def market_value(self) -> Decimal:
        return self.quantity * self.mark

    @property
    def unrealized_pnl(self) -> Decimal:
        return (self.mark - self.average_price) * self.quantity

    @property
    def total_pnl(self) -> Decimal:
        return self.realized_pnl + self.unrealized_pnl

    @property
    def exposure(self) -> Decimal:
        return abs(self.quantity) * self.mark
