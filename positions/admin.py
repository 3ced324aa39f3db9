"""Admin of positions: read-only, since only fills and marks change them (positions.services)."""

from __future__ import annotations

from django.contrib import admin

from positions.models import Position
from positions.selectors import portfolio_weight, user_total_exposure
from tradingrt.admin_helpers import ReadOnlyAdmin, decimal_column
from tradingrt.formats import format_decimal


@admin.register(Position)
class PositionAdmin(ReadOnlyAdmin):
    list_display = (
        "user",
        "symbol",
        "quantity_shown",
        "average_price_shown",
        "market_price_shown",
        "market_value",
        "unrealized_pnl",
        "realized_pnl_shown",
        "total_pnl",
        "exposure",
        "updated_at",
    )
    list_display_links = ("user", "symbol")
    list_filter = ("symbol", "updated_at")
    search_fields = ("symbol", "user__username")
    date_hierarchy = "updated_at"
    list_select_related = ("user",)
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "user",
                    "symbol",
                    "quantity_shown",
                    "average_price_shown",
                    "market_price_shown",
                )
            },
        ),
        (
            "P&L and risk",
            {
                "fields": (
                    "market_value",
                    "unrealized_pnl",
                    "realized_pnl_shown",
                    "total_pnl",
                    "exposure",
                    "portfolio_weight",
                )
            },
        ),
        ("Times", {"fields": ("created_at", "updated_at")}),
    )
    # Every field shows read-only anyway (no change permission); these are the computed ones.
    readonly_fields = (
        "quantity_shown",
        "average_price_shown",
        "market_price_shown",
        "market_value",
        "unrealized_pnl",
        "realized_pnl_shown",
        "total_pnl",
        "exposure",
        "portfolio_weight",
    )

    quantity_shown = decimal_column("quantity", "quantity (negative: short)", ordering="quantity")
    average_price_shown = decimal_column("average_price", "average price", ordering="average_price")
    market_price_shown = decimal_column("market_price", "market price", ordering="market_price")
    market_value = decimal_column("market_value", "market value")
    unrealized_pnl = decimal_column("unrealized_pnl", "unrealized P&L")
    realized_pnl_shown = decimal_column("realized_pnl", "realized P&L", ordering="realized_pnl")
    total_pnl = decimal_column("total_pnl", "total P&L")
    exposure = decimal_column("exposure", "exposure")

    @admin.display(description="portfolio weight")
    def portfolio_weight(self, position: Position) -> str | None:
        return format_decimal(
            portfolio_weight(
                exposure=position.exposure,
                total_exposure=user_total_exposure(user_id=position.user_id),
            )
        )
