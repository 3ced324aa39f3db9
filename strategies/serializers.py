"""REST (and WebSocket payload) representation of a strategy, and the request bodies."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from strategies.models import StrategyStatus
from strategies.services import (
    DESCRIPTION_MAX_LENGTH,
    NAME_MAX_LENGTH,
    PARAMETERS_MAX_BYTES,
    PARAMETERS_MAX_DEPTH,
)
from tradingrt.api import VERSION_HELP, TimestampField

PARAMETERS_HELP = (
    f"A JSON object of at most {PARAMETERS_MAX_BYTES} bytes as compact UTF-8 JSON, nested at "
    f"most {PARAMETERS_MAX_DEPTH} levels deep (every STRATEGY_UPDATE carries it, and a WebSocket "
    "message must stay well below 1 MiB); larger answers 400."
)
DESCRIPTION_HELP = f"At most {DESCRIPTION_MAX_LENGTH} characters."
JSON_OBJECT_SCHEMA = {
    "type": "object",
    "additionalProperties": True,
    "description": PARAMETERS_HELP,
}


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
    name = serializers.CharField(read_only=True, max_length=NAME_MAX_LENGTH)
    description = serializers.CharField(
        read_only=True, max_length=DESCRIPTION_MAX_LENGTH, help_text=DESCRIPTION_HELP
    )
    parameters = ParametersField(read_only=True, help_text=PARAMETERS_HELP)
    status = serializers.ChoiceField(choices=StrategyStatus.choices, read_only=True)
    metrics = MetricsField(read_only=True)
    createdAt = TimestampField(source="created_at", read_only=True)
    updatedAt = TimestampField(source="updated_at", read_only=True)
    version = serializers.IntegerField(read_only=True, help_text=VERSION_HELP)


class StrategyWriteSerializer(serializers.Serializer):
    """The body of POST /api/strategies/ (and, every field optional, of PATCH)."""

    name = serializers.CharField(max_length=NAME_MAX_LENGTH)
    description = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=DESCRIPTION_MAX_LENGTH,
        help_text=DESCRIPTION_HELP,
    )
    parameters = ParametersField(required=False, help_text=PARAMETERS_HELP)


class StrategyFilterSerializer(serializers.Serializer):
    """Optional query parameters of GET /api/strategies/."""

    status = serializers.ChoiceField(choices=StrategyStatus.choices, required=False)
