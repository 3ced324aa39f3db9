"""The MarketQuote model: the latest tick of each symbol."""

from __future__ import annotations

from django.db import models

from market.ticks import Tick
from tradingrt.models import decimal_field


class MarketQuote(models.Model):
    """The latest tick of a symbol, kept so positions can be marked and newcomers shown a price."""

    symbol = models.CharField(primary_key=True, max_length=32)
    last = decimal_field()
    bid = decimal_field(null=True, blank=True)
    ask = decimal_field(null=True, blank=True)
    volume = decimal_field(null=True, blank=True)
    timestamp = models.DateTimeField()

    class Meta:
        ordering = ["symbol"]

    def __str__(self) -> str:
        return f"{self.symbol} {self.last}"

    def tick(self) -> Tick:
        """The quote as the tick it was recorded from (what MARKET_DATA carries)."""
        return Tick(
            symbol=self.symbol,
            last=self.last,
            bid=self.bid,
            ask=self.ask,
            volume=self.volume,
            timestamp=self.timestamp,
        )
