"""Connection records written behind: batching, coalescing, and recovery (realtime.records)."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from realtime import connections
from realtime.auth import authenticate_token_async, user_cache
from realtime.models import Connection, ServerProcess, Subscription
from realtime.records import RecordWriter
from tests.conftest import access_token_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def writer():
    server = await sync_to_async(connections.server_process_register)()
    records = RecordWriter(server.pk)
    records.start()
    yield records
    await records.stop()


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
    await writer.stored()
    connection_ids, subscriptions = await rows()
    assert connection_ids == [f"c{n:03}" for n in range(500)]
    assert len(subscriptions) == 1000
    assert writer.batches == 1


async def test_a_connection_closed_before_it_was_written_is_never_written(writer):
    _open(writer, "fleeting")
    writer.subscribed(connection_id="fleeting", topics=["orders"])
    writer.closed(connection_id="fleeting")
    _open(writer, "stays")
    await writer.stored()
    assert await rows() == (["stays"], [])


async def test_subscribe_then_unsubscribe_and_back_nets_out(writer):
    _open(writer, "c1")
    await writer.stored()
    writer.subscribed(connection_id="c1", topics=["a", "b"])
    writer.unsubscribed(connection_id="c1", topics=["a"])
    await writer.stored()
    assert (await rows())[1] == [("c1", "b")]
    writer.unsubscribed(connection_id="c1", topics=["b"])
    writer.subscribed(connection_id="c1", topics=["b", "c"])
    await writer.stored()
    assert (await rows())[1] == [("c1", "b"), ("c1", "c")]
    writer.closed(connection_id="c1")
    await writer.stored()
    assert await rows() == ([], [])


async def test_authentication_after_the_open_is_recorded(writer, trader):
    _open(writer, "c1")
    await writer.stored()
    writer.authenticated(connection_id="c1", user_id=trader.pk, at=timezone.now())
    await writer.stored()
    record = await sync_to_async(Connection.objects.get)(pk="c1")
    assert record.user_id == trader.pk and record.authenticated_at is not None


async def test_records_of_a_process_whose_row_vanished_restore_it(writer):
    await sync_to_async(ServerProcess.objects.all().delete)()
    _open(writer, "c1")
    await writer.stored()
    assert (await rows())[0] == ["c1"]
    assert await sync_to_async(ServerProcess.objects.filter(pk=writer.server_id).exists)()


async def test_tokens_of_one_user_load_the_user_once_until_it_is_forgotten(trader, monkeypatch):
    from realtime import auth

    user_cache.clear()
    loads = []
    real = auth._load_user_async

    async def counting(token):
        loads.append(token)
        return await real(token)

    monkeypatch.setattr(auth, "_load_user_async", counting)
    for _ in range(3):
        token = await sync_to_async(access_token_for)(trader)
        assert (await authenticate_token_async(token)).user.pk == trader.pk
    assert len(loads) == 1
    user_cache.forget([trader.pk])
    await authenticate_token_async(token)
    assert len(loads) == 2
