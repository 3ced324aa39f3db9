"""Update services (the seed's OrderUpdateService, PositionUpdateService, StrategyMonitorService).

Each turns one saved or deleted domain object into one update: its state (the REST
representation, plus what the service adds that is state) and `event`, built once while the
writing transaction is still open (so it is the state that this change committed) and published
to every topic it belongs to after commit. `state` is also what a SNAPSHOT lists
(realtime.snapshots). A deletion publishes the object's last state as `deleted`, one version
past its last change; that state is read before the row goes (`remember_last_state`, from
pre_delete), when everything it is computed from is still there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any

from orders.models import Order, OrderStatus
from orders.serializers import OrderSerializer
from positions.models import Position
from positions.serializers import TOTAL_EXPOSURE_BY_USER, PositionSerializer
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

    @staticmethod
    def states(orders: Sequence[Order]) -> list[dict[str, Any]]:
        """Each order's REST representation, and `rejectReason` while it is rejected with one.

        One serializer pass for them all: a SNAPSHOT lists thousands, and building a serializer
        per object costs several times more than the representation itself.
        """
        states = [dict(row) for row in OrderSerializer(orders, many=True).data]
        for order, state in zip(orders, states, strict=True):
            if order.status == OrderStatus.REJECTED and order.reject_reason:
                state["rejectReason"] = order.reject_reason
        return states

    @classmethod
    def state(cls, order: Order) -> dict[str, Any]:
        return cls.states([order])[0]

    @classmethod
    def order_saved(cls, order: Order, *, created: bool) -> None:
        payload = cls.state(order)
        payload["event"] = cls.event(order, created=created)
        previous_status = order.previous_value("status")
        if not created and previous_status is not None and previous_status != order.status:
            payload["previousStatus"] = previous_status
        publish_on_commit(
            MessageType.ORDER_UPDATE,
            cls.topics(order),
            payload,
            ordering=(ordering_key("order", order), order.version),
        )

    @classmethod
    def order_deleted(cls, order: Order) -> None:
        payload = _last_state(order, cls.state)
        publish_on_commit(
            MessageType.ORDER_UPDATE,
            cls.topics(order),
            payload,
            ordering=(ordering_key("order", order), payload["version"]),
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

    @staticmethod
    def states(
        positions: Sequence[Position], *, total_exposure_by_user: dict[int, Decimal] | None = None
    ) -> list[dict[str, Any]]:
        """Each position's REST representation. portfolioWeight needs each owner's total
        exposure: from `total_exposure_by_user` if given, else read in one query."""
        context = (
            {}
            if total_exposure_by_user is None
            else {TOTAL_EXPOSURE_BY_USER: total_exposure_by_user}
        )
        return [dict(row) for row in PositionSerializer(positions, many=True, context=context).data]

    @classmethod
    def state(cls, position: Position) -> dict[str, Any]:
        return cls.states([position])[0]

    @classmethod
    def position_saved(
        cls, position: Position, *, created: bool, update_fields: Iterable[str] | None
    ) -> None:
        payload = cls.state(position)
        payload["event"] = cls.event(position, created=created, update_fields=update_fields)
        publish_on_commit(
            MessageType.POSITION_UPDATE,
            cls.topics(position),
            payload,
            ordering=(ordering_key("position", position), position.version),
        )

    @classmethod
    def position_deleted(cls, position: Position) -> None:
        payload = _last_state(position, cls.state)
        publish_on_commit(
            MessageType.POSITION_UPDATE,
            cls.topics(position),
            payload,
            ordering=(ordering_key("position", position), payload["version"]),
        )


class StrategyMonitorService:
    """STRATEGY_UPDATE to `strategies`, `user:{owner}:strategies` and `strategy:{id}`."""

    @staticmethod
    def topics(strategy: Strategy) -> list[str]:
        return ["strategies", f"user:{strategy.owner_id}:strategies", f"strategy:{strategy.pk}"]

    @staticmethod
    def states(strategies: Sequence[Strategy]) -> list[dict[str, Any]]:
        """Each strategy's REST representation."""
        return [dict(row) for row in StrategySerializer(strategies, many=True).data]

    @classmethod
    def state(cls, strategy: Strategy) -> dict[str, Any]:
        return cls.states([strategy])[0]

    @classmethod
    def strategy_saved(cls, strategy: Strategy, *, created: bool) -> None:
        payload = cls.state(strategy)
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

    @classmethod
    def strategy_deleted(cls, strategy: Strategy) -> None:
        payload = _last_state(strategy, cls.state)
        publish_on_commit(
            MessageType.STRATEGY_UPDATE,
            cls.topics(strategy),
            payload,
            ordering=(ordering_key("strategy", strategy), payload["version"]),
        )


# Where pre_delete leaves an object's state for its post_delete (an attribute of the instance
# the deletion holds: both signals are sent with the same one).
LAST_STATE = "_realtime_last_state"


def remember_last_state(instance: Any, state: Callable[[Any], dict[str, Any]]) -> None:
    """Read the state of an object about to be deleted, while its row and its owner's other
    rows (a position's weight) still exist; its post_delete publishes it."""
    instance.__dict__[LAST_STATE] = state(instance)


def _last_state(instance: Any, state: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """The `deleted` payload: the remembered last state, one version past the last change."""
    payload = instance.__dict__.pop(LAST_STATE, None)
    if payload is None:  # pre_delete always comes first; but a deletion must not fail without it
        payload = state(instance)
    payload["event"] = "deleted"
    payload["version"] = instance.version + 1
    return payload


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
