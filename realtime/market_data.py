"""Market data in real time: MARKET_DATA to `market:{SYMBOL}` at once, marking conflated.

Every tick is published as it comes. Marking to market (market.services.market_mark: a database
write and a POSITION_UPDATE per position) is throttled per process: the first tick after a quiet
spell marks at once, and during a burst the latest tick of each symbol is applied once per
MARK_TO_MARKET_INTERVAL_SECS.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time

from channels.db import database_sync_to_async
from redis.exceptions import RedisError

from market.services import market_mark
from market.ticks import Tick
from realtime import stats
from realtime.conf import realtime_settings
from realtime.history import HistoryUnavailable
from realtime.protocol import MessageType
from realtime.publish import apublish_rollback_unsafe

logger = logging.getLogger(__name__)


class MarketDataUnavailable(Exception):
    """Ticks could not be published (the history or the channel layer cannot be reached).

    A tick is stored nowhere before it is published, so the feed is told (503) and sends them
    again; `published` of them went out before the failure (a tick sent twice is harmless: a
    subscriber keeps the latest).
    """

    def __init__(self, published: int, total: int, reason: str) -> None:
        super().__init__(reason)
        self.published = published
        self.total = total
        self.reason = reason


def market_topic(tick: Tick) -> str:
    return f"market:{tick.symbol}"


class MarketDataService:
    """Publishes ticks and throttles marking to market, for one process."""

    clock = staticmethod(time.monotonic)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, Tick] = {}
        self._last_mark = float("-inf")
        self._trailing: asyncio.TimerHandle | None = None
        self._trailing_loop: asyncio.AbstractEventLoop | None = None
        self.marks = 0  # how many times positions were marked (observability, tests)

    async def apublish(self, ticks: list[Tick]) -> None:
        """Publish `ticks` as MARKET_DATA now; mark to market now or at the window's end.

        Raises MarketDataUnavailable when the history or the channel layer cannot be reached;
        the ticks published before that are marked as usual.
        """
        published = 0
        failure: MarketDataUnavailable | None = None
        for tick in ticks:
            try:
                await apublish_rollback_unsafe(
                    MessageType.MARKET_DATA, (market_topic(tick),), tick.payload()
                )
            except (HistoryUnavailable, RedisError, OSError) as exc:
                reason = str(exc) or type(exc).__name__
                stats.count("publish_failed")
                logger.warning(
                    "Market data for %s could not be published (%d of %d ticks were): %s",
                    tick.symbol,
                    published,
                    len(ticks),
                    reason,
                )
                failure = MarketDataUnavailable(published, len(ticks), reason)
                break
            published += 1
        ticks = ticks[:published]
        if ticks:
            await self._mark(ticks)
        if failure is not None:
            raise failure

    async def _mark(self, ticks: list[Tick]) -> None:
        with self._lock:
            for tick in ticks:
                self._pending[tick.symbol] = tick
            interval = realtime_settings.MARK_TO_MARKET_INTERVAL_SECS
            wait = self._last_mark + interval - self.clock()
        if wait > 0:
            self._schedule_trailing(wait)
            return
        try:
            await database_sync_to_async(self.flush)()
        except Exception:
            # The ticks went out; only the marking failed (the database): it is retried.
            self._mark_failed()

    def _schedule_trailing(self, wait: float) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            pending = self._trailing is not None and not self._trailing.cancelled()
            if pending and self._trailing_loop is loop and not loop.is_closed():
                return
            self._trailing_loop = loop
            # A fresh context: the request's (asgiref's executor for it) is gone by then.
            self._trailing = loop.call_later(
                wait,
                lambda: loop.create_task(self._flush_later(), context=contextvars.Context()),
                context=contextvars.Context(),
            )

    async def _flush_later(self) -> None:
        with self._lock:
            self._trailing = None
        try:
            await database_sync_to_async(self.flush)()
        except Exception:
            self._mark_failed()

    def _mark_failed(self) -> None:
        """Log a failed marking and try it again an interval later (its ticks were kept)."""
        retry_in = max(realtime_settings.MARK_TO_MARKET_INTERVAL_SECS, 0.5)  # never a busy loop
        stats.count("mark_failed")
        logger.exception("Marking to market failed; trying again in %s s", retry_in)
        self._schedule_trailing(retry_in)

    def flush(self) -> int:
        """Mark what is pending now (blocking); returns how many symbols were marked."""
        with self._lock:
            ticks = list(self._pending.values())
            self._pending.clear()
            self._last_mark = self.clock()
        if ticks:
            try:
                market_mark(ticks=ticks)
            except BaseException:
                with self._lock:  # kept for the next try, unless a newer tick came meanwhile
                    for tick in ticks:
                        self._pending.setdefault(tick.symbol, tick)
                raise
            self.marks += 1
        return len(ticks)

    def reset(self) -> None:
        """Forget pending ticks and the throttle (tests)."""
        with self._lock:
            self._pending.clear()
            self._last_mark = float("-inf")
            if self._trailing is not None:
                self._trailing.cancel()
            self._trailing = None


market_data = MarketDataService()
