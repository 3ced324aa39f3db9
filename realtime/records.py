"""Connection records: each local connection's latest state, written behind and idempotently.

The writer holds, in memory, the state of every live connection of this process (user,
authentication, address, user agent, connected_at, topics) and the set of connections whose
state changed since it was last written. One task writes: it takes the whole changed set and
writes each connection's *current* state, whatever happened in between, so a retry can never
reorder changes. A closed connection's row is deleted (its subscriptions go with it); an open
one's row is upserted and its subscription rows made equal to its topics. A burst of a
thousand connects is one flush of a handful of bulk statements, in one transaction.

A flush that fails is split in halves, each its own transaction, down to the connections
that cannot be written (a user deleted while their record was queued: its foreign key fails);
the others are written at once. A connection whose write keeps failing is retried with
backoff and, after `max_tries`, skipped with a WARNING and counted. A flush that fails
because the database cannot be reached is retried whole, with backoff, for as long as it
takes; nothing is skipped for an outage. If this process's own row had vanished (pruned
after a stall, deleted by hand), the writer restores it, with its channel name, and writes
every live connection again.

Callers that must not go on before their connection's record is stored (the AUTHENTICATION
message, subscription acks) await `stored(connection_id)`, which waits for that connection
alone and at most `stored_wait_secs`: in an outage the connect goes on, and the record is
written when the database is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from channels.db import database_sync_to_async
from django.db import InterfaceError, OperationalError, models, router, transaction
from django.db import connections as databases
from django.db.backends.base.base import BaseDatabaseWrapper

from realtime import connections
from realtime.models import Connection, Subscription

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Ids per IN (...) list and rows per INSERT: well under SQLite's limit of bound parameters.
CHUNK = 500
_CONNECTION_FIELDS = [
    "server",
    "user",
    "client_address",
    "user_agent",
    "connected_at",
    "authenticated_at",
]


@dataclass
class _State:
    """One connection's latest state and where its writing stands."""

    user_id: int | None
    authenticated_at: datetime | None
    client_address: str
    user_agent: str
    connected_at: datetime
    topics: set[str] = field(default_factory=set)
    open: bool = True
    version: int = 1  # changes made so far
    written: int = 0  # the version last written (or given up on)
    tries: int = 0  # failed writes in a row
    maybe_in_db: bool = False  # a write of it was attempted: a close must delete a row
    waiters: list[tuple[int, asyncio.Future[bool | None]]] = field(default_factory=list)


@dataclass(frozen=True)
class _Row:
    """A snapshot of one connection's state, handed to the database thread."""

    connection_id: str
    version: int  # the state's version this snapshot holds
    open: bool
    fresh: bool  # never attempted before: it can have no subscription rows yet
    user_id: int | None
    authenticated_at: datetime | None
    client_address: str
    user_agent: str
    connected_at: datetime
    topics: frozenset[str]


@dataclass
class _Outcome:
    failed: dict[str, str] = field(default_factory=dict)  # connection id -> the error
    restored: bool = False  # this process's row was missing and was written again


class DatabaseUnavailable(Exception):
    """The database could not be reached: nothing was written, nothing is any row's fault."""


class RecordWriter:
    """Holds one process's connection states and writes the changed ones, one task, in bulk."""

    # Class attributes, so tests (and a deployment) can tune them; see the module docstring.
    max_tries = 5  # failed writes of one connection's state before it is skipped
    retry_secs = 0.5  # first backoff after a failure, doubled at each further one
    max_retry_secs = 10.0  # longest backoff, for a failing row and for an outage alike
    stored_wait_secs = 5.0  # longest `stored()` waits before the caller goes on
    # Least time between the end of one flush and the start of the next: in a burst, the most
    # a record (and the reply waiting for it) waits to share a transaction; 0 flushes at once.
    linger_secs = 0.01
    clock = staticmethod(time.monotonic)

    def __init__(self, server_id: str, *, channel_name: str = "") -> None:
        self.server_id = server_id
        self.channel_name = channel_name
        self._states: dict[str, _State] = {}
        self._dirty: set[str] = set()
        self._delayed: dict[str, float] = {}  # failed, retried at this clock() time
        self._in_flight: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # flushes written
        self.failures = 0  # writes of one connection's state that failed
        self.skipped = 0  # connection states given up on after max_tries
        self.outages = 0  # flushes that failed because the database could not be reached
        self.late = 0  # stored() waits that gave up before the record was written

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
        previous = self._states.get(connection_id)
        state = _State(
            user_id=user_id,
            authenticated_at=connected_at if user_id is not None else None,
            client_address=client_address[:100],
            user_agent=user_agent[:300],
            connected_at=connected_at,
        )
        if previous is not None:  # the same id opened again: its bookkeeping carries on
            state.version = previous.version + 1
            state.written, state.tries = previous.written, previous.tries
            state.maybe_in_db, state.waiters = previous.maybe_in_db, previous.waiters
        self._states[connection_id] = state
        self._mark(connection_id)

    def authenticated(self, *, connection_id: str, user_id: int, at: datetime) -> None:
        state = self._live(connection_id)
        if state is not None:
            state.user_id, state.authenticated_at = user_id, at
            self._changed(connection_id, state)

    def subscribed(self, *, connection_id: str, topics: Iterable[str]) -> None:
        state = self._live(connection_id)
        if state is not None:
            state.topics.update(topics)
            self._changed(connection_id, state)

    def unsubscribed(self, *, connection_id: str, topics: Iterable[str]) -> None:
        state = self._live(connection_id)
        if state is not None:
            state.topics.difference_update(topics)
            self._changed(connection_id, state)

    def closed(self, *, connection_id: str) -> None:
        state = self._live(connection_id)
        if state is None:
            return
        state.open = False
        state.topics.clear()
        if not state.maybe_in_db and connection_id not in self._in_flight:
            self._forget(connection_id, stored=True)  # never written: nothing to delete
            return
        self._changed(connection_id, state)

    def rewrite(self, connection_id: str) -> None:
        """Write this connection's whole state again (its row may have been lost)."""
        state = self._live(connection_id)
        if state is not None:
            self._changed(connection_id, state)

    def rewrite_all(self) -> None:
        """Write every live connection again: this process's rows were lost and restored."""
        for connection_id, state in self._states.items():
            if state.open:
                self._changed(connection_id, state)

    async def stored(self, connection_id: str) -> bool:
        """Wait until this connection's state as of now is written; False if it was not.

        Waits for this connection only, and at most `stored_wait_secs`: False means its record
        was skipped (it cannot be written) or is still pending (the database is unreachable);
        either way the caller goes on, and a pending record is written when it can be.
        """
        state = self._states.get(connection_id)
        if state is None or state.written >= state.version:
            return True
        # A timer that answers None, rather than wait_for and shield: a task and two futures
        # fewer on every connect.
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool | None] = loop.create_future()
        state.waiters.append((state.version, waiter))
        timer = loop.call_later(self.stored_wait_secs, _give_up, waiter)
        try:
            stored = await waiter
        finally:
            timer.cancel()
        if stored is None:
            self.late += 1
            logger.debug("Record of %s not stored within the wait; going on", connection_id)
            return False
        return stored

    async def flushed(self) -> bool:
        """Wait until every change queued so far is written or given up on (stop, tests)."""
        pending = [*self._dirty, *self._delayed, *self._in_flight]
        return all(await asyncio.gather(*(self.stored(c) for c in pending)))

    def _live(self, connection_id: str) -> _State | None:
        state = self._states.get(connection_id)
        if state is None or not state.open:
            # A change racing its connection's close: the close wins, the change is moot.
            logger.debug("Ignored a record change of closed connection %s", connection_id)
            return None
        return state

    def _changed(self, connection_id: str, state: _State) -> None:
        state.version += 1
        self._mark(connection_id)

    def _mark(self, connection_id: str) -> None:
        if connection_id not in self._delayed:  # a failing record keeps to its backoff
            self._dirty.add(connection_id)
            self._wake.set()

    def _forget(self, connection_id: str, *, stored: bool) -> None:
        state = self._states.pop(connection_id, None)
        self._dirty.discard(connection_id)
        self._delayed.pop(connection_id, None)
        if state is not None:
            _release(state.waiters, stored=stored)

    # --- the writer ---------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Write what is pending (waiting at most `stored_wait_secs`), then stop."""
        if self._task is not None:
            await self.flushed()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        outage = 0  # failed flushes in a row for want of a database
        loop = asyncio.get_running_loop()
        flushed_at = -math.inf  # loop.time() when the last flush ended
        while True:
            if not self._dirty:
                due = min(self._delayed.values(), default=None)
                timeout = None if due is None else max(0.0, due - self.clock())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
            # In a burst (the last flush ended under linger_secs ago), the changes of the rest
            # of that interval go into this flush too: fewer, larger transactions, rather than
            # one for every connect that arrives while the last one commits.
            pause = flushed_at + self.linger_secs - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            self._wake.clear()
            now = self.clock()
            for connection_id, due in list(self._delayed.items()):
                if due <= now:
                    del self._delayed[connection_id]
                    self._dirty.add(connection_id)
            if not self._dirty:
                continue
            ids, self._dirty = self._dirty, set()
            rows = [self._snapshot(connection_id) for connection_id in ids]
            self._in_flight = ids
            try:
                outcome = await database_sync_to_async(write_records)(
                    server_id=self.server_id, channel_name=self.channel_name, rows=rows
                )
            except Exception as exc:  # DatabaseUnavailable, or a fault of this module's own
                if not isinstance(exc, DatabaseUnavailable):
                    logger.exception("Writing connection records failed unexpectedly")
                outage += 1
                self.outages += 1
                self._dirty |= {c for c in ids if c in self._states and c not in self._delayed}
                pause = self._backoff(outage)
                log = logger.warning if outage == 1 else logger.info
                log(
                    "Could not reach the database to write %d connection record(s) (%s); "
                    "retrying in %.1f s, nothing is dropped",
                    len(self._dirty),
                    exc,
                    pause,
                )
                await asyncio.sleep(pause)
                continue
            finally:
                self._in_flight = set()
                flushed_at = loop.time()
            if outage:
                logger.warning("The database is back; writing connection records again")
                outage = 0
            self.batches += 1
            for row in rows:
                error = outcome.failed.get(row.connection_id)
                if error is None:
                    self._written(row)
                else:
                    self._failed(row, error)
            if outcome.restored:
                logger.warning(
                    "Process %s had lost its row; restored it, writing every connection again",
                    self.server_id,
                )
                self.rewrite_all()

    def _snapshot(self, connection_id: str) -> _Row:
        state = self._states[connection_id]
        row = _Row(
            connection_id=connection_id,
            version=state.version,
            open=state.open,
            fresh=not state.maybe_in_db,
            user_id=state.user_id,
            authenticated_at=state.authenticated_at,
            client_address=state.client_address,
            user_agent=state.user_agent,
            connected_at=state.connected_at,
            topics=frozenset(state.topics),
        )
        state.maybe_in_db = state.maybe_in_db or state.open
        return row

    def _written(self, row: _Row) -> None:
        state = self._states.get(row.connection_id)
        if state is None:
            return
        state.tries = 0
        state.written = max(state.written, row.version)
        if not state.open and state.written >= state.version:
            self._forget(row.connection_id, stored=True)
            return
        _release(state.waiters, stored=True, upto=state.written)

    def _failed(self, row: _Row, error: str) -> None:
        state = self._states.get(row.connection_id)
        if state is None:
            return
        self.failures += 1
        state.tries += 1
        if state.tries >= self.max_tries:
            self.skipped += 1
            logger.warning(
                "Skipped the record of connection %s after %d failed writes: %s",
                row.connection_id,
                state.tries,
                error,
            )
            state.tries = 0
            state.written = max(state.written, row.version)
            _release(state.waiters, stored=False, upto=row.version)
            if state.written >= state.version:  # nothing newer to try
                self._dirty.discard(row.connection_id)
                if not state.open:
                    self._forget(row.connection_id, stored=False)
            return
        pause = self._backoff(state.tries)
        logger.info(
            "Could not write the record of connection %s (try %d of %d, again in %.1f s): %s",
            row.connection_id,
            state.tries,
            self.max_tries,
            pause,
            error,
        )
        self._dirty.discard(row.connection_id)
        self._delayed[row.connection_id] = self.clock() + pause

    def _backoff(self, tries: int) -> float:
        return float(min(self.max_retry_secs, self.retry_secs * 2 ** (tries - 1)))


def _give_up(waiter: asyncio.Future[bool | None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _release(
    waiters: list[tuple[int, asyncio.Future[bool | None]]], *, stored: bool, upto: int | None = None
) -> None:
    """Answer the waiters for versions up to `upto` (all of them without it)."""
    keep = []
    for wanted, waiter in waiters:
        if upto is not None and wanted > upto:
            keep.append((wanted, waiter))
        elif not waiter.done():
            waiter.set_result(stored)
    waiters[:] = keep


# --- the database side (runs in the database thread) -------------------------------------------


def write_records(*, server_id: str, channel_name: str, rows: Sequence[_Row]) -> _Outcome:
    """Write the rows' states; returns the rows that failed and why.

    All in one transaction when it can; else in halves, each its own transaction (not
    savepoints: foreign keys are checked at commit), so a row that cannot be written fails
    alone. Raises DatabaseUnavailable when the database cannot be reached.
    """
    outcome = _Outcome()
    error = _attempt(server_id, rows)
    if error is None:
        return outcome
    try:
        outcome.restored = connections.server_process_restore_if_missing(
            server_id=server_id, channel_name=channel_name
        )
    except (OperationalError, InterfaceError) as exc:
        raise DatabaseUnavailable(str(exc)) from exc
    if outcome.restored:
        error = _attempt(server_id, rows)
        if error is None:
            return outcome
    _bisect(server_id, rows, error, outcome.failed)
    return outcome


def _attempt(server_id: str, rows: Sequence[_Row]) -> str | None:
    """Write the rows in one transaction: None when done, else what went wrong."""
    try:
        _apply(server_id, rows)
    except (OperationalError, InterfaceError) as exc:
        raise DatabaseUnavailable(str(exc)) from exc
    except Exception as exc:  # integrity, data, or a fault of ours: this batch's own
        return f"{type(exc).__name__}: {exc}"
    return None


def _bisect(server_id: str, rows: Sequence[_Row], error: str, failed: dict[str, str]) -> None:
    """`rows` failed together with `error`: write them in halves to find those that fail alone."""
    if len(rows) == 1:
        failed[rows[0].connection_id] = error
        return
    middle = len(rows) // 2
    for half in (rows[:middle], rows[middle:]):
        half_error = _attempt(server_id, half)
        if half_error is not None:
            _bisect(server_id, half, half_error, failed)


def _apply(server_id: str, rows: Sequence[_Row]) -> None:
    """Make the database hold exactly these connections' states, in one transaction."""
    closed = [row.connection_id for row in rows if not row.open]
    opened = [row for row in rows if row.open]
    alias = router.db_for_write(Connection)
    database = databases[alias]  # this thread's connection
    statements = _Statements.of(database)
    with transaction.atomic(using=alias):
        for ids in _chunks(closed):
            if statements is not None:
                statements.delete(database, ids)
            else:
                Connection.objects.filter(pk__in=ids).delete()  # cascades to subscriptions
        if not opened:
            return
        if statements is not None:
            statements.upsert(database, server_id, opened)
        else:
            Connection.objects.bulk_create(
                [
                    Connection(
                        id=row.connection_id,
                        server_id=server_id,
                        user_id=row.user_id,
                        client_address=row.client_address,
                        user_agent=row.user_agent,
                        connected_at=row.connected_at,
                        authenticated_at=row.authenticated_at,
                    )
                    for row in opened
                ],
                batch_size=CHUNK,
                update_conflicts=True,
                unique_fields=["id"],
                update_fields=_CONNECTION_FIELDS,
            )
        existing: dict[str, dict[str, int]] = {}
        for ids in _chunks([row.connection_id for row in opened if not row.fresh]):
            for pk, connection_id, topic in Subscription.objects.filter(
                connection_id__in=ids
            ).values_list("pk", "connection_id", "topic"):
                existing.setdefault(connection_id, {})[topic] = pk
        stale: list[int] = []
        missing: list[Subscription] = []
        for row in opened:
            held = existing.get(row.connection_id, {})
            stale.extend(pk for topic, pk in held.items() if topic not in row.topics)
            missing.extend(
                Subscription(connection_id=row.connection_id, topic=topic)
                for topic in row.topics
                if topic not in held
            )
        for pks in _chunks(stale):
            Subscription.objects.filter(pk__in=pks).delete()
        if missing:
            Subscription.objects.bulk_create(missing, batch_size=CHUNK, ignore_conflicts=True)


class _Statements:
    """The connection rows' upsert and delete as plain SQL statements, for SQLite and PostgreSQL.

    What `bulk_create(update_conflicts=True)` and `delete()` send, without compiling each row
    through the ORM: the same multi-row `INSERT ... ON CONFLICT (id) DO UPDATE` (as many rows a
    statement as the backend's parameter limit allows) and, for closed connections, the
    `DELETE` of their subscriptions' rows and then of theirs. The ORM's way cost 2.5-3 times
    the CPU a row for an upsert and 7-8 times for a delete on SQLite (docs/BENCHMARKS.md, "Where
    a connect's CPU goes"); a connect burst writes one row per connect. Text and ids go as they
    are; the two times through their field's `get_db_prep_save`, as the ORM's would. `of()` is
    None on any other backend, and if another model ever refers to Connection (its rows would
    need deleting too): the ORM then.
    """

    _cache: dict[str, _Statements | None] = {}

    def __init__(self, database: BaseDatabaseWrapper) -> None:
        # Kept: text and the fields' methods, the same for every thread. Not kept: `database`,
        # one thread's connection (Django refuses it in any other).
        quote = database.ops.quote_name
        fields = [_field(Connection, name) for name in ("id", *_CONNECTION_FIELDS)]
        self.width = len(fields)
        # connected_at and authenticated_at: their field adapts a time to this database
        self.adapt_time = fields[-1].get_db_prep_save
        columns = [quote(f.column) for f in fields]
        table = quote(Connection._meta.db_table)
        updates = ", ".join(f"{column} = EXCLUDED.{column}" for column in columns[1:])
        # Only quoted table and column names from the models go into the text; values are
        # always parameters.
        self.insert_sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "  # noqa: S608
        self.row_marks = f"({', '.join(['%s'] * self.width)})"
        self.conflict_sql = f" ON CONFLICT ({columns[0]}) DO UPDATE SET {updates}"
        limit = database.features.max_query_params or CHUNK * self.width
        self.rows_per_statement = max(1, min(CHUNK, limit // self.width))
        subscriptions = quote(Subscription._meta.db_table)
        of_connection = quote(_field(Subscription, "connection").column)
        self.delete_subscriptions_sql = f"DELETE FROM {subscriptions} WHERE {of_connection} IN "  # noqa: S608
        self.delete_connections_sql = f"DELETE FROM {table} WHERE {columns[0]} IN "  # noqa: S608

    @classmethod
    def of(cls, database: BaseDatabaseWrapper) -> _Statements | None:
        key = f"{database.alias}:{database.vendor}"
        if key not in cls._cache:
            referring = {rel.related_model for rel in Connection._meta.related_objects}
            usable = database.vendor in ("sqlite", "postgresql") and referring == {Subscription}
            cls._cache[key] = cls(database) if usable else None
        return cls._cache[key]

    def upsert(self, database: BaseDatabaseWrapper, server_id: str, rows: Sequence[_Row]) -> None:
        adapt = self.adapt_time
        # The text and id values are the database's already; the two times are adapted by
        # their field (SQLite: a UTC string; PostgreSQL: the aware datetime).
        values = [
            value
            for row in rows
            for value in (
                row.connection_id,
                server_id,
                row.user_id,
                row.client_address,
                row.user_agent,
                adapt(row.connected_at, database),
                adapt(row.authenticated_at, database),
            )
        ]
        width, step = self.width, self.rows_per_statement
        with database.cursor() as cursor:
            for start in range(0, len(rows), step):
                count = min(step, len(rows) - start)
                cursor.execute(
                    f"{self.insert_sql}{', '.join([self.row_marks] * count)}{self.conflict_sql}",
                    values[start * width : (start + count) * width],
                )

    def delete(self, database: BaseDatabaseWrapper, ids: Sequence[str]) -> None:
        marks = f"({', '.join(['%s'] * len(ids))})"
        with database.cursor() as cursor:
            cursor.execute(self.delete_subscriptions_sql + marks, list(ids))
            cursor.execute(self.delete_connections_sql + marks, list(ids))


def _field(model: type[models.Model], name: str) -> models.Field[Any, Any]:
    field = model._meta.get_field(name)
    assert isinstance(field, models.Field)
    return field


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]
