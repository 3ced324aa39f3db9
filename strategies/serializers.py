"""REST (and WebSocket payload) representation of a strategy, and the request bodies."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from strategies.models import StrategyStatus
from tradingrt.api import TimestampField

JSON_OBJECT_SCHEMA = {"type": "object", "additionalProperties": True}


class StrategyMetricsSerializer(serializers.Serializer):
    """The shape of Strategy.metrics (documentation only: the stored dict is sent as it is)."""

    orderCount = serializers.IntegerField()
    openOrderCount = serializers.IntegerField()
    filledOrderCount = serializers.IntegerField()
    fillCount = serializers.IntegerField()
    grossTradedValue = serializers.CharField(help_text="Decimal string.")
    realizedPnl = serializers.CharField(help_text="Decimal string.")
    unrealizedPnl = serializers.CharField(help_text="Decimal string.")
    totalPnl = serializers.CharField(help_text="Decimal string.")
    closedTradeCount = serializers.IntegerField(
        help_text="Fills that reduced the strategy's holding in a symbol."
    )
    winningTradeCount = serializers.IntegerField(help_text="Closing fills that realized a profit.")
    winRate = serializers.CharField(
        allow_null=True,
        help_text="winningTradeCount / closedTradeCount as a decimal string; null before the "
        "first closing trade.",
    )


@extend_schema_field(StrategyMetricsSerializer)
class MetricsField(serializers.JSONField):
    """The stored metrics dict, passed through."""


@extend_schema_field(JSON_OBJECT_SCHEMA)
class ParametersField(serializers.JSONField):
    """Free-form strategy parameters; strategies.services checks that they are a JSON object."""


class StrategySerializer(serializers.Serializer):
    """A strategy as the contract shows it; works without a request (WebSocket payloads)."""

    id = serializers.IntegerField(read_only=True)
    ownerId = serializers.IntegerField(source="owner_id", read_only=True)
    name = serializers.CharField(read_only=True)
    description = serializers.CharField(read_only=True)
    parameters = ParametersField(read_only=True)
    status = serializers.ChoiceField(choices=StrategyStatus.choices, read_only=True)
    metrics = MetricsField(read_only=True)
    createdAt = TimestampField(source="created_at", read_only=True)
    updatedAt = TimestampField(source="updated_at", read_only=True)


class StrategyWriteSerializer(serializers.Serializer):
    """The body of POST /api/strategies/ (and, every field optional, of PATCH)."""

    name = serializers.CharField(max_length=100)
    description = serializers.CharField(required=False, allow_blank=True)
    parameters = ParametersField(required=False)


class StrategyFilterSerializer(serializers.Serializer):
    """Optional query parameters of GET /api/strategies/."""

    status = serializers.ChoiceField(choices=StrategyStatus.choices, required=False)
