"""Admin of market quotes: read-only, the feed writes them."""

from __future__ import annotations

from django.contrib import admin

from market.models import MarketQuote
from tradingrt.admin_helpers import ReadOnlyAdmin


@admin.register(MarketQuote)
class MarketQuoteAdmin(ReadOnlyAdmin):
    list_display = ("symbol", "last", "bid", "ask", "volume", "timestamp")
    search_fields = ("symbol",)
