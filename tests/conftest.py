"""Shared fixtures: users, authenticated API clients and tokens."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken

from tests.factories import UserFactory


@pytest.fixture
def staff(db):
    return UserFactory(username="staff", is_staff=True)


@pytest.fixture
def trader(db):
    return UserFactory(username="alice")


@pytest.fixture
def other_trader(db):
    return UserFactory(username="bob")


def access_token_for(user) -> str:
    return str(AccessToken.for_user(user))


@pytest.fixture
def api_client():
    return APIClient()


def _client_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_for(user)}")
    return client


@pytest.fixture
def staff_client(staff):
    return _client_for(staff)


@pytest.fixture
def trader_client(trader):
    return _client_for(trader)


@pytest.fixture
def other_client(other_trader):
    return _client_for(other_trader)


# --- Real-time fixtures -------------------------------------------------------------------


@pytest.fixture(scope="session")
def live(django_db_setup):
    """A real Daphne serving the whole project, on the test database, for the session.

    Tests that use it must commit their data: mark them django_db(transaction=True).
    """
    from tests.live import live_server

    with live_server(
        realtime={
            "AUTH_TIMEOUT_SECS": 1.5,
            "RATE_LIMIT_PER_SEC": 5,
            "RATE_LIMIT_BURST": 10,
            "RATE_LIMIT_MAX_STRIKES": 3,
            "MAX_TOPICS_PER_CONNECTION": 5,
        }
    ) as server:
        yield server


@pytest.fixture
async def bots():
    """Start clients of live servers, as a bot would (tradingrt_client): `await bots(server,
    user_or_token, *topics, **options)` gives its Events (tests.pyclient); `server` may be a list
    of servers to fail over between, and `user_or_token` None when `options` name a
    token_provider. Closed after the test.
    """
    from asgiref.sync import sync_to_async

    from tests.pyclient import Events, bot

    started: list[Events] = []

    async def start(server, who, *topics: str, snapshot: bool = False, **options) -> Events:
        token = who
        if who is not None and not isinstance(who, str):
            token = await sync_to_async(access_token_for)(who)
        url = [s.http_url for s in server] if isinstance(server, list | tuple) else server.http_url
        events = bot(url, token, **options)
        started.append(events)
        await events.start(*topics, snapshot=snapshot)
        return events

    yield start
    for events in started:
        await events.close()
    for events in started:  # the client drops duplicates: none may have been sent
        events.assert_nothing_sent_twice()


@pytest.fixture
def trader_token(trader):
    return access_token_for(trader)


@pytest.fixture
def other_token(other_trader):
    return access_token_for(other_trader)


@pytest.fixture
def staff_token(staff):
    return access_token_for(staff)


@pytest.fixture
def published(monkeypatch):
    """The ticks each accepted market-data post published (realtime.market_data), in order;
    nothing is really published."""
    from realtime.market_data import market_data

    batches: list[list] = []

    async def apublish(ticks):
        batches.append(ticks)

    monkeypatch.setattr(market_data, "apublish", apublish)
    return batches


# --- Domain fixtures (orders, positions, strategies) --------------------------------------


@pytest.fixture
def gateway(db):
    """The execution gateway: no staff status, only the orders.add_fill permission."""
    from django.contrib.auth.models import Permission

    user = UserFactory(username="gateway")
    user.user_permissions.add(Permission.objects.get(codename="add_fill"))
    return user


@pytest.fixture
def gateway_client(gateway):
    return _client_for(gateway)


# --- Real services: Redis and PostgreSQL ------------------------------------------------------


def services_required() -> bool:
    """In CI the service-backed tests must run: a missing service fails instead of skipping."""
    return bool(os.environ.get("TRADINGRT_REQUIRE_SERVICES") or os.environ.get("CI"))


def _unavailable(message: str):
    if services_required():
        pytest.fail(message + " (TRADINGRT_REQUIRE_SERVICES/CI is set, so this fails)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_target():
    """A real Redis and a key prefix private to this test run; its keys are removed after."""
    import redis

    url = os.environ.get("TEST_REDIS_URL")
    if not url:
        _unavailable("needs a real Redis: set TEST_REDIS_URL=redis://127.0.0.1:6379/0 to run")
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.RedisError as exc:
        _unavailable(f"Redis at {url} does not answer ({exc}); start it or unset TEST_REDIS_URL")
    prefix = f"tradingrt-test-{uuid.uuid4().hex[:12]}"
    yield {"url": url, "prefix": prefix}
    # Only what this run created: every key under its own prefix.
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
def redis_layer(redis_target, settings):
    """This test process publishes through the same Redis channel layer as the live servers."""
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{"address": redis_target["url"], "socket_timeout": 15}],
                "prefix": redis_target["prefix"],
                "capacity": 10000,
                "expiry": 60,
                "group_expiry": 600,
            },
        }
    }
    return redis_target


CLUSTER_HEARTBEAT = 0.5


@pytest.fixture(scope="module")
def cluster(redis_target, django_db_setup):
    """Servers A and B on Redis, each heartbeating every 0.5 s and pruning the dead every second."""
    from tests.live import live_server

    realtime = {"HEARTBEAT_INTERVAL_SECS": CLUSTER_HEARTBEAT, "PRUNE_INTERVAL_SECS": 1.0}
    with (
        live_server(realtime=realtime, redis=redis_target) as a,
        live_server(realtime=realtime, redis=redis_target) as b,
    ):
        yield a, b


@pytest.fixture
def same_heartbeat(settings, redis_layer):
    """This test process publishes through the cluster's Redis and judges liveness as it does."""
    settings.REALTIME = {"HEARTBEAT_INTERVAL_SECS": CLUSTER_HEARTBEAT}


@pytest.fixture(scope="session", autouse=True)
def _close_database_pools(django_db_setup):
    """Return pooled PostgreSQL connections before the test database is dropped, and close the
    one asgiref's thread for synchronous code holds: async tests that query through
    `sync_to_async` (and the services' `database_sync_to_async`) outside a request open it, and
    nothing closes it, so PostgreSQL refused to drop the test database ("being accessed by
    other users")."""
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=30)

    for connection in connections.all(initialized_only=True):
        close_pool = getattr(connection, "close_pool", None)
        if close_pool is not None and connection.settings_dict.get("OPTIONS", {}).get("pool"):
            close_pool()


@pytest.fixture(autouse=True)
def _fresh_user_cache():
    """Each test starts with no users (nor verified tokens) cached by the authentication."""
    from realtime.auth import user_cache, verified_tokens

    user_cache.clear()
    verified_tokens.clear()
    yield
    user_cache.clear()
    verified_tokens.clear()


@pytest.fixture(autouse=True)
def _fresh_limits_and_events():
    """Each test starts with no limits counted, no throttles and no security events pending.

    The events are written by the test's own `flush()`, in its transaction (the background
    writer would write them from another thread, after the test).
    """
    from django.core.cache import cache

    from realtime.limits import memory_limits
    from realtime.security import recorder

    recorder.background = False
    recorder.clear()
    memory_limits().reset()
    cache.clear()
    yield
    recorder.clear()
    memory_limits().reset()


@pytest.fixture(autouse=True)
def _fresh_history():
    """Each test starts with an empty in-process topic history, in a new epoch."""
    from realtime.history import memory_history

    memory_history().reset()


def _retry_flush_on_deadlock() -> None:
    """PostgreSQL: a test's closing TRUNCATE can deadlock with a live server's own writes
    (heartbeats, connection records); Postgres aborts one side, so try the flush again."""
    import time

    from django.test import TransactionTestCase

    original = TransactionTestCase._fixture_teardown

    def _fixture_teardown(self):  # type: ignore[no-untyped-def]
        for attempt in range(10):
            try:
                return original(self)
            except Exception as exc:
                chain, cause = [], exc
                while cause is not None:
                    chain.append(str(cause))
                    cause = cause.__cause__ or cause.__context__
                if attempt == 9 or not any("deadlock detected" in text for text in chain):
                    raise
                time.sleep(0.1 * (attempt + 1))
        return None

    TransactionTestCase._fixture_teardown = _fixture_teardown


_retry_flush_on_deadlock()


@pytest.fixture
def thread_handoffs(monkeypatch):
    """A function returning how many times the running loop has handed work to a thread so far
    (`run_in_executor`: every sync_to_async, database_sync_to_async and executor call)."""
    count = 0
    patched = False

    def handoffs() -> int:
        nonlocal patched
        if not patched:
            loop = asyncio.get_running_loop()
            run_in_executor = loop.run_in_executor

            def counted(*args, **kwargs):
                nonlocal count
                count += 1
                return run_in_executor(*args, **kwargs)

            monkeypatch.setattr(loop, "run_in_executor", counted)
            patched = True
        return count

    return handoffs
