"""Admin of positions: read-only, since only fills and marks change them (positions.services)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from positions.models import Position
from positions.selectors import portfolio_weight, user_total_exposure
from tradingrt.amounts import round_amount


@admin.register(Position)
class PositionAdmin(admin.ModelAdmin):
    list_display = (
        "user",
        "symbol",
        "quantity",
        "average_price",
        "market_price",
        "market_value",
        "unrealized_pnl",
        "realized_pnl",
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
        (None, {"fields": ("user", "symbol", "quantity", "average_price", "market_price")}),
        (
            "P&L and risk",
            {
                "fields": (
                    "market_value",
                    "unrealized_pnl",
                    "realized_pnl",
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
        "market_value",
        "unrealized_pnl",
        "total_pnl",
        "exposure",
        "portfolio_weight",
    )

    @admin.display(description="market value")
    def market_value(self, position: Position) -> Decimal:
        return round_amount(position.market_value)

    @admin.display(description="unrealized P&L")
    def unrealized_pnl(self, position: Position) -> Decimal:
        return round_amount(position.unrealized_pnl)

    @admin.display(description="total P&L")
    def total_pnl(self, position: Position) -> Decimal:
        return round_amount(position.total_pnl)

    @admin.display(description="exposure")
    def exposure(self, position: Position) -> Decimal:
        return round_amount(position.exposure)

    @admin.display(description="portfolio weight")
    def portfolio_weight(self, position: Position) -> Decimal:
        return portfolio_weight(
            exposure=position.exposure,
            total_exposure=user_total_exposure(user_id=position.user_id),
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
