"""Each HTTP request's thread is lent from a pool (tradingrt.http), not started for it: threads
and their database connections outlive a request, one request's synchronous work still runs
on one thread of its own, and no request ever waits behind another's leftover work."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.db import connection

from tests.conftest import access_token_for
from tests.live import live_server
from tests.rest import api
from tradingrt.http import IDLE_REQUEST_THREADS, PooledASGIHandler, RequestThreads


def _ident(executor) -> int:
    return executor.submit(threading.get_ident).result(5)


def _wait_idle(threads: RequestThreads, count: int) -> None:
    deadline = time.monotonic() + 5
    while threads.idle() != count:
        assert time.monotonic() < deadline, f"{threads.idle()} idle, not {count}"
        time.sleep(0.01)


def test_a_thread_given_back_is_lent_again():
    threads = RequestThreads(keep=4)
    first = threads.lend()
    ident = _ident(first)
    threads.give_back(first)
    _wait_idle(threads, 1)
    again = threads.lend()
    assert again is first and _ident(again) == ident
    assert threads.started == 1


def test_a_thread_still_running_its_requests_work_is_not_lent_until_that_work_ends():
    """A client that disconnects cancels its request's task, but not the synchronous call it
    was running: that thread must not serve another request before the call returns."""
    threads = RequestThreads(keep=4)
    busy = threads.lend()
    release = threading.Event()
    leftover = busy.submit(release.wait, 10)
    threads.give_back(busy)
    assert threads.idle() == 0
    other = threads.lend()
    assert other is not busy and threads.started == 2
    release.set()
    leftover.result(5)
    _wait_idle(threads, 1)
    assert threads.lend() is busy


def test_past_the_idle_bound_threads_given_back_end():
    threads = RequestThreads(keep=2)
    lent = [threads.lend() for _ in range(5)]
    idents = {_ident(executor) for executor in lent}
    for executor in lent:
        threads.give_back(executor)
    deadline = time.monotonic() + 5
    while True:  # two are kept, the other three threads end
        alive = {thread.ident for thread in threading.enumerate()} & idents
        if len(alive) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert len(alive) == 2 and threads.idle() == 2
    assert {_ident(threads.lend()), _ident(threads.lend())} == alive


async def test_one_requests_synchronous_work_runs_on_one_thread_and_concurrent_ones_apart():
    """What Django's ThreadSensitiveContext guarantees, kept: a request's sync parts share a
    thread (its database connection and transaction), two requests in flight never do."""
    seen: dict[str, tuple[int, int]] = {}

    class Probe(PooledASGIHandler):
        async def handle(self, scope, receive, send):
            first = await sync_to_async(threading.get_ident)()
            await asyncio.sleep(0.05)  # the other request is in flight meanwhile
            seen[scope["path"]] = (first, await sync_to_async(threading.get_ident)())

    handler = Probe(RequestThreads(keep=4))
    await asyncio.gather(*(handler({"type": "http", "path": p}, None, None) for p in "ab"))
    (a1, a2), (b1, b2) = seen["a"], seen["b"]
    assert a1 == a2 and b1 == b2 and a1 != b1
    assert threading.get_ident() not in (a1, b1)
    await asyncio.sleep(0.05)
    await handler({"type": "http", "path": "c"}, None, None)  # a later request reuses one
    assert seen["c"][0] in (a1, b1)


def _sqlite_connections(pid: int, database: Path) -> int:
    """File descriptors of `pid` open on the SQLite database file itself."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if Path(os.readlink(fd)) == database:
                count += 1
        except OSError:
            continue
    return count


def _threads_of(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_a_real_server_serves_many_requests_on_a_few_threads_and_connections(trader):
    """300 REST requests that read the database, 8 at a time, on a real Daphne: a thread a
    request made each open its own SQLite connection, left to the garbage collector after the
    thread ended (the soak's "+8 SQLite connections"); lent threads keep theirs."""
    if connection.vendor != "sqlite":
        pytest.skip("counts SQLite connections by their file descriptors; this run is not SQLite")
    database = Path(connection.settings_dict["NAME"]).resolve()
    token = await sync_to_async(access_token_for)(trader)
    with live_server() as server:
        async with api(server, token) as client:
            assert (await client.get("/api/orders/")).status_code == 200
            before = _sqlite_connections(server.pid, database)

            async def eight_at_a_time(n: int) -> None:
                for _ in range(n):
                    assert (await client.get("/api/orders/")).status_code == 200

            await asyncio.gather(*(eight_at_a_time(300 // 8) for _ in range(8)))
            after = _sqlite_connections(server.pid, database)
            threads = _threads_of(server.pid)
    # A thread a request left 56 connections open here (until a full collection); lent threads
    # keep one each, at most the pool's idle bound plus what runs at once.
    assert after - before <= IDLE_REQUEST_THREADS, (before, after)
    assert threads <= IDLE_REQUEST_THREADS + 8 + 12, threads  # + the server's own threads
