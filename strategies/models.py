"""The Strategy model: an owner's named set of parameters with a lifecycle and metrics."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from tradingrt.models import TracksLoadedValues


class StrategyStatus(models.TextChoices):
    DRAFT = "DRAFT"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    STOPPED = "STOPPED"
    ERROR = "ERROR"


def empty_metrics() -> dict[str, object]:
    """The metrics of a strategy with no orders (the keys strategies.selectors computes)."""
    return {
        "orderCount": 0,
        "openOrderCount": 0,
        "filledOrderCount": 0,
        "fillCount": 0,
        "grossTradedValue": "0",
        "realizedPnl": "0",
        "unrealizedPnl": "0",
        "totalPnl": "0",
        "closedTradeCount": 0,
        "winningTradeCount": 0,
        "winRate": None,
    }


class Strategy(TracksLoadedValues):
    tracked_fields = ("status", "owner_id")

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="strategies"
    )
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True, default="")
    parameters = models.JSONField(default=dict, blank=True)
    status = models.CharField(
        max_length=10, choices=StrategyStatus.choices, default=StrategyStatus.DRAFT
    )
    # Denormalised performance, recomputed by strategies.services on every fill and mark, so a
    # STRATEGY_UPDATE and the REST API read it without aggregating the strategy's history.
    metrics = models.JSONField(default=empty_metrics, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # Not a field: the fill that caused the save in progress, set by
    # strategies.services.strategy_record_execution before save() so a post_save receiver can
    # report the execution (the receiver clears it).
    pending_execution: Any = None

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "strategies"
        indexes = [models.Index(fields=["owner", "status"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"
