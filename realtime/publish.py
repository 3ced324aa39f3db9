"""The one publish path: encode once, send after commit, through the channel layer.

`publish_on_commit` is what update services call: nothing is sent if the transaction rolls
back. `publish_rollback_unsafe` sends at once, for what is not transactional (market ticks).
Control messages (`disconnect`) reach the hub of every process sharing the channel layer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import transaction

from realtime import stats
from realtime.history import HistoryUnavailable, append_in_order, history_for
from realtime.hub import CONTROL_GROUP, HUB_CONTROL, HUB_MESSAGE
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
    """Publish an update to `topics` once the current transaction commits (now, if none)."""
    encoded = encode_payload(payload)  # encoded now: the state as of this change
    topics = tuple(topics)

    def publish_committed() -> None:
        _publish_encoded(message_type, topics, encoded, ordering)

    transaction.on_commit(publish_committed, robust=True)


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
) -> None:
    """Send a committed change; never raises: the change is committed, whatever the layer does.

    A failure here (the channel layer unreachable) must not fail or change the answer of the
    request that committed, or a client that retries would place its order twice. It is logged
    and counted; the hubs that lost the layer close their subscribers with 4503 so they reload.
    """
    try:
        async_to_sync(_send_to_topics)(message_type, topics, payload_json, ordering)
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
