"""Strategy reads: listing and ownership lookup (metrics come from orders.selectors)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from strategies.models import Strategy


def strategy_list(*, owner: Any | None, status: str | None = None) -> QuerySet[Strategy]:
    """`owner`'s strategies, or everyone's when `owner` is None; optionally in one status."""
    strategies = Strategy.objects.all()
    if owner is not None:
        strategies = strategies.filter(owner=owner)
    if status:
        strategies = strategies.filter(status=status)
    return strategies


def strategy_get_owned(*, owner: Any, strategy_id: int) -> Strategy | None:
    """The strategy with this id if `owner` owns it, else None (absent and foreign look alike)."""
    return Strategy.objects.filter(pk=strategy_id, owner=owner).first()
