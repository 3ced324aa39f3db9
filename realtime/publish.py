"""The one publish path: encode once, send after commit, through the channel layer.

`publish_on_commit` is what update services call: nothing is sent if the transaction rolls
back. `publish_rollback_unsafe` sends at once, for what is not transactional (market ticks).
Control messages (`disconnect`) reach the hub of every process sharing the channel layer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import transaction
from django.utils import timezone

from realtime import stats
from realtime.conf import realtime_settings
from realtime.history import HistoryUnavailable, append_in_order, history_for
from realtime.hub import CONTROL_GROUP, HUB_CONTROL, HUB_MESSAGE
from realtime.models import PendingPublication
from realtime.protocol import CloseCode, encode_payload, envelope_for_topic
from realtime.topics import group_name
from tradingrt.formats import now_timestamp

logger = logging.getLogger(__name__)


class ChannelLayerNotShared(RuntimeError):
    """Raised where cross-process delivery is required but the layer is in-process."""


def layer_is_shared() -> bool:
    """True when other processes (servers, commands) share this process's channel layer."""
    layer = get_channel_layer()
    return layer is not None and not isinstance(layer, InMemoryChannelLayer)


# (key, version): the object an update is about and its version; its seqs follow versions even
# if two processes' commits race to publish them (realtime.history).
Ordering = tuple[str, int] | None


def publish_on_commit(
    message_type: str,
    topics: Iterable[str],
    payload: dict[str, Any],
    *,
    ordering: Ordering = None,
) -> None:
    """Publish an update to `topics` once the current transaction commits (now, if none).

    Inside a transaction the update is also written to the outbox (PendingPublication), in
    that transaction: a publisher killed between its commit and its publish, or one that finds
    the history store down, leaves it there, and a server's sweeper publishes it
    (`publish_pending`). The row is deleted once the update is published.
    """
    encoded = encode_payload(payload)  # encoded now: the state as of this change
    topics = tuple(topics)
    pending: list[int] = []
    if transaction.get_connection().in_atomic_block:
        key, version = ordering if ordering is not None else ("", None)
        pending.append(
            PendingPublication.objects.create(
                message_type=message_type,
                topics=list(topics),
                payload=encoded,
                key=key,
                version=version,
            ).pk
        )

    def publish_committed() -> None:
        if _publish_encoded(message_type, topics, encoded, ordering) and pending:
            _forget_pending(pending)

    transaction.on_commit(publish_committed, robust=True)


def _forget_pending(ids: list[int]) -> None:
    try:
        PendingPublication.objects.filter(pk__in=ids).delete()
    except Exception:  # the sweeper finds it, and the history's version gate skips it
        logger.warning("Could not delete published outbox rows %s", ids, exc_info=True)


def publish_pending(*, older_than: float | None = None, limit: int = 500) -> int:
    """Publish committed updates whose publisher did not (the outbox's sweeper); how many.

    Rows younger than `older_than` seconds (PUBLISH_GRACE_SECS) are left to their own
    publisher. Each row is locked while it is published (skipped by another process's sweep on
    PostgreSQL) and deleted once published; one that fails stays for the next sweep. An update
    published meanwhile after all is recognised by the history's version gate, not sent twice.
    """
    grace = realtime_settings.PUBLISH_GRACE_SECS if older_than is None else older_than
    cutoff = timezone.now() - timedelta(seconds=grace)
    due = PendingPublication.objects.filter(created_at__lt=cutoff)
    if not due.exists():  # the common case, without taking a write lock
        return 0
    published = 0
    with transaction.atomic():
        for row in due.select_for_update(skip_locked=True).order_by("id")[:limit]:
            ordering = (row.key, row.version) if row.key and row.version is not None else None
            logger.warning(
                "Publishing %s %s v%s to %s, committed %s but not published by its publisher",
                row.message_type,
                row.key,
                row.version,
                row.topics,
                row.created_at,
            )
            if _publish_encoded(row.message_type, tuple(row.topics), row.payload, ordering):
                row.delete()
                published += 1
                stats.count("outbox_published")
            else:
                row.attempts += 1
                row.save(update_fields=["attempts"])
    return published


def publish_rollback_unsafe(
    message_type: str, topics: Iterable[str], payload: dict[str, Any]
) -> None:
    """Publish at once, even inside a transaction that may still roll back."""
    _publish_encoded(message_type, tuple(topics), encode_payload(payload), None)


async def apublish_rollback_unsafe(
    message_type: str, topics: Iterable[str], payload: dict[str, Any]
) -> None:
    """The async form of `publish_rollback_unsafe`, for code on the event loop."""
    await _send_to_topics(message_type, tuple(topics), encode_payload(payload), None)


def _publish_encoded(
    message_type: str, topics: tuple[str, ...], payload_json: str, ordering: Ordering
) -> bool:
    """Send a committed change; whether it was. Never raises: the change is committed, whatever
    the layer does.

    A failure here (the channel layer unreachable) must not fail or change the answer of the
    request that committed, or a client that retries would place its order twice. It is logged
    and counted; the update waits in the outbox for a sweep, and the hubs that lost the layer
    close their subscribers with 4503 so they resume.
    """
    try:
        async_to_sync(_send_to_topics)(message_type, topics, payload_json, ordering)
        return True
    except HistoryUnavailable as exc:
        stats.count("publish_failed")
        logger.error(
            "Publishing a committed %s to %s failed: the history store cannot be reached (%s)",
            message_type,
            topics,
            exc,
        )
    except Exception:
        stats.count("publish_failed")
        logger.exception("Publishing a committed %s to %s failed", message_type, topics)
    return False


async def _send_to_topics(
    message_type: str, topics: tuple[str, ...], payload_json: str, ordering: Ordering
) -> None:
    """Give the update its seq on every topic (realtime.history), then send it to the hubs.

    The text a hub delivers is the one stored in the history, byte for byte, so what a client
    gets live and what it gets replayed are the same message.
    """
    layer = get_channel_layer()
    if layer is None:
        return
    timestamp = now_timestamp()
    envelopes = [
        envelope_for_topic(message_type, topic, payload_json, timestamp) for topic in topics
    ]
    key, version = ordering if ordering is not None else (None, None)
    appended = await append_in_order(
        history_for(layer), topics, envelopes, key=key, version=version
    )
    for topic, envelope, position in zip(topics, envelopes, appended.positions, strict=False):
        await layer.group_send(
            group_name(topic),
            {
                "type": HUB_MESSAGE,
                "topic": topic,
                "seq": position.seq,
                "epoch": position.epoch,
                "text": envelope.text(position.seq, position.epoch),
            },
        )


def disconnect(
    *,
    user_ids: Iterable[int] = (),
    connection_ids: Iterable[str] = (),
    everyone: bool = False,
    code: int = CloseCode.OPERATOR_DISCONNECT,
    reason: str = "disconnected by an operator",
) -> None:
    """Close the matching connections on every process that shares the channel layer."""
    async_to_sync(adisconnect)(
        user_ids=user_ids,
        connection_ids=connection_ids,
        everyone=everyone,
        code=code,
        reason=reason,
    )


async def adisconnect(
    *,
    user_ids: Iterable[int] = (),
    connection_ids: Iterable[str] = (),
    everyone: bool = False,
    code: int = CloseCode.OPERATOR_DISCONNECT,
    reason: str = "disconnected by an operator",
) -> None:
    layer = get_channel_layer()
    if layer is None:
        raise ChannelLayerNotShared("No channel layer is configured (CHANNEL_LAYERS).")
    await layer.group_send(
        CONTROL_GROUP,
        {
            "type": HUB_CONTROL,
            "action": "disconnect",
            "user_ids": list(user_ids),
            "connection_ids": list(connection_ids),
            "all": everyone,
            "code": int(code),
            "reason": reason,
        },
    )


def recheck_permissions(*, user_ids: Iterable[int] = (), topics: Iterable[str] = ()) -> None:
    """Every process re-authorises the subscriptions of `user_ids`, and anyone's on `topics`
    (CONTRACT section 11). Never raises: it runs after the change committed; a failure is logged
    and counted (a process that lost its layer has closed its subscribers anyway)."""
    try:
        async_to_sync(_send_control)(
            {"action": "recheck", "user_ids": list(user_ids), "topics": list(topics)}
        )
    except Exception:
        stats.count("publish_failed")
        logger.exception(
            "Sending a permission re-check failed (users %s, topics %s)", user_ids, topics
        )


async def _send_control(message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    await layer.group_send(CONTROL_GROUP, {"type": HUB_CONTROL, **message})
