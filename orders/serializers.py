"""REST (and WebSocket payload) representations of orders and fills, and the request bodies."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from orders.models import OrderSide, OrderStatus, OrderType
from orders.services import REJECT_REASON_MAX_LENGTH, STRATEGY_NOT_FOUND
from strategies.models import Strategy
from strategies.selectors import strategy_list
from tradingrt.api import VERSION_HELP, DecimalStringField, TimestampField


class OrderSerializer(serializers.Serializer):
    """An order as the contract shows it; works without a request (WebSocket payloads)."""

    id = serializers.IntegerField(read_only=True)
    userId = serializers.IntegerField(source="user_id", read_only=True)
    strategyId = serializers.IntegerField(source="strategy_id", read_only=True, allow_null=True)
    symbol = serializers.CharField(read_only=True)
    side = serializers.ChoiceField(choices=OrderSide.choices, read_only=True)
    orderType = serializers.ChoiceField(
        source="order_type", choices=OrderType.choices, read_only=True
    )
    quantity = DecimalStringField(read_only=True)
    price = DecimalStringField(read_only=True, allow_null=True)
    stopPrice = DecimalStringField(source="stop_price", read_only=True, allow_null=True)
    status = serializers.ChoiceField(choices=OrderStatus.choices, read_only=True)
    filledQuantity = DecimalStringField(source="filled_quantity", read_only=True)
    averageFillPrice = DecimalStringField(
        source="average_fill_price", read_only=True, allow_null=True
    )
    createdAt = TimestampField(source="created_at", read_only=True)
    updatedAt = TimestampField(source="updated_at", read_only=True)
    version = serializers.IntegerField(read_only=True, help_text=VERSION_HELP)


@extend_schema_field(OpenApiTypes.INT)
class OwnStrategyField(serializers.PrimaryKeyRelatedField):
    """A strategy id among the requesting user's strategies; any other id is simply not found."""

    default_error_messages = {
        "required": "This field is required.",
        "does_not_exist": STRATEGY_NOT_FOUND,
        "incorrect_type": "Give the strategy's id as a number.",
    }

    def get_queryset(self) -> Any:
        request = self.context.get("request")
        if request is None:
            return Strategy.objects.none()
        return strategy_list(owner=request.user)


class OrderCreateSerializer(serializers.Serializer):
    """The body of POST /api/orders/; the rules live in orders.services.order_create."""

    symbol = serializers.CharField(max_length=64)
    side = serializers.ChoiceField(choices=OrderSide.choices)
    orderType = serializers.ChoiceField(source="order_type", choices=OrderType.choices)
    quantity = DecimalStringField()
    price = DecimalStringField(required=False, allow_null=True)
    stopPrice = DecimalStringField(source="stop_price", required=False, allow_null=True)
    strategyId = OwnStrategyField(source="strategy", required=False, allow_null=True)


class OrderFilterSerializer(serializers.Serializer):
    """Optional query parameters of GET /api/orders/."""

    status = serializers.ChoiceField(choices=OrderStatus.choices, required=False)
    symbol = serializers.CharField(required=False, max_length=64)
    strategyId = serializers.IntegerField(
        source="strategy_id", required=False, min_value=1, max_value=2**63 - 1
    )  # a primary key: larger values cannot name a row (and overflow the database)


class OrderRejectSerializer(serializers.Serializer):
    """The body of POST /api/orders/{id}/reject/."""

    reason = serializers.CharField(
        source="reject_reason",
        max_length=REJECT_REASON_MAX_LENGTH,
        help_text=f"Why the gateway rejects the order; at most {REJECT_REASON_MAX_LENGTH} "
        "characters (ORDER_UPDATE carries it as rejectReason).",
    )


class FillSerializer(serializers.Serializer):
    """One execution against an order."""

    id = serializers.IntegerField(read_only=True)
    orderId = serializers.IntegerField(source="order_id", read_only=True)
    quantity = DecimalStringField(read_only=True)
    price = DecimalStringField(read_only=True)
    executedAt = TimestampField(source="executed_at", read_only=True)


class FillCreateSerializer(serializers.Serializer):
    """The body of POST /api/orders/{id}/fills/."""

    quantity = DecimalStringField()
    price = DecimalStringField()


class RecordedFillSerializer(FillSerializer):
    """The answer to a recorded fill: the fill and the order as it now stands."""

    order = OrderSerializer(read_only=True)
