"""Subscribe entries and what follows a subscription: options parsed, snapshots paged.

CONTRACT sections 9 and 10: an entry of a subscribe request's `topics` is a topic name or an
object `{"topic", "since": {"epoch", "seq"}, "snapshot": bool, "filter": {...},
"throttleMs": int, "presence": bool}`. A malformed option rejects that entry (reason
`invalid_option`, with a message saying what is wrong); the other entries go on.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from realtime.history import Position
from realtime.protocol import MessageType, encode_json
from realtime.snapshots import paged
from realtime.topics import Topic, TopicKind, parse_topic
from tradingrt.formats import now_timestamp

MAX_EPOCH_LENGTH = 64
MAX_FILTER_KEYS = 10
MAX_FILTER_VALUES = 100
THROTTLE_MS_MIN, THROTTLE_MS_MAX = 50, 60_000


class SubscribeOptionError(Exception):
    """A subscribe entry's option is malformed; the message says which and why."""


def _scalar_key(value: Any) -> tuple[str, Any]:
    """A filter value as compared: JSON type and value (so true never matches 1)."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    return ("z", None)


@dataclass(frozen=True, slots=True)
class Filter:
    """CONTRACT section 10: payload field -> accepted values; every field must match."""

    fields: tuple[tuple[str, frozenset[tuple[str, Any]]], ...]

    def accepts(self, payload: dict[str, Any]) -> bool:
        for name, values in self.fields:
            value = payload.get(name)
            if isinstance(value, dict | list) or _scalar_key(value) not in values:
                return False
        return True


@dataclass(frozen=True, slots=True)
class Shaping:
    """What a subscription narrows or conflates (None: every message, as it comes)."""

    filter: Filter | None = None
    throttle_ms: int | None = None


@dataclass(frozen=True, slots=True)
class SubscribeEntry:
    topic: Topic
    since: Position | None = None
    snapshot: bool = False
    shaping: Shaping | None = None
    presence: bool = False


def payload_fields(kind: TopicKind) -> frozenset[str]:
    """The top-level payload fields a filter may name on a topic of `kind`."""
    return _payload_fields()[kind]


@functools.cache
def _payload_fields() -> dict[TopicKind, frozenset[str]]:
    from orders.serializers import OrderSerializer
    from positions.serializers import PositionSerializer
    from strategies.serializers import StrategySerializer

    orders = frozenset(OrderSerializer().fields) | {"event", "previousStatus", "rejectReason"}
    positions = frozenset(PositionSerializer().fields) | {"event"}
    strategies = frozenset(StrategySerializer().fields) | {"event", "previousStatus"}
    market = frozenset({"symbol", "last", "bid", "ask", "volume", "timestamp"})
    by_kind = {
        TopicKind.ORDERS: orders,
        TopicKind.USER_ORDERS: orders,
        TopicKind.STRATEGY_ORDERS: orders,
        TopicKind.POSITIONS: positions,
        TopicKind.USER_POSITIONS: positions,
        TopicKind.STRATEGIES: strategies,
        TopicKind.USER_STRATEGIES: strategies,
        TopicKind.STRATEGY: strategies,
        TopicKind.MARKET: market,
    }
    assert set(by_kind) == set(TopicKind)
    return by_kind


def parse_subscribe_entry(raw: Any) -> SubscribeEntry:
    """The entry `raw` names; TopicError for a bad topic, SubscribeOptionError for a bad option."""
    if not isinstance(raw, dict):
        return SubscribeEntry(parse_topic(raw))
    topic = parse_topic(raw.get("topic"))
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
    presence = raw.get("presence", False)
    if not isinstance(presence, bool):
        raise SubscribeOptionError('"presence" must be true or false')
    filter_ = _parse_filter(topic, raw.get("filter"))
    throttle = _parse_throttle(topic, raw.get("throttleMs"))
    shaping = Shaping(filter_, throttle) if filter_ is not None or throttle is not None else None
    return SubscribeEntry(topic, position, snapshot, shaping, presence)


def _parse_filter(topic: Topic, raw: Any) -> Filter | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw:
        raise SubscribeOptionError(
            '"filter" must be an object of payload fields to a value or a list of values, '
            'e.g. {"symbol": ["AAPL", "MSFT"]}'
        )
    if len(raw) > MAX_FILTER_KEYS:
        raise SubscribeOptionError(f'"filter" may name at most {MAX_FILTER_KEYS} fields')
    known = payload_fields(topic.kind)
    fields = []
    for name, wanted in raw.items():
        if name not in known:
            raise SubscribeOptionError(
                f'"filter" names {name!r}, which is not a field of this topic\'s messages '
                f"(fields: {', '.join(sorted(known))})"
            )
        values = wanted if isinstance(wanted, list) else [wanted]
        if not values or len(values) > MAX_FILTER_VALUES:
            raise SubscribeOptionError(
                f'"filter.{name}" must be a value or a list of 1 to {MAX_FILTER_VALUES} values'
            )
        for value in values:
            if isinstance(value, dict | list) or (
                isinstance(value, float) and not math.isfinite(value)
            ):
                raise SubscribeOptionError(
                    f'"filter.{name}" values must be strings, numbers, booleans or null'
                )
        fields.append((name, frozenset(_scalar_key(value) for value in values)))
    return Filter(tuple(fields))


def _parse_throttle(topic: Topic, raw: Any) -> int | None:
    if raw is None:
        return None
    if topic.kind is not TopicKind.MARKET:
        raise SubscribeOptionError('"throttleMs" is only for market:{SYMBOL} topics')
    if (
        isinstance(raw, bool)
        or not isinstance(raw, int)
        or not (THROTTLE_MS_MIN <= raw <= THROTTLE_MS_MAX)
    ):
        raise SubscribeOptionError(
            f'"throttleMs" must be an integer from {THROTTLE_MS_MIN} to {THROTTLE_MS_MAX}'
        )
    return raw


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
