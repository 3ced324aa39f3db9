"""Position reads: listing, and exposure totals computed in the database."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypedDict

from django.db.models import DecimalField, F, QuerySet, Sum, Window
from django.db.models.functions import Abs, Coalesce

from positions.models import Position
from tradingrt.amounts import ZERO, round_ratio
from tradingrt.models import DECIMAL_PLACES, MAX_DIGITS

_AMOUNT: DecimalField[Decimal, Decimal] = DecimalField(
    max_digits=MAX_DIGITS, decimal_places=DECIMAL_PLACES
)

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

    class OwnerExposure(TypedDict):
        owner_total_exposure: Decimal

    # A position read by position_list_with_owner_exposure (types only: the stubs are dev tools).
    PositionWithOwnerExposure = WithAnnotations[Position, OwnerExposure]

# The same formula as Position.exposure: |quantity| x (market price, else average price).
EXPOSURE = Abs(F("quantity")) * Coalesce(F("market_price"), F("average_price"))


def position_list(*, user: Any | None, symbol: str | None = None) -> QuerySet[Position]:
    """`user`'s positions, or everyone's when `user` is None; optionally only one symbol."""
    positions = Position.objects.all()
    if user is not None:
        positions = positions.filter(user=user)
    if symbol:
        positions = positions.filter(symbol=symbol.strip().upper())
    return positions


def position_list_with_owner_exposure(
    *, user_id: int | None = None
) -> QuerySet[PositionWithOwnerExposure]:
    """Positions by id, everyone's or one user's, each annotated with `owner_total_exposure`
    (its owner's total exposure over all positions) by the same query, so that the weights
    derived from it agree with the rows read."""
    positions = Position.objects.annotate(
        owner_total_exposure=Window(
            Sum(EXPOSURE, output_field=_AMOUNT), partition_by=[F("user_id")]
        )
    )
    if user_id is not None:
        positions = positions.filter(user_id=user_id)  # every position of the partition's user
    return positions.order_by("pk")


def total_exposure_by_user(*, user_ids: Iterable[int] | QuerySet[Any]) -> dict[int, Decimal]:
    """Each user's total exposure over all their positions, in one aggregate query.

    `user_ids` may be a queryset of ids (a subquery). Users without positions are absent.
    """
    rows = (
        Position.objects.filter(user_id__in=user_ids)
        .values("user_id")
        .annotate(total=Sum(EXPOSURE, output_field=_AMOUNT))
        .order_by()
    )
    return {row["user_id"]: row["total"] or ZERO for row in rows}


def user_total_exposure(*, user_id: int) -> Decimal:
    """One user's total exposure over all their positions (0 without positions)."""
    return total_exposure_by_user(user_ids=[user_id]).get(user_id, ZERO)


def portfolio_weight(*, exposure: Decimal, total_exposure: Decimal) -> Decimal:
    """A position's share of its owner's total exposure, to 6 places; 0 when the total is 0."""
    if total_exposure <= 0:
        return ZERO
    return round_ratio(exposure / total_exposure)
