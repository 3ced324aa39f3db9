"""Market reads: the latest quote of a symbol, and of every symbol."""

from __future__ import annotations

from django.db.models import QuerySet

from market.models import MarketQuote


def quote_get(*, symbol: str) -> MarketQuote | None:
    """The latest quote of `symbol` (already normalised), or None before its first tick."""
    return MarketQuote.objects.filter(symbol=symbol).first()


def quote_list() -> QuerySet[MarketQuote]:
    """The latest quote of every symbol, by symbol."""
    return MarketQuote.objects.all()
