"""REST (and WebSocket payload) representation of a position, with its risk metrics."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from positions.models import Position
from positions.selectors import portfolio_weight, total_exposure_by_user, user_total_exposure
from tradingrt.api import VERSION_HELP, DecimalStringField, TimestampField
from tradingrt.formats import format_decimal

# Serializer context key: {user id: total exposure}, so a list costs one aggregate query.
TOTAL_EXPOSURE_BY_USER = "total_exposure_by_user"


class PositionListSerializer(serializers.ListSerializer):
    """Computes every listed owner's total exposure in one query unless the context has it."""

    def to_representation(self, data: Any) -> list[Any]:
        positions = list(data.all() if hasattr(data, "all") else data)
        if TOTAL_EXPOSURE_BY_USER not in self.context:
            totals = total_exposure_by_user(user_ids={p.user_id for p in positions})
            self._context = {**self.context, TOTAL_EXPOSURE_BY_USER: totals}
        return super().to_representation(positions)


class PositionSerializer(serializers.Serializer):
    """A position as the contract shows it; works without a request (WebSocket payloads).

    exposure = |quantity| x market price (the average price until there is one);
    portfolioWeight = exposure / the owner's total exposure, 0 when that is 0.
    """

    id = serializers.IntegerField(read_only=True)
    userId = serializers.IntegerField(source="user_id", read_only=True)
    symbol = serializers.CharField(read_only=True)
    quantity = DecimalStringField(read_only=True, help_text="Signed: negative is short.")
    averagePrice = DecimalStringField(source="average_price", read_only=True)
    marketPrice = DecimalStringField(source="market_price", read_only=True, allow_null=True)
    marketValue = DecimalStringField(source="market_value", read_only=True)
    unrealizedPnl = DecimalStringField(source="unrealized_pnl", read_only=True)
    realizedPnl = DecimalStringField(source="realized_pnl", read_only=True)
    totalPnl = DecimalStringField(source="total_pnl", read_only=True)
    updatedAt = TimestampField(source="updated_at", read_only=True)
    version = serializers.IntegerField(read_only=True, help_text=VERSION_HELP)
    exposure = DecimalStringField(read_only=True)
    portfolioWeight = serializers.SerializerMethodField()

    class Meta:
        list_serializer_class = PositionListSerializer

    @extend_schema_field(OpenApiTypes.STR)
    def get_portfolioWeight(self, position: Position) -> str | None:
        return format_decimal(
            portfolio_weight(
                exposure=position.exposure, total_exposure=self._total_exposure(position)
            )
        )

    def _total_exposure(self, position: Position) -> Decimal:
        totals = self.context.get(TOTAL_EXPOSURE_BY_USER) or {}
        if position.user_id in totals:
            return totals[position.user_id]
        return user_total_exposure(user_id=position.user_id)


class PositionFilterSerializer(serializers.Serializer):
    """Optional query parameters of GET /api/positions/."""

    symbol = serializers.CharField(required=False, max_length=64)
