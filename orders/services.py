"""Order writes: placing, cancelling, rejecting and filling orders, and the strategies' metrics.

Orders sit above strategies and positions: a fill changes the order, the owner's position and
the strategy's metrics (computed from its orders), so this module orchestrates all three.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from orders.models import Fill, Order, OrderSide, OrderStatus, OrderType
from orders.selectors import strategy_ids_trading, strategy_metrics
from positions.services import position_apply_fill
from strategies.models import Strategy, StrategyStatus
from tradingrt.amounts import round_amount, to_amount
from tradingrt.errors import StateConflict
from tradingrt.symbols import symbol_normalize

PRICED_TYPES = (OrderType.LIMIT, OrderType.STOP_LIMIT)
STOP_TYPES = (OrderType.STOP, OrderType.STOP_LIMIT)
CLOSED_STRATEGY_STATUSES = (StrategyStatus.STOPPED, StrategyStatus.ERROR)
# The reason travels in ORDER_UPDATE (rejectReason): bounded by the column, like every order field.
REJECT_REASON_MAX_LENGTH = Order._meta.get_field("reject_reason").max_length or 200
STRATEGY_NOT_FOUND = "Strategy not found."


def order_create(
    *,
    user: Any,
    symbol: str,
    side: str,
    order_type: str,
    quantity: Decimal,
    price: Decimal | None = None,
    stop_price: Decimal | None = None,
    strategy: Strategy | None = None,
) -> Order:
    """A NEW order of `user`, optionally placed by one of `user`'s own strategies.

    ValidationError (keyed by model field) for bad input; StateConflict when the strategy is
    STOPPED or in ERROR and so may place no more orders.
    """
    fields = _clean_new_order(
        user=user,
        symbol=symbol,
        side=side,
        order_type=order_type,
        quantity=quantity,
        price=price,
        stop_price=stop_price,
        strategy=strategy,
    )
    with transaction.atomic():
        if strategy is not None:
            _lock(strategy)
            if strategy.status in CLOSED_STRATEGY_STATUSES:
                raise StateConflict(
                    f"Strategy {strategy.pk} is {strategy.status} and can place no orders; "
                    "start a new strategy or place the order without one."
                )
        order = Order(user=user, strategy=strategy, **fields)
        order.save()
        if strategy is not None:
            strategy_refresh_metrics(strategy=strategy)
    return order


def _clean_new_order(
    *,
    user: Any,
    symbol: str,
    side: str,
    order_type: str,
    quantity: Decimal,
    price: Decimal | None,
    stop_price: Decimal | None,
    strategy: Strategy | None,
) -> dict[str, Any]:
    """The order's fields, validated and normalised; every problem reported at once."""
    errors: dict[str, list[Any]] = {}

    def attempt(parse: Any) -> Any:
        try:
            return parse()
        except ValidationError as error:
            error.update_error_dict(errors)
            return None

    cleaned: dict[str, Any] = {
        "symbol": attempt(lambda: symbol_normalize(symbol)),
        "side": side,
        "order_type": order_type,
        "quantity": attempt(lambda: to_amount(quantity, field="quantity")),
        "price": attempt(lambda: None if price is None else to_amount(price, field="price")),
        "stop_price": attempt(
            lambda: None if stop_price is None else to_amount(stop_price, field="stop_price")
        ),
    }

    def add(field: str, message: str) -> None:
        errors.setdefault(field, []).append(message)

    if side not in OrderSide.values:
        add("side", f"Choose {' or '.join(OrderSide.values)}, not {side!r}.")
    if order_type not in OrderType.values:
        add("order_type", f"Choose one of {', '.join(OrderType.values)}, not {order_type!r}.")
    if cleaned.get("quantity") is not None and cleaned["quantity"] <= 0:
        add("quantity", "The quantity must be above 0.")
    for field in ("price", "stop_price"):
        if cleaned.get(field) is not None and cleaned[field] <= 0:
            add(field, "A price must be above 0.")
    if order_type in PRICED_TYPES and price is None:
        add("price", f"A {order_type} order needs a limit price.")
    if order_type in (OrderType.MARKET, OrderType.STOP) and price is not None:
        when = " once triggered" if order_type == OrderType.STOP else ""
        add(
            "price",
            f"A {order_type} order executes at the market{when} and takes no limit price; "
            "leave price out, or use a LIMIT or STOP_LIMIT order.",
        )
    if order_type in STOP_TYPES and stop_price is None:
        add("stop_price", f"A {order_type} order needs a stop price.")
    if order_type in (OrderType.MARKET, OrderType.LIMIT) and stop_price is not None:
        add(
            "stop_price",
            f"A {order_type} order takes no stop price; use a STOP or STOP_LIMIT order.",
        )
    if strategy is not None and strategy.owner_id != user.pk:
        add("strategy", STRATEGY_NOT_FOUND)
    if errors:
        raise ValidationError(errors)
    return cleaned


def order_cancel(*, order: Order) -> Order:
    """NEW or PARTIALLY_FILLED -> CANCELED; StateConflict from any other status."""
    with transaction.atomic():
        _lock(order)
        if not order.is_open:
            raise StateConflict(
                f"Order {order.pk} is {order.status} and can no longer be cancelled; only NEW "
                "or PARTIALLY_FILLED orders can."
            )
        order.status = OrderStatus.CANCELED
        order.save(update_fields=["status", "updated_at"])
        _refresh_strategy(order)
    return order


def order_reject(*, order: Order, reason: str) -> Order:
    """NEW -> REJECTED with a reason (the execution gateway's verdict); StateConflict otherwise."""
    reason = reason.strip() if isinstance(reason, str) else ""
    if not reason:
        raise ValidationError({"reject_reason": "Say why the order is rejected."})
    if len(reason) > REJECT_REASON_MAX_LENGTH:
        raise ValidationError(
            {"reject_reason": f"Use at most {REJECT_REASON_MAX_LENGTH} characters."}
        )
    with transaction.atomic():
        _lock(order)
        if order.status != OrderStatus.NEW:
            raise StateConflict(
                f"Order {order.pk} is {order.status}; only NEW orders can be rejected."
            )
        order.status = OrderStatus.REJECTED
        order.reject_reason = reason
        order.save(update_fields=["status", "reject_reason", "updated_at"])
        _refresh_strategy(order)
    return order


def order_fill(*, order: Order, quantity: Decimal, price: Decimal) -> Fill:
    """Record an execution of `quantity` at `price` against an open order.

    In one transaction, with the order row locked: the Fill, the order's filled quantity,
    volume-weighted average fill price and status, the user's position, and the strategy's
    metrics. StateConflict when the order is not open; ValidationError for a quantity or price
    that is not above 0, or a quantity above what remains.
    """
    quantity = to_amount(quantity, field="quantity")
    price = to_amount(price, field="price")
    errors = {}
    if quantity <= 0:
        errors["quantity"] = "The fill quantity must be above 0."
    if price <= 0:
        errors["price"] = "The fill price must be above 0."
    if errors:
        raise ValidationError(errors)

    with transaction.atomic():
        _lock(order)
        if not order.is_open:
            raise StateConflict(
                f"Order {order.pk} is {order.status}; only NEW or PARTIALLY_FILLED orders can "
                "be filled."
            )
        remaining = order.remaining_quantity
        if quantity > remaining:
            raise ValidationError(
                {
                    "quantity": (
                        f"The fill of {quantity.normalize():f} exceeds the order's remaining "
                        f"quantity of {remaining.normalize():f}."
                    )
                }
            )
        fill = Fill.objects.create(order=order, quantity=quantity, price=price)
        filled_before = order.filled_quantity
        order.filled_quantity = filled_before + quantity
        order.average_fill_price = round_amount(
            ((order.average_fill_price or 0) * filled_before + price * quantity)
            / order.filled_quantity
        )
        order.status = (
            OrderStatus.FILLED
            if order.filled_quantity == order.quantity
            else OrderStatus.PARTIALLY_FILLED
        )
        order.save(update_fields=["filled_quantity", "average_fill_price", "status", "updated_at"])
        position_apply_fill(
            user=order.user, symbol=order.symbol, side=order.side, quantity=quantity, price=price
        )
        if order.strategy is not None:
            strategy_record_execution(strategy=order.strategy, fill=fill)
    return fill


def strategy_refresh_metrics(*, strategy: Strategy) -> Strategy:
    """Recompute and save the strategy's metrics from its orders and fills."""
    with transaction.atomic():
        _lock(strategy)
        strategy.metrics = strategy_metrics(strategy=strategy)
        strategy.save(update_fields=["metrics", "updated_at"])
    return strategy


def strategy_record_execution(*, strategy: Strategy, fill: Any) -> Strategy:
    """Refresh the metrics after `fill` of one of the strategy's orders, and save.

    `strategy.pending_execution` holds the fill during the save, for receivers that report
    executions.
    """
    with transaction.atomic():
        _lock(strategy)
        strategy.metrics = strategy_metrics(strategy=strategy)
        strategy.pending_execution = fill
        strategy.save(update_fields=["metrics", "updated_at"])
    return strategy


def strategy_refresh_marked(*, symbol: str, owner_ids: Iterable[int]) -> list[Strategy]:
    """After a mark in `symbol`, refresh the metrics of those owners' strategies that traded it.

    Only strategies whose metrics changed are saved (and returned).
    """
    traded_by_strategy = strategy_ids_trading(symbol=symbol, owner_ids=owner_ids)
    changed = []
    with transaction.atomic():
        for strategy in (
            Strategy.objects.select_for_update().filter(pk__in=traded_by_strategy).order_by("id")
        ):
            metrics = strategy_metrics(strategy=strategy)
            if metrics != strategy.metrics:
                strategy.metrics = metrics
                strategy.save(update_fields=["metrics", "updated_at"])
                changed.append(strategy)
    return changed


def _refresh_strategy(order: Order) -> None:
    if order.strategy is not None:
        strategy_refresh_metrics(strategy=order.strategy)


def _lock(instance: Any) -> None:
    """Reload the row under a lock, so concurrent changes to it queue up behind each other."""
    instance.refresh_from_db(from_queryset=type(instance)._default_manager.select_for_update())
    instance.remember_loaded_values()
