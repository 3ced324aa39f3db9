"""Signal receivers: thin glue from the models' post_save and deletions to the update services.

The domain apps never import realtime; this module listens to them. Every receiver runs
inside the writer's transaction and leaves the sending to after commit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete, pre_save

from realtime.protocol import CloseCode
from realtime.services import (
    OrderUpdateService,
    PositionUpdateService,
    StrategyMonitorService,
    remember_last_state,
)


def user_saved(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    """A user deactivated while connected is disconnected everywhere with 4403; one whose
    access flags changed is re-checked everywhere (CONTRACT section 11)."""
    if instance.__dict__.pop("_realtime_access_changed", False):
        _recheck_on_commit(user_ids=[instance.pk])
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


# --- permission changes on open connections (CONTRACT section 11) ---------------------------

ACCESS_FLAGS = ("is_staff", "is_superuser", "is_active")


def _recheck_on_commit(*, user_ids: Iterable[int] = (), topics: Iterable[str] = ()) -> None:
    """Once the change commits, every process re-authorises the affected subscriptions."""
    from realtime import publish

    user_ids, topics = sorted(set(user_ids)), sorted(set(topics))
    if not user_ids and not topics:
        return

    def recheck_committed() -> None:
        publish.recheck_permissions(user_ids=user_ids, topics=topics)

    transaction.on_commit(recheck_committed, robust=True)


def user_access_changing(
    sender: Any, instance: Any, raw: bool = False, update_fields: Any = None, **kwargs: Any
) -> None:
    """A user's staff or superuser flag is about to change: noted for `user_saved`.

    Only noted: outside a transaction `on_commit` runs at once, and a re-check sent before the
    row is written would find the old flags.
    """
    if raw or instance.pk is None:
        return
    flags = [name for name in ACCESS_FLAGS if hasattr(instance, name)]
    if update_fields is not None and not set(flags) & set(update_fields):
        return  # a login stamping last_login, say: nothing that grants access
    before = sender._default_manager.filter(pk=instance.pk).values(*flags).first()
    if before is not None and any(before[name] != getattr(instance, name) for name in flags):
        instance._realtime_access_changed = True


def user_memberships_changed(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **kwargs: Any
) -> None:
    """A user's groups or own permissions changed (either side of the relation)."""
    if not reverse:  # user.groups.add(...), user.user_permissions.remove(...)
        if action in ("post_add", "post_remove", "post_clear"):
            _recheck_on_commit(user_ids=[instance.pk])
        return
    # group.user_set.add(user), permission.user_set.clear(): pk_set holds users
    if action == "pre_clear":
        field = f"{instance._meta.model_name}_id"
        instance._realtime_cleared_users = list(
            sender.objects.filter(**{field: instance.pk}).values_list("user_id", flat=True)
        )
    elif action == "post_clear":
        _recheck_on_commit(user_ids=instance.__dict__.pop("_realtime_cleared_users", ()))
    elif action in ("post_add", "post_remove"):
        _recheck_on_commit(user_ids=pk_set or ())


def group_permissions_changed(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **kwargs: Any
) -> None:
    """A group's permissions changed: every member is re-checked."""
    if action not in ("pre_clear", "post_add", "post_remove", "post_clear"):
        return
    if not reverse:  # group.permissions.add(permission)
        if action != "pre_clear":
            _recheck_on_commit(user_ids=_members_of([instance.pk]))
        return
    # permission.group_set.add(group): pk_set holds groups
    if action == "pre_clear":
        instance._realtime_cleared_groups = list(
            sender.objects.filter(permission_id=instance.pk).values_list("group_id", flat=True)
        )
    elif action == "post_clear":
        groups = instance.__dict__.pop("_realtime_cleared_groups", ())
        _recheck_on_commit(user_ids=_members_of(groups))
    else:
        _recheck_on_commit(user_ids=_members_of(pk_set or ()))


def group_deleting(sender: Any, instance: Any, **kwargs: Any) -> None:
    """A group is about to be deleted: note its members, who lose what it granted."""
    instance._realtime_members = _members_of([instance.pk])


def group_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    _recheck_on_commit(user_ids=instance.__dict__.pop("_realtime_members", ()))


def _members_of(group_ids: Iterable[int]) -> list[int]:
    return list(
        get_user_model()
        ._default_manager.filter(groups__in=list(group_ids))
        .values_list("pk", flat=True)
        .distinct()
    )


# --- updates ------------------------------------------------------------------------------


def order_saved(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    OrderUpdateService.order_saved(instance, created=created)


def position_saved(
    sender: Any, instance: Any, created: bool, update_fields: Any = None, **kwargs: Any
) -> None:
    PositionUpdateService.position_saved(instance, created=created, update_fields=update_fields)


def strategy_saved(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    """A strategy's update; when it changed owner, its watchers are re-checked first.

    Both are sent after commit, the re-check registered first: every process revokes the old
    owner's subscriptions before the update that shows the new owner can reach them.
    """
    before = None if created else instance.previous_value("owner_id")
    if before is not None and before != instance.owner_id:
        _recheck_on_commit(topics=[f"strategy:{instance.pk}", f"strategy:{instance.pk}:orders"])
    StrategyMonitorService.strategy_saved(instance, created=created)


# A deletion publishes the object's last state (CONTRACT section 9). Deleting a user cascades
# to their orders, positions and strategies: each instance is deleted once and sends one
# pre_delete and one post_delete, so each publishes `deleted` once; the user's row goes last.


def order_deleting(sender: Any, instance: Any, **kwargs: Any) -> None:
    remember_last_state(instance, OrderUpdateService.state)


def order_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    OrderUpdateService.order_deleted(instance)


def position_deleting(sender: Any, instance: Any, **kwargs: Any) -> None:
    remember_last_state(instance, PositionUpdateService.state)


def position_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    PositionUpdateService.position_deleted(instance)


def strategy_deleting(sender: Any, instance: Any, **kwargs: Any) -> None:
    remember_last_state(instance, StrategyMonitorService.state)


def strategy_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    StrategyMonitorService.strategy_deleted(instance)


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
    User = get_user_model()
    pre_save.connect(
        user_access_changing, sender=User, dispatch_uid="realtime.receivers.user_access_changing"
    )
    for through, name in (
        (User.groups.through, "groups"),
        (User.user_permissions.through, "perms"),
    ):
        m2m_changed.connect(
            user_memberships_changed,
            sender=through,
            dispatch_uid=f"realtime.receivers.user_memberships_changed.{name}",
        )
    m2m_changed.connect(
        group_permissions_changed,
        sender=Group.permissions.through,
        dispatch_uid="realtime.receivers.group_permissions_changed",
    )
    pre_delete.connect(
        group_deleting, sender=Group, dispatch_uid="realtime.receivers.group_deleting"
    )
    post_delete.connect(
        group_deleted, sender=Group, dispatch_uid="realtime.receivers.group_deleted"
    )
    post_save.connect(order_saved, sender=Order, dispatch_uid="realtime.receivers.order_saved")
    post_save.connect(
        position_saved, sender=Position, dispatch_uid="realtime.receivers.position_saved"
    )
    post_save.connect(
        strategy_saved, sender=Strategy, dispatch_uid="realtime.receivers.strategy_saved"
    )
    for model, deleting, deleted in (
        (Order, order_deleting, order_deleted),
        (Position, position_deleting, position_deleted),
        (Strategy, strategy_deleting, strategy_deleted),
    ):
        pre_delete.connect(
            deleting, sender=model, dispatch_uid=f"realtime.receivers.{deleting.__name__}"
        )
        post_delete.connect(
            deleted, sender=model, dispatch_uid=f"realtime.receivers.{deleted.__name__}"
        )
