"""Topics: parsing, the one mapping to channel-layer group names, and who may subscribe.

The table is CONTRACT.md section 5. A strategy that does not exist is refused exactly like one
the user does not own, so topic names cannot be used to probe for strategies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

MAX_TOPIC_LENGTH = 100
SYMBOL_PATTERN = r"[A-Za-z0-9._-]{1,32}"  # as tradingrt.symbols, either case


class TopicKind(StrEnum):
    ORDERS = "orders"
    POSITIONS = "positions"
    STRATEGIES = "strategies"
    USER_ORDERS = "user_orders"
    USER_POSITIONS = "user_positions"
    USER_STRATEGIES = "user_strategies"
    STRATEGY = "strategy"
    STRATEGY_ORDERS = "strategy_orders"
    MARKET = "market"


class RejectReason(StrEnum):
    FORBIDDEN = "forbidden"
    INVALID_TOPIC = "invalid_topic"
    UNKNOWN_TOPIC = "unknown_topic"
    LIMIT_EXCEEDED = "limit_exceeded"
    # The channel layer could not take the subscription now (Redis unreachable): try again later.
    UNAVAILABLE = "unavailable"
    # A subscribe entry's option (since, snapshot, ...) is malformed (CONTRACT section 9).
    INVALID_OPTION = "invalid_option"


class TopicError(Exception):
    def __init__(self, reason: RejectReason) -> None:
        super().__init__(reason.value)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Topic:
    name: str  # canonical: what the client is told and what the envelope's "topic" carries
    kind: TopicKind
    user_id: int | None = None
    strategy_id: int | None = None
    symbol: str | None = None

    @property
    def group(self) -> str:
        return group_name(self.name)


_GLOBAL = {
    "orders": TopicKind.ORDERS,
    "positions": TopicKind.POSITIONS,
    "strategies": TopicKind.STRATEGIES,
}
_USER_SCOPED = {
    "orders": TopicKind.USER_ORDERS,
    "positions": TopicKind.USER_POSITIONS,
    "strategies": TopicKind.USER_STRATEGIES,
}
_ID = re.compile(r"[1-9][0-9]{0,18}")
_SYMBOL = re.compile(SYMBOL_PATTERN)
_SHAPE = re.compile(r"[A-Za-z0-9:._-]+")


def parse_topic(name: Any) -> Topic:
    """The Topic a client's string names; TopicError(invalid_topic | unknown_topic) otherwise."""
    if not isinstance(name, str) or not name or len(name) > MAX_TOPIC_LENGTH:
        raise TopicError(RejectReason.INVALID_TOPIC)
    if not _SHAPE.fullmatch(name):
        raise TopicError(RejectReason.INVALID_TOPIC)
    parts = name.split(":")
    head = parts[0]
    if len(parts) == 1:
        if head in _GLOBAL:
            return Topic(name=name, kind=_GLOBAL[head])
        raise TopicError(RejectReason.UNKNOWN_TOPIC)
    if head == "user":
        if len(parts) != 3:
            raise TopicError(
                RejectReason.UNKNOWN_TOPIC if len(parts) > 3 else RejectReason.INVALID_TOPIC
            )
        if not _ID.fullmatch(parts[1]):
            raise TopicError(RejectReason.INVALID_TOPIC)
        if parts[2] not in _USER_SCOPED:
            raise TopicError(RejectReason.UNKNOWN_TOPIC)
        return Topic(name=name, kind=_USER_SCOPED[parts[2]], user_id=int(parts[1]))
    if head == "strategy":
        if len(parts) > 3 or not _ID.fullmatch(parts[1]):
            raise TopicError(
                RejectReason.INVALID_TOPIC if len(parts) <= 3 else RejectReason.UNKNOWN_TOPIC
            )
        if len(parts) == 2:
            return Topic(name=name, kind=TopicKind.STRATEGY, strategy_id=int(parts[1]))
        if parts[2] == "orders":
            return Topic(name=name, kind=TopicKind.STRATEGY_ORDERS, strategy_id=int(parts[1]))
        raise TopicError(RejectReason.UNKNOWN_TOPIC)
    if head == "market":
        if len(parts) != 2 or not _SYMBOL.fullmatch(parts[1]):
            raise TopicError(RejectReason.INVALID_TOPIC)
        symbol = parts[1].upper()  # symbols are stored upper-case; so is the canonical topic
        return Topic(name=f"market:{symbol}", kind=TopicKind.MARKET, symbol=symbol)
    raise TopicError(RejectReason.UNKNOWN_TOPIC)


def group_name(topic: str) -> str:
    """The channel-layer group of a canonical topic; valid under Channels' naming rule.

    Channels allows ``[a-zA-Z0-9._-]`` and under 100 characters; topics use ``:`` as the
    separator, which symbols never contain, so replacing it with ``.`` under a fixed prefix is
    one-to-one.
    """
    return "rt." + topic.replace(":", ".")


# Permission that lets a non-owner subscribe, per topic kind (None: owners only, or everyone).
_PERMISSION = {
    TopicKind.ORDERS: "orders.view_order",
    TopicKind.POSITIONS: "positions.view_position",
    TopicKind.STRATEGIES: "strategies.view_strategy",
    TopicKind.USER_ORDERS: "orders.view_order",
    TopicKind.USER_POSITIONS: "positions.view_position",
    TopicKind.USER_STRATEGIES: "strategies.view_strategy",
    TopicKind.STRATEGY: "strategies.view_strategy",
    TopicKind.STRATEGY_ORDERS: "orders.view_order",
}


def authorize_topics(user: Any, topics: list[Topic]) -> dict[str, RejectReason | None]:
    """Decide, with fresh permissions, which topics `user` may subscribe to (runs in a thread).

    Returns topic name -> None (allowed) or RejectReason.FORBIDDEN.
    """
    from strategies.models import Strategy

    # The connection's user object lives as long as the connection: read the flags that grant
    # access again, and forget cached permissions, so a demotion counts at once (section 11).
    _forget_cached_permissions(user)
    try:
        user.refresh_from_db(fields=["is_active", "is_staff", "is_superuser"])
    except type(user).DoesNotExist:
        return {topic.name: RejectReason.FORBIDDEN for topic in topics}
    if not user.is_active:
        return {topic.name: RejectReason.FORBIDDEN for topic in topics}
    strategy_ids = {t.strategy_id for t in topics if t.strategy_id is not None}
    owners: dict[int, int] = {}
    if strategy_ids:
        owners = dict(Strategy.objects.filter(pk__in=strategy_ids).values_list("pk", "owner_id"))
    return {topic.name: _decide(user, topic, owners) for topic in topics}


def authorize_presence(user: Any, topics: list[Topic]) -> dict[str, RejectReason | None]:
    """Who may see a topic's presence (CONTRACT section 10): whoever may subscribe to it, except
    on `market:` topics, whose presence would tell who trades what: staff and holders of
    `realtime.view_connection` only."""
    decisions = authorize_topics(user, topics)
    market = [t for t in topics if t.kind is TopicKind.MARKET and decisions[t.name] is None]
    if market and not (user.is_staff or user.has_perm("realtime.view_connection")):
        decisions.update({t.name: RejectReason.FORBIDDEN for t in market})
    return decisions


def _decide(user: Any, topic: Topic, strategy_owners: dict[int, int]) -> RejectReason | None:
    if topic.kind is TopicKind.MARKET:
        return None
    if topic.strategy_id is not None:
        owner_id = strategy_owners.get(topic.strategy_id)
        if owner_id is None:
            # An absent strategy is refused to everyone: a topic that can never carry anything
            # is an error, and its reply must not differ from that for someone else's strategy.
            return RejectReason.FORBIDDEN
        if owner_id == user.pk:
            return None
    elif topic.user_id is not None and topic.user_id == user.pk:
        return None
    if user.is_staff or user.has_perm(_PERMISSION[topic.kind]):
        return None
    return RejectReason.FORBIDDEN


def _forget_cached_permissions(user: Any) -> None:
    for cache in ("_perm_cache", "_user_perm_cache", "_group_perm_cache"):
        user.__dict__.pop(cache, None)
