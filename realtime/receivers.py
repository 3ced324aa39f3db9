"""Signal receivers: thin glue from the models' post_save to the update services.

The domain apps never import realtime; this module listens to them. Every receiver runs
inside the writer's transaction and leaves the sending to after commit.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models.signals import post_delete, post_save

from realtime.protocol import CloseCode
from realtime.services import OrderUpdateService, PositionUpdateService, StrategyMonitorService


def user_saved(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    """A user deactivated while connected is disconnected everywhere with 4403."""
    if created or instance.is_active:
        return
    from realtime import publish

    user_id = instance.pk
    transaction.on_commit(
        lambda: publish.disconnect(
            user_ids=[user_id],
            code=CloseCode.USER_DEACTIVATED,
            reason="user deactivated",
        ),
        robust=True,
    )


def user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    """A user deleted while connected is disconnected everywhere with 4403, like a deactivation."""
    from realtime import publish

    user_id = instance.pk
    transaction.on_commit(
        lambda: publish.disconnect(
            user_ids=[user_id], code=CloseCode.USER_DEACTIVATED, reason="user deleted"
        ),
        robust=True,
    )


def order_saved(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    OrderUpdateService.order_saved(instance, created=created)


def position_saved(
    sender: Any, instance: Any, created: bool, update_fields: Any = None, **kwargs: Any
) -> None:
    PositionUpdateService.position_saved(instance, created=created, update_fields=update_fields)


def strategy_saved(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    StrategyMonitorService.strategy_saved(instance, created=created)


def connect() -> None:
    """Connect every receiver, once (dispatch_uid), from RealtimeConfig.ready()."""
    from orders.models import Order
    from positions.models import Position
    from strategies.models import Strategy

    post_save.connect(
        user_saved, sender=get_user_model(), dispatch_uid="realtime.receivers.user_saved"
    )
    post_delete.connect(
        user_deleted, sender=get_user_model(), dispatch_uid="realtime.receivers.user_deleted"
    )
    post_save.connect(order_saved, sender=Order, dispatch_uid="realtime.receivers.order_saved")
    post_save.connect(
        position_saved, sender=Position, dispatch_uid="realtime.receivers.position_saved"
    )
    post_save.connect(
        strategy_saved, sender=Strategy, dispatch_uid="realtime.receivers.strategy_saved"
    )
