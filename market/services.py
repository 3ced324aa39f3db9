"""Market writes: record the latest quote of a symbol, and mark positions and strategies to it."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction
from django.utils import timezone

from market.models import MarketQuote
from market.ticks import Tick
from orders.services import strategy_refresh_marked
from positions.services import position_mark


def quote_record(*, tick: Tick) -> MarketQuote:
    """Store `tick` as its symbol's latest quote (one row per symbol)."""
    quote, _ = MarketQuote.objects.update_or_create(
        symbol=tick.symbol,
        defaults={
            "last": tick.last,
            "bid": tick.bid,
            "ask": tick.ask,
            "volume": tick.volume,
            "timestamp": tick.timestamp or timezone.now(),
        },
    )
    return quote


def market_mark(*, ticks: Iterable[Tick]) -> None:
    """In one transaction, per tick: record the quote, mark the symbol's positions to its last
    price, and refresh the metrics of the strategies of those positions' owners that trade it.
    """
    with transaction.atomic():
        for tick in ticks:
            quote_record(tick=tick)
            marked = position_mark(symbol=tick.symbol, price=tick.last)
            if marked:
                strategy_refresh_marked(
                    symbol=marked[0].symbol, owner_ids={position.user_id for position in marked}
                )
