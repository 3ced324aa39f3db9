"""The Tick value: one observation of a symbol's price, as MARKET_DATA carries it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.utils import timezone

from tradingrt.formats import format_decimal, format_timestamp


@dataclass(frozen=True, slots=True)
class Tick:
    symbol: str
    last: Decimal
    bid: Decimal | None = None
    ask: Decimal | None = None
    volume: Decimal | None = None
    timestamp: datetime | None = None

    def payload(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "last": format_decimal(self.last),
            "bid": format_decimal(self.bid),
            "ask": format_decimal(self.ask),
            "volume": format_decimal(self.volume),
            "timestamp": format_timestamp(self.timestamp or timezone.now()),
        }
