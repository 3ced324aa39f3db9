"""The state of a topic, as a SNAPSHOT lists it (CONTRACT section 9), and its pages.

Items are the update payloads without `event` (the services' `state`): orders, positions and
strategies carry `version`, so a client applies an update only if it is newer than the item.
Each kind is read with one query, so the state is one consistent read, never pages read at
different moments that could each miss an object that moved between them. Blocking: run it in
database_sync_to_async.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

from market.selectors import quote_get
from orders.selectors import order_list_open_or_changed
from positions.selectors import position_list_with_owner_exposure
from realtime.protocol import encode_json
from realtime.services import OrderUpdateService, PositionUpdateService, StrategyMonitorService
from realtime.topics import Topic, TopicKind
from strategies.selectors import strategy_list

# Orders topics hold the open orders and those changed this recently: what a blotter shows.
RECENT_ORDERS = timedelta(hours=24)

# A page's items take at most this many bytes as JSON, whatever SNAPSHOT_PAGE_SIZE allows: a
# quarter of Daphne's 1 MiB message limit, room for the envelope and other encodings. Pages of
# a few hundred orders are a few hundred KiB; one strategy may be ~141 KiB (its parameters), so
# a count alone could build a page that the server must refuse to send (1009).
PAGE_MAX_BYTES = 256 * 1024

Item = dict[str, Any]


class Snapshots:
    """Reads topic states; the clock is an attribute so that tests can move it."""

    now = staticmethod(timezone.now)

    @classmethod
    def items(cls, topic: Topic) -> list[Item]:
        """The topic's state: its items ordered by id (market: at most one, the latest tick)."""
        kind = topic.kind
        if kind in (TopicKind.ORDERS, TopicKind.USER_ORDERS, TopicKind.STRATEGY_ORDERS):
            orders = order_list_open_or_changed(
                changed_since=cls.now() - RECENT_ORDERS,
                user_id=topic.user_id,
                strategy_id=topic.strategy_id,
            )
            return OrderUpdateService.states(list(orders))
        if kind in (TopicKind.POSITIONS, TopicKind.USER_POSITIONS):
            positions = list(position_list_with_owner_exposure(user_id=topic.user_id))
            totals = {position.user_id: position.owner_total_exposure for position in positions}
            return PositionUpdateService.states(positions, total_exposure_by_user=totals)
        if kind in (TopicKind.STRATEGIES, TopicKind.USER_STRATEGIES, TopicKind.STRATEGY):
            strategies = strategy_list(owner=None).order_by("pk")
            if topic.user_id is not None:
                strategies = strategies.filter(owner_id=topic.user_id)
            if topic.strategy_id is not None:
                strategies = strategies.filter(pk=topic.strategy_id)
            return StrategyMonitorService.states(list(strategies))
        if kind is TopicKind.MARKET:
            assert topic.symbol is not None
            quote = quote_get(symbol=topic.symbol)
            return [] if quote is None else [quote.tick().payload()]
        raise ValueError(f"No snapshot for topics of kind {kind!r}")


def snapshot_items(topic: Topic) -> list[Item]:
    """The state of `topic` for a SNAPSHOT (blocking: one query)."""
    return Snapshots.items(topic)


def paged(
    items: list[Item], page_size: int, *, max_bytes: int | None = PAGE_MAX_BYTES
) -> list[list[Item]]:
    """`items` in order, cut into pages of at most `page_size` items and, unless `max_bytes`
    is None, at most `max_bytes` of JSON (an item larger than that gets a page of its own).
    Always at least one page: an empty state is one empty, last page."""
    if page_size < 1:
        raise ValueError(f"page_size must be at least 1, not {page_size}")
    pages: list[list[Item]] = [[]]
    used = 0
    for item in items:
        size = 0 if max_bytes is None else len(encode_json(item).encode())
        page = pages[-1]
        if page and (len(page) >= page_size or (max_bytes is not None and used + size > max_bytes)):
            pages.append([])
            used = 0
        pages[-1].append(item)
        used += size
    return pages
