"""Write-behind for connection records: one process's changes, coalesced and written in batches.

Connects, authentications, subscriptions and disconnects are queued and written by one task:
when the database is idle a change is written at once; while a write is under way, further
changes pile up and go in the next one, as a few bulk statements. A burst of a thousand
connects costs a handful of queries, not two thousand, and the event loop never waits on
the database. Callers that must not go on before their change is stored (the AUTHENTICATION
message, subscription acks) await `stored()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import datetime

from channels.db import database_sync_to_async
from django.db import IntegrityError, transaction

from realtime import connections
from realtime.models import Connection, Subscription

logger = logging.getLogger(__name__)

RETRY_SECS = 1.0


@dataclass
class _Pending:
    """What is to be written; applied in this order: closes, opens, auths, unsubs, subs."""

    opens: dict[str, Connection] = field(default_factory=dict)
    auths: dict[str, tuple[int, datetime]] = field(default_factory=dict)
    subscribes: dict[str, set[str]] = field(default_factory=dict)
    unsubscribes: dict[str, set[str]] = field(default_factory=dict)
    closes: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.opens or self.auths or self.subscribes or self.unsubscribes or self.closes)


class RecordWriter:
    """Queues one process's connection-record changes and writes them in batches."""

    def __init__(self, server_id: str) -> None:
        self.server_id = server_id
        self._pending = _Pending()
        self._wake = asyncio.Event()
        self._queued = 0  # generation of the newest queued change
        self._stored = 0  # generation of the newest change written
        self._stored_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0

    # --- changes ---------------------------------------------------------------------------

    def opened(
        self,
        *,
        connection_id: str,
        user_id: int | None,
        client_address: str,
        user_agent: str,
        connected_at: datetime,
    ) -> None:
        self._pending.closes.discard(connection_id)
        self._pending.opens[connection_id] = Connection(
            id=connection_id,
            server_id=self.server_id,
            user_id=user_id,
            client_address=client_address[:100],
            user_agent=user_agent[:300],
            connected_at=connected_at,
            authenticated_at=connected_at if user_id is not None else None,
        )
        self._queue()

    def authenticated(self, *, connection_id: str, user_id: int, at: datetime) -> None:
        record = self._pending.opens.get(connection_id)
        if record is not None:
            record.user_id, record.authenticated_at = user_id, at
        else:
            self._pending.auths[connection_id] = (user_id, at)
        self._queue()

    def subscribed(self, *, connection_id: str, topics: list[str]) -> None:
        self._pending.unsubscribes.get(connection_id, set()).difference_update(topics)
        self._pending.subscribes.setdefault(connection_id, set()).update(topics)
        self._queue()

    def unsubscribed(self, *, connection_id: str, topics: list[str]) -> None:
        self._pending.subscribes.get(connection_id, set()).difference_update(topics)
        if connection_id not in self._pending.opens:
            self._pending.unsubscribes.setdefault(connection_id, set()).update(topics)
        self._queue()

    def closed(self, *, connection_id: str) -> None:
        never_written = self._pending.opens.pop(connection_id, None) is not None
        self._pending.auths.pop(connection_id, None)
        self._pending.subscribes.pop(connection_id, None)
        self._pending.unsubscribes.pop(connection_id, None)
        if not never_written:
            self._pending.closes.add(connection_id)
        self._queue()

    async def stored(self) -> None:
        """Return once every change queued so far is in the database."""
        wanted = self._queued
        while self._stored < wanted:
            self._stored_event.clear()
            await self._stored_event.wait()

    # --- the writer ---------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Write what is pending, then stop."""
        if self._task is not None:
            if self._pending:
                await self.stored()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _queue(self) -> None:
        self._queued += 1
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, generation = self._pending, self._queued
            self._pending = _Pending()
            try:
                await database_sync_to_async(_write)(self.server_id, batch)
            except Exception:
                logger.exception("Could not write connection records; retrying")
                self._pending = _merge(batch, self._pending)
                self._wake.set()
                await asyncio.sleep(RETRY_SECS)
                continue
            self.batches += 1
            self._stored = generation
            self._stored_event.set()


def _merge(older: _Pending, newer: _Pending) -> _Pending:
    """A failed batch and what came after it, as one batch (newer changes win)."""
    merged = _Pending(
        opens={**older.opens, **newer.opens},
        auths={**older.auths, **newer.auths},
        closes=older.closes | newer.closes,
    )
    for source in (older, newer):
        for connection_id, topics in source.subscribes.items():
            merged.subscribes.setdefault(connection_id, set()).update(topics)
        for connection_id, topics in source.unsubscribes.items():
            merged.unsubscribes.setdefault(connection_id, set()).update(topics)
    for connection_id in merged.closes & set(newer.opens):
        merged.closes.discard(connection_id)
    return merged


def _write(server_id: str, batch: _Pending) -> None:
    """Apply one batch in one transaction (runs in the database thread)."""
    try:
        _apply(batch)
        return
    except IntegrityError:
        # This process's own row vanished (pruned after a stall, deleted by hand): restore it.
        connections.server_process_restore(server_id=server_id)
    try:
        _apply(batch)
    except IntegrityError:
        # Changes for connections whose rows are gone: keep what still applies, drop the rest.
        existing = set(
            Connection.objects.filter(
                pk__in=[*batch.auths, *batch.subscribes, *batch.unsubscribes]
            ).values_list("pk", flat=True)
        ) | set(batch.opens)
        dropped = (set(batch.subscribes) | set(batch.auths)) - existing
        logger.warning("Dropped record changes of vanished connections: %s", sorted(dropped))
        batch.auths = {k: v for k, v in batch.auths.items() if k in existing}
        batch.subscribes = {k: v for k, v in batch.subscribes.items() if k in existing}
        _apply(batch)


def _apply(batch: _Pending) -> None:
    with transaction.atomic():
        if batch.closes:
            Connection.objects.filter(pk__in=batch.closes).delete()
        if batch.opens:
            Connection.objects.bulk_create(batch.opens.values(), ignore_conflicts=True)
        for connection_id, (user_id, at) in batch.auths.items():
            Connection.objects.filter(pk=connection_id).update(user_id=user_id, authenticated_at=at)
        for connection_id, topics in batch.unsubscribes.items():
            if topics:
                Subscription.objects.filter(connection_id=connection_id, topic__in=topics).delete()
        rows = [
            Subscription(connection_id=connection_id, topic=topic)
            for connection_id, topics in batch.subscribes.items()
            if connection_id not in batch.closes
            for topic in topics
        ]
        if rows:
            Subscription.objects.bulk_create(rows, ignore_conflicts=True)
