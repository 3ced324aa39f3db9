"""Update services (the seed's OrderUpdateService, PositionUpdateService, StrategyMonitorService).

Each turns one saved domain object into one update: the REST representation plus `event`,
built once while the saving transaction is still open (so it is the state that this change
committed) and published to every topic it belongs to after commit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from orders.models import Order, OrderStatus
from orders.serializers import OrderSerializer
from positions.models import Position
from positions.serializers import PositionSerializer
from realtime.protocol import MessageType
from realtime.publish import publish_on_commit
from strategies.models import Strategy
from strategies.serializers import StrategySerializer
from tradingrt.formats import format_decimal, format_timestamp

MARK_ONLY_FIELDS = frozenset({"market_price", "updated_at", "version"})


class OrderUpdateService:
    """ORDER_UPDATE to `orders`, `user:{id}:orders` and `strategy:{id}:orders` (if any)."""

    @staticmethod
    def topics(order: Order) -> list[str]:
        topics = ["orders", f"user:{order.user_id}:orders"]
        if order.strategy_id is not None:
            topics.append(f"strategy:{order.strategy_id}:orders")
        return topics

    @staticmethod
    def event(order: Order, *, created: bool) -> str:
        if created:
            return "created"
        if order.filled_quantity != order.previous_value("filled_quantity"):
            return "filled" if order.status == OrderStatus.FILLED else "partially_filled"
        if order.status != order.previous_value("status"):
            if order.status == OrderStatus.CANCELED:
                return "canceled"
            if order.status == OrderStatus.REJECTED:
                return "rejected"
        return "updated"

    @classmethod
    def order_saved(cls, order: Order, *, created: bool) -> None:
        payload: dict[str, Any] = dict(OrderSerializer(order).data)
        payload["event"] = cls.event(order, created=created)
        previous_status = order.previous_value("status")
        if not created and previous_status is not None and previous_status != order.status:
            payload["previousStatus"] = previous_status
        if order.status == OrderStatus.REJECTED and order.reject_reason:
            payload["rejectReason"] = order.reject_reason
        publish_on_commit(
            MessageType.ORDER_UPDATE,
            cls.topics(order),
            payload,
            ordering=(ordering_key("order", order), order.version),
        )


class PositionUpdateService:
    """POSITION_UPDATE, with P&L and risk metrics, to `positions` and `user:{id}:positions`."""

    @staticmethod
    def topics(position: Position) -> list[str]:
        return ["positions", f"user:{position.user_id}:positions"]

    @staticmethod
    def event(position: Position, *, created: bool, update_fields: Iterable[str] | None) -> str:
        if update_fields is not None and frozenset(update_fields) <= MARK_ONLY_FIELDS:
            return "marked"
        before = 0 if created else position.previous_value("quantity")
        if not before and position.quantity:
            return "opened"
        if before and not position.quantity:
            return "closed"
        return "updated"

    @classmethod
    def position_saved(
        cls, position: Position, *, created: bool, update_fields: Iterable[str] | None
    ) -> None:
        payload: dict[str, Any] = dict(PositionSerializer(position).data)
        payload["event"] = cls.event(position, created=created, update_fields=update_fields)
        publish_on_commit(
            MessageType.POSITION_UPDATE,
            cls.topics(position),
            payload,
            ordering=(ordering_key("position", position), position.version),
        )


class StrategyMonitorService:
    """STRATEGY_UPDATE to `strategies`, `user:{owner}:strategies` and `strategy:{id}`."""

    @staticmethod
    def topics(strategy: Strategy) -> list[str]:
        return ["strategies", f"user:{strategy.owner_id}:strategies", f"strategy:{strategy.pk}"]

    @classmethod
    def strategy_saved(cls, strategy: Strategy, *, created: bool) -> None:
        payload: dict[str, Any] = dict(StrategySerializer(strategy).data)
        fill = strategy.__dict__.pop("pending_execution", None)
        previous_status = strategy.previous_value("status")
        if created:
            payload["event"] = "created"
        elif fill is not None:
            payload["event"] = "execution"
            payload["execution"] = execution_payload(fill)
        elif previous_status is not None and previous_status != strategy.status:
            payload["event"] = "status_changed"
        else:
            payload["event"] = "updated"
        if not created and previous_status is not None and previous_status != strategy.status:
            payload["previousStatus"] = previous_status
        publish_on_commit(
            MessageType.STRATEGY_UPDATE,
            cls.topics(strategy),
            payload,
            ordering=(ordering_key("strategy", strategy), strategy.version),
        )


def ordering_key(kind: str, instance: Any) -> str:
    """The object an update is about, for the history's version gate (realtime.history).

    The creation time is part of it: a primary key used again (a database restored, rolled-back
    test data) names another object, whose versions start again at 1.
    """
    created = instance.created_at
    stamp = int(created.timestamp() * 1_000_000) if created is not None else 0
    return f"{kind}:{instance.pk}:{stamp}"


def execution_payload(fill: Any) -> dict[str, Any]:
    """What a STRATEGY_UPDATE(execution) says about the fill that caused it."""
    order = fill.order
    return {
        "orderId": order.pk,
        "fillId": fill.pk,
        "symbol": order.symbol,
        "side": order.side,
        "quantity": format_decimal(fill.quantity),
        "price": format_decimal(fill.price),
        "executedAt": format_timestamp(fill.executed_at),
    }
