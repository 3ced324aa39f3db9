"""Subscribe entries and what follows a subscription: options parsed, snapshots paged.

CONTRACT section 9: an entry of a subscribe request's `topics` is a topic name or an object
`{"topic", "since": {"epoch", "seq"}, "snapshot": bool}`. A malformed option rejects that entry
(reason `invalid_option`, with a message saying what is wrong); the other entries go on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from realtime.history import Position
from realtime.protocol import MessageType, encode_json
from realtime.snapshots import paged
from realtime.topics import Topic, parse_topic
from tradingrt.formats import now_timestamp

MAX_EPOCH_LENGTH = 64
# Options of CONTRACT section 10, not served yet: refused rather than silently ignored, since a
# client that asked for a filter must not receive what it filtered out.
NOT_YET_SUPPORTED = ("filter", "throttleMs", "presence")


class SubscribeOptionError(Exception):
    """A subscribe entry's option is malformed; the message says which and why."""


@dataclass(frozen=True, slots=True)
class SubscribeEntry:
    topic: Topic
    since: Position | None = None
    snapshot: bool = False


def parse_subscribe_entry(raw: Any) -> SubscribeEntry:
    """The entry `raw` names; TopicError for a bad topic, SubscribeOptionError for a bad option."""
    if not isinstance(raw, dict):
        return SubscribeEntry(parse_topic(raw))
    topic = parse_topic(raw.get("topic"))
    for name in NOT_YET_SUPPORTED:
        if name in raw:
            raise SubscribeOptionError(f"'{name}' is not supported by this server yet")
    since = raw.get("since")
    position = None
    if since is not None:
        if not isinstance(since, dict):
            raise SubscribeOptionError(
                '"since" must be an object {"epoch": string, "seq": integer}'
            )
        epoch, seq = since.get("epoch"), since.get("seq")
        if not isinstance(epoch, str) or not 0 < len(epoch) <= MAX_EPOCH_LENGTH:
            raise SubscribeOptionError(
                f'"since.epoch" must be a non-empty string of at most {MAX_EPOCH_LENGTH} characters'
            )
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 2**63:
            raise SubscribeOptionError('"since.seq" must be an integer, 0 or more')
        position = Position(epoch, seq)
    snapshot = raw.get("snapshot", False)
    if not isinstance(snapshot, bool):
        raise SubscribeOptionError('"snapshot" must be true or false')
    return SubscribeEntry(topic, position, snapshot)


def snapshot_messages(
    topic: str, position: Position, items: list[dict[str, Any]], page_size: int
) -> list[str]:
    """The SNAPSHOT messages of one topic's state (realtime.snapshots.paged: at most
    `page_size` items and 256 KiB of them each), all at the fence `position`, the final one
    `last`."""
    pages = paged(items, page_size)
    return [
        _snapshot(topic, position, page, last=number == len(pages))
        for number, page in enumerate(pages, start=1)
    ]


def _snapshot(
    topic: str, position: Position, items: Sequence[dict[str, Any]], *, last: bool
) -> str:
    return encode_json(
        {
            "type": MessageType.SNAPSHOT.value,
            "topic": topic,
            "seq": position.seq,
            "epoch": position.epoch,
            "timestamp": now_timestamp(),
            "payload": {"items": list(items), "last": last},
        }
    )
