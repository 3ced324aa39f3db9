"""Connection records written behind: batching, coalescing, and recovery (realtime.records)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.db import connection, transaction
from django.utils import timezone

from realtime import connections, records
from realtime.models import Connection, ServerProcess, Subscription
from realtime.records import RecordWriter
from realtime.selectors import connection_status
from tests.conftest import access_token_for
from tests.factories import UserFactory
from tests.live import eventually, live_server
from tests.wsclient import connect, receive_type, subscribe

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["statements", "orm"])
async def writer(request, monkeypatch):
    """A started writer; each test runs twice: with the plain SQL statements this database's
    backend uses, and with the ORM's bulk_create and delete that any other backend gets."""
    if request.param == "orm":
        monkeypatch.setattr(records._Statements, "of", classmethod(lambda cls, database: None))
    server = await sync_to_async(connections.server_process_register)(channel_name="rt.hub!test")
    started = RecordWriter(server.pk, channel_name="rt.hub!test")
    started.start()
    yield started
    await started.stop()


def _open(records: RecordWriter, connection_id: str, user_id=None) -> None:
    records.opened(
        connection_id=connection_id,
        user_id=user_id,
        client_address="127.0.0.1:1",
        user_agent="test",
        connected_at=timezone.now(),
    )


async def rows():
    def read():
        return (
            sorted(Connection.objects.values_list("pk", flat=True)),
            sorted(Subscription.objects.values_list("connection_id", "topic")),
        )

    return await sync_to_async(read)()


async def test_a_burst_of_connects_is_written_in_one_batch(writer):
    for n in range(500):
        _open(writer, f"c{n:03}")
        writer.subscribed(connection_id=f"c{n:03}", topics=["market:AAPL", "orders"])
    await writer.flushed()
    connection_ids, subscriptions = await rows()
    assert connection_ids == [f"c{n:03}" for n in range(500)]
    assert len(subscriptions) == 1000
    assert writer.batches == 1


def test_sqlite_and_postgresql_write_records_with_plain_statements():
    assert connection.vendor in ("sqlite", "postgresql")
    records._Statements._cache.clear()
    assert records._Statements.of(connection) is not None


def test_another_model_referring_to_connections_turns_the_statements_off(monkeypatch):
    """Their DELETE removes subscriptions and connections only: rows of any other model that
    refers to a connection would be left behind (or fail its foreign key), so the ORM, which
    cascades to every relation, writes instead."""
    related = [*Connection._meta.related_objects, Connection._meta.get_field("server")]
    monkeypatch.setattr(Connection._meta, "related_objects", related)
    monkeypatch.setattr(records._Statements, "_cache", {})
    assert records._Statements.of(connection) is None


def test_records_are_written_from_any_thread_on_its_own_connection(transactional_db):
    """Django's connections are per thread: the statements kept between flushes must not hold
    the first thread's, or a flush from another thread fails (the writer's thread is asgiref's
    choice, not ours)."""
    server = connections.server_process_register(channel_name="rt.hub!test")
    now = timezone.now()

    def write(connection_id: str) -> dict:
        row = records._Row(
            connection_id=connection_id, version=1, open=True, fresh=True, user_id=None,
            authenticated_at=None, client_address="", user_agent="", connected_at=now,
            topics=frozenset(),
        )  # fmt: skip
        try:
            return records.write_records(server_id=server.pk, channel_name="", rows=[row]).failed
        finally:
            connection.close()

    for name in ("first", "second"):
        with concurrent.futures.ThreadPoolExecutor(1) as thread:  # a new thread each time
            assert thread.submit(write, name).result() == {}, name
    assert sorted(Connection.objects.values_list("pk", flat=True)) == ["first", "second"]


async def test_a_record_written_again_holds_exactly_the_latest_state(writer, trader):
    """The upsert replaces every field (what the ORM's update_conflicts did), times keep their
    microseconds and zone, and an address or user agent too long is cut to its column."""
    opened_at = timezone.now().replace(microsecond=123456)
    writer.opened(
        connection_id="c1",
        user_id=None,
        client_address="1" * 150,
        user_agent="agent/1",
        connected_at=opened_at,
    )
    await writer.flushed()
    record = await sync_to_async(Connection.objects.get)(pk="c1")
    assert (record.user_id, record.authenticated_at) == (None, None)
    assert record.connected_at == opened_at and record.client_address == "1" * 100
    signed_in = opened_at + timedelta(seconds=1, microseconds=1)
    writer.authenticated(connection_id="c1", user_id=trader.pk, at=signed_in)
    writer.subscribed(connection_id="c1", topics=["orders"])
    await writer.flushed()
    record = await sync_to_async(Connection.objects.get)(pk="c1")
    assert (record.user_id, record.authenticated_at) == (trader.pk, signed_in)
    assert (record.server_id, record.user_agent) == (writer.server_id, "agent/1")
    assert (await rows()) == (["c1"], [("c1", "orders")])
    writer.closed(connection_id="c1")
    await writer.flushed()
    assert await rows() == ([], [])  # its subscription deleted with it


async def test_connects_arriving_through_a_burst_share_transactions(writer):
    """While changes keep coming, a flush starts at most linger_secs after the last one ended,
    so a burst is a few transactions, not one for each connect that arrived meanwhile."""
    writer.linger_secs = 0.05
    _open(writer, "first")
    await writer.flushed()
    before, started = writer.batches, time.monotonic()
    for n in range(40):
        _open(writer, f"c{n:02}")
        await asyncio.sleep(0.005)
    await writer.flushed()
    elapsed = time.monotonic() - started
    assert len((await rows())[0]) == 41
    assert writer.batches - before <= elapsed / writer.linger_secs + 2


async def test_a_connect_after_a_quiet_spell_is_written_at_once(writer):
    """The linger holds a change only within linger_secs of the last flush: a lone connect,
    and the reply that waits for its record, are not held."""
    writer.linger_secs = 1.0
    _open(writer, "lone")
    assert await asyncio.wait_for(writer.stored("lone"), 0.5)
    _open(writer, "next")  # within the linger of that flush: held for it
    await asyncio.sleep(0.2)
    assert (await rows())[0] == ["lone"]
    assert await asyncio.wait_for(writer.stored("next"), 2.0)
    assert (await rows())[0] == ["lone", "next"]


async def test_a_connection_closed_before_it_was_written_is_never_written(writer):
    _open(writer, "fleeting")
    writer.subscribed(connection_id="fleeting", topics=["orders"])
    writer.closed(connection_id="fleeting")
    _open(writer, "stays")
    await writer.flushed()
    assert await rows() == (["stays"], [])


async def test_subscribe_then_unsubscribe_and_back_nets_out(writer):
    _open(writer, "c1")
    await writer.flushed()
    writer.subscribed(connection_id="c1", topics=["a", "b"])
    writer.unsubscribed(connection_id="c1", topics=["a"])
    await writer.flushed()
    assert (await rows())[1] == [("c1", "b")]
    writer.unsubscribed(connection_id="c1", topics=["b"])
    writer.subscribed(connection_id="c1", topics=["b", "c"])
    await writer.flushed()
    assert (await rows())[1] == [("c1", "b"), ("c1", "c")]
    writer.closed(connection_id="c1")
    await writer.flushed()
    assert await rows() == ([], [])


async def test_authentication_after_the_open_is_recorded(writer, trader):
    _open(writer, "c1")
    await writer.flushed()
    writer.authenticated(connection_id="c1", user_id=trader.pk, at=timezone.now())
    await writer.flushed()
    record = await sync_to_async(Connection.objects.get)(pk="c1")
    assert record.user_id == trader.pk and record.authenticated_at is not None


async def test_records_of_a_process_whose_row_vanished_restore_it(writer):
    await sync_to_async(ServerProcess.objects.all().delete)()
    _open(writer, "c1")
    await writer.flushed()
    assert (await rows())[0] == ["c1"]
    restored = await sync_to_async(ServerProcess.objects.get)(pk=writer.server_id)
    assert restored.channel_name == "rt.hub!test"  # operator commands reach it again


# --- faults: real database errors, caused in the database -----------------------------------


def _add_fault(table: str) -> None:
    """Every INSERT into `table` fails, in the database itself, until _drop_fault."""
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(
                f"CREATE TRIGGER rt_fault BEFORE INSERT ON {table} "
                "BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
            )
        else:
            cursor.execute(
                "CREATE OR REPLACE FUNCTION rt_fault() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'injected fault'; END $$"
            )
            cursor.execute(
                f"CREATE TRIGGER rt_fault BEFORE INSERT ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION rt_fault()"
            )


def _drop_fault(table: str) -> None:
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("DROP TRIGGER IF EXISTS rt_fault")
        else:
            cursor.execute(f"DROP TRIGGER IF EXISTS rt_fault ON {table}")
            cursor.execute("DROP FUNCTION IF EXISTS rt_fault()")


async def _write_failed(caplog) -> None:
    """Until the writer has reported a failed write (whatever its wording)."""
    async with asyncio.timeout(10):
        while not any(r.name == "realtime.records" for r in caplog.records):
            await asyncio.sleep(0.02)


async def _deleted_user_id() -> int:
    def create_and_delete() -> int:
        user = UserFactory(username="gone")
        pk = user.pk
        user.delete()
        return pk

    return await sync_to_async(create_and_delete)()


async def _in_flight(writer: RecordWriter, connection_id: str) -> None:
    """Until the writer has taken this connection's change and handed it to the database
    thread (after its linger, if a flush has just ended)."""
    async with asyncio.timeout(5):
        while connection_id not in writer._in_flight:
            await asyncio.sleep(0.001)


async def test_open_then_a_failed_write_then_close_leaves_no_ghost_row(writer, caplog):
    caplog.set_level(logging.INFO, logger="realtime.records")
    try:
        # The write of the open waits on the lock, then meets the fault; the close comes
        # while it is under way.
        async with WriteLock(then=lambda: _add_fault("realtime_connection")) as lock:
            _open(writer, "c1")
            await _in_flight(writer, "c1")
            writer.closed(connection_id="c1")
            await lock.release()
        await _write_failed(caplog)
    finally:
        await sync_to_async(_drop_fault)("realtime_connection")
    _open(writer, "c2")
    await writer.flushed()
    assert await rows() == (["c2"], [])


async def test_subscribe_then_a_failed_write_then_unsubscribe_leaves_no_subscription(
    writer, caplog
):
    _open(writer, "c1")
    await writer.flushed()
    caplog.set_level(logging.INFO, logger="realtime.records")
    try:
        async with WriteLock(then=lambda: _add_fault("realtime_subscription")) as lock:
            writer.subscribed(connection_id="c1", topics=["orders"])
            await _in_flight(writer, "c1")
            writer.unsubscribed(connection_id="c1", topics=["orders"])
            await lock.release()
        await _write_failed(caplog)
    finally:
        await sync_to_async(_drop_fault)("realtime_subscription")
    await writer.flushed()
    assert await rows() == (["c1"], [])


async def test_a_record_that_cannot_be_written_does_not_hold_up_the_others(writer):
    gone = await _deleted_user_id()
    _open(writer, "orphan", user_id=gone)  # the foreign key fails: the user was deleted
    _open(writer, "fine")
    writer.subscribed(connection_id="fine", topics=["orders"])
    assert await writer.stored("fine") is True
    assert await rows() == (["fine"], [("fine", "orders")])


async def test_a_permanently_failing_record_is_skipped_after_max_tries_with_a_warning(
    writer, caplog, monkeypatch
):
    monkeypatch.setattr(RecordWriter, "retry_secs", 0.01)
    monkeypatch.setattr(RecordWriter, "max_tries", 3)
    caplog.set_level(logging.INFO, logger="realtime.records")
    gone = await _deleted_user_id()
    _open(writer, "orphan", user_id=gone)
    assert await writer.stored("orphan") is False  # released as skipped, not timed out
    assert writer.failures == 3 and writer.skipped == 1 and writer.late == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "Skipped the record of connection orphan after 3 failed writes" in warnings[0].message
    assert "IntegrityError" in warnings[0].message
    # The writer goes on, and so does the skipped connection's next change.
    _open(writer, "next")
    writer.closed(connection_id="orphan")
    await writer.flushed()
    assert await rows() == (["next"], [])


# --- against a real server ------------------------------------------------------------------------

HEARTBEAT = 0.5  # seconds


@pytest.fixture(scope="module")
def records_live(django_db_setup):
    """A server heartbeating every 0.5 s that keeps loaded users a minute."""
    with live_server(
        realtime={"HEARTBEAT_INTERVAL_SECS": HEARTBEAT, "USER_CACHE_SECS": 60}
    ) as server:
        yield server


async def started(server) -> None:
    """The server's hub is started (its first connection registers the process)."""
    ws = await connect(server.ws_url)
    assert await eventually(lambda: connection_status()["activeConnections"] >= 1)
    await ws.close()
    assert await eventually(lambda: not Connection.objects.exists())


class WriteLock:
    """Holds the connection tables' write lock in a thread of its own until released, so the
    server's record writes wait; `then` runs inside the locking transaction before it ends."""

    def __init__(self, then: Callable[[], None] = lambda: None) -> None:
        self.then = then
        self._held = threading.Event()
        self._release = threading.Event()
        self._thread = threading.Thread(target=self._hold, daemon=True)
        self.error: BaseException | None = None

    def _hold(self) -> None:
        try:
            with transaction.atomic():
                if connection.vendor == "postgresql":
                    with connection.cursor() as cursor:
                        cursor.execute(
                            "LOCK TABLE realtime_connection, realtime_subscription "
                            "IN SHARE ROW EXCLUSIVE MODE"
                        )
                else:  # SQLite's IMMEDIATE transaction took the database's write lock at BEGIN
                    ServerProcess.objects.filter(pk="").update(pid=0)
                self._held.set()
                self._release.wait(30)
                self.then()
        except BaseException as exc:
            self.error = exc
        finally:
            self._held.set()
            connection.close()

    async def __aenter__(self) -> WriteLock:
        self._thread.start()
        await asyncio.to_thread(self._held.wait, 10)
        assert self.error is None, self.error
        return self

    async def release(self) -> None:
        self._release.set()
        await asyncio.to_thread(self._thread.join, 30)
        assert self.error is None, self.error

    async def __aexit__(self, *exc_info: object) -> None:
        if self._thread.is_alive():
            await self.release()


@pytest.mark.e2e
async def test_a_user_deleted_while_their_record_is_queued_does_not_stall_other_connects(
    records_live, trader, other_trader
):
    alice_token = await sync_to_async(access_token_for)(trader)
    bob_token = await sync_to_async(access_token_for)(other_trader)
    await started(records_live)
    # Alice is authenticated, and her record queued behind the lock; then she is deleted.
    async with WriteLock(then=trader.delete) as lock:
        alice = await connect(records_live.ws_url, token=alice_token)
        await lock.release()
    bob = await connect(records_live.ws_url, token=bob_token)
    reply = await receive_type(bob, "AUTHENTICATION")
    assert reply["payload"]["userId"] == other_trader.pk
    await subscribe(bob, "market:AAPL")
    status = await sync_to_async(connection_status)()
    assert status["activeConnections"] == 1 and status["usersOnline"] == 1
    assert status["topicSubscriptions"]["market:AAPL"] == 1
    await alice.close()
    await bob.close()


@pytest.mark.e2e
async def test_connects_go_on_while_the_database_cannot_take_their_records(records_live, trader):
    token = await sync_to_async(access_token_for)(trader)
    first = await connect(records_live.ws_url, token=token)  # loads the user, which is kept
    await receive_type(first, "AUTHENTICATION")
    async with WriteLock() as lock:
        second = await connect(records_live.ws_url, token=token)
        # stored() gives up after RecordWriter.stored_wait_secs; the lock is still held.
        reply = await receive_type(second, "AUTHENTICATION", timeout=20)
        assert not await sync_to_async(
            Connection.objects.filter(pk=reply["payload"]["connectionId"]).exists
        )()
        await lock.release()
    # Once the database takes writes again, the record is written.
    assert await eventually(Connection.objects.filter(pk=reply["payload"]["connectionId"]).exists)
    await first.close()
    await second.close()


@pytest.mark.e2e
async def test_a_process_row_deleted_under_a_live_server_is_restored_with_its_connections(
    records_live, trader, other_trader
):
    alice_token = await sync_to_async(access_token_for)(trader)
    bob_token = await sync_to_async(access_token_for)(other_trader)
    alice = await connect(records_live.ws_url, token=alice_token)
    alice_id = (await receive_type(alice, "AUTHENTICATION"))["payload"]["connectionId"]
    await subscribe(alice, "market:AAPL", f"user:{trader.pk}:orders")
    process = await sync_to_async(lambda: Connection.objects.get(pk=alice_id).server)()
    assert process.channel_name

    await sync_to_async(ServerProcess.objects.filter(pk=process.pk).delete)()  # cascades
    # A record written before the next heartbeat finds the row missing.
    bob = await connect(records_live.ws_url, token=bob_token)
    await receive_type(bob, "AUTHENTICATION")

    def restored() -> bool:
        return (
            ServerProcess.objects.filter(pk=process.pk, channel_name=process.channel_name).exists()
            and sorted(
                Subscription.objects.filter(connection_id=alice_id).values_list("topic", flat=True)
            )
            == sorted(["market:AAPL", f"user:{trader.pk}:orders"])
            and Connection.objects.filter(server_id=process.pk).count() == 2
        )

    assert await eventually(restored, timeout=10)
    record = await sync_to_async(Connection.objects.get)(pk=alice_id)
    assert record.user_id == trader.pk and record.authenticated_at is not None
    assert record.client_address.startswith("127.0.0.1:")
    await alice.close()
    await bob.close()
