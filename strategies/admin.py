"""Admin of strategies: create and edit through the services; start, pause, stop as actions."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from orders.services import strategy_refresh_metrics
from strategies.models import Strategy
from strategies.services import (
    strategy_create,
    strategy_pause,
    strategy_start,
    strategy_stop,
    strategy_update,
)
from tradingrt.admin_helpers import SavesThroughServices, ServiceModelForm, run_service_action


class StrategyAddForm(ServiceModelForm):
    """Creates the strategy with strategies.services.strategy_create."""

    class Meta:
        model = Strategy
        fields = ("owner", "name", "description", "parameters")

    def save_through_service(self) -> Strategy:
        return strategy_create(**self.cleaned_data)


class StrategyChangeForm(ServiceModelForm):
    """Saves edits with strategies.services.strategy_update."""

    class Meta:
        model = Strategy
        fields = ("name", "description", "parameters")

    def save_through_service(self) -> Strategy:
        return strategy_update(strategy=self.instance, **self.cleaned_data)


@admin.register(Strategy)
class StrategyAdmin(SavesThroughServices):
    form = StrategyChangeForm
    list_display = (
        "name",
        "owner",
        "status",
        "order_count",
        "realized_pnl",
        "total_pnl",
        "win_rate",
        "updated_at",
    )
    list_filter = ("status", "created_at")
    search_fields = ("name", "owner__username", "description")
    date_hierarchy = "created_at"
    list_select_related = ("owner",)
    actions = (
        "start_strategies",
        "pause_strategies",
        "stop_strategies",
        "refresh_strategy_metrics",
    )
    readonly_fields = ("owner", "status", "metrics_table", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("owner", "name", "description", "parameters")}),
        ("Lifecycle (use the actions on the list)", {"fields": ("status",)}),
        ("Performance", {"fields": ("metrics_table",)}),
        ("Times", {"fields": ("created_at", "updated_at")}),
    )

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is None:
            kwargs["form"] = StrategyAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return ((None, {"fields": StrategyAddForm.Meta.fields}),)
        return self.fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return () if obj is None else self.readonly_fields

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a strategy's history stays; stop it instead

    @admin.display(description="orders")
    def order_count(self, strategy: Strategy) -> Any:
        return strategy.metrics.get("orderCount")

    @admin.display(description="realized P&L")
    def realized_pnl(self, strategy: Strategy) -> Any:
        return strategy.metrics.get("realizedPnl")

    @admin.display(description="total P&L")
    def total_pnl(self, strategy: Strategy) -> Any:
        return strategy.metrics.get("totalPnl")

    @admin.display(description="win rate")
    def win_rate(self, strategy: Strategy) -> Any:
        return strategy.metrics.get("winRate") or "-"

    @admin.display(description="metrics")
    def metrics_table(self, strategy: Strategy) -> str:
        return format_html("<pre>{}</pre>", json.dumps(strategy.metrics, indent=2))

    @admin.action(description="Start selected strategies", permissions=["change"])
    def start_strategies(self, request: HttpRequest, queryset: QuerySet[Strategy]) -> None:
        run_service_action(self, request, queryset, _call(strategy_start), done="started")

    @admin.action(description="Pause selected strategies", permissions=["change"])
    def pause_strategies(self, request: HttpRequest, queryset: QuerySet[Strategy]) -> None:
        run_service_action(self, request, queryset, _call(strategy_pause), done="paused")

    @admin.action(description="Stop selected strategies", permissions=["change"])
    def stop_strategies(self, request: HttpRequest, queryset: QuerySet[Strategy]) -> None:
        run_service_action(self, request, queryset, _call(strategy_stop), done="stopped")

    @admin.action(description="Refresh metrics of selected strategies", permissions=["change"])
    def refresh_strategy_metrics(self, request: HttpRequest, queryset: QuerySet[Strategy]) -> None:
        run_service_action(
            self, request, queryset, _call(strategy_refresh_metrics), done="refreshed"
        )


def _call(service: Any) -> Any:
    return lambda strategy: service(strategy=strategy)
