"""Abuse limits (CONTRACT section 13) through real sockets: connections per user across processes,
handshakes per IP, failed authentications and IP blocks, and the trusted-proxy rule."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid

import httpx
import pytest
import websockets
from asgiref.sync import sync_to_async
from websockets.exceptions import InvalidStatus

from realtime.clientip import client_ip
from realtime.limits import MemoryLimits, Refusal
from realtime.models import IPBlock, SecurityEvent
from tests.conftest import access_token_for
from tests.live import live_server
from tests.wsclient import closed_with, connect, receive_type, request

e2e = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


async def handshake_status(url: str, **kwargs) -> int:
    """101 when the handshake is accepted (the connection is closed again), else the HTTP status."""
    try:
        ws = await websockets.connect(url, open_timeout=5, **kwargs)
    except InvalidStatus as refused:
        return refused.response.status_code
    await ws.close()
    return 101


def private_redis(redis_target) -> dict[str, str]:
    """The run's Redis under a prefix of this test's own: its counters and blocks touch no other
    test's servers (removed with the run's keys: it starts with the run's prefix)."""
    prefix = f"{redis_target['prefix']}-{uuid.uuid4().hex[:6]}"
    return {"url": redis_target["url"], "prefix": prefix}


def wait_for_fresh_minute() -> None:
    """Handshakes are counted per minute (with the last minute weighed in): start a counting
    test early in a minute, so that it does not straddle two."""
    second = time.time() % 60
    if second > 50:
        time.sleep(60.5 - second)


# --- unit: the client IP rule and the in-process store -------------------------------------------


@pytest.mark.parametrize(
    ("trusted", "peer", "header", "expected"),
    [
        ([], "127.0.0.1", "203.0.113.7", "127.0.0.1"),
        (["127.0.0.1"], "127.0.0.1", "203.0.113.7, 10.0.0.1", "203.0.113.7"),
        (["10.0.0.0/8"], "10.1.2.3", "203.0.113.7:4711", "203.0.113.7"),
        (["10.0.0.0/8"], "10.1.2.3", "[2001:db8::1]:443", "2001:db8::1"),
        (["10.0.0.0/8"], "192.0.2.1", "203.0.113.7", "192.0.2.1"),
        (["127.0.0.1"], "127.0.0.1", "not-an-address", "127.0.0.1"),
        (["127.0.0.1"], "127.0.0.1", None, "127.0.0.1"),
    ],
)
def test_client_ip_believes_x_forwarded_for_only_from_a_trusted_proxy(
    settings, trusted, peer, header, expected
):
    settings.REALTIME = {"TRUSTED_PROXIES": trusted}
    assert client_ip(peer, header) == expected


async def test_memory_store_blocks_after_one_failure_too_many_and_the_block_expires():
    store = MemoryLimits()
    now = [1000.0]
    store.clock = lambda: now[0]
    for expected in (1, 2, 3):
        assert await store.failure("198.51.100.1", 3, 300, 60) == (expected, None)
    count, block = await store.failure("198.51.100.1", 3, 300, 60)
    assert count == 4 and block is not None and block.until == 1060.0
    assert await store.handshake("198.51.100.1", 0) is Refusal.BLOCKED
    assert await store.handshake("198.51.100.2", 0) is None
    now[0] = 1061.0
    assert await store.handshake("198.51.100.1", 0) is None


async def test_memory_store_counts_failures_within_the_window_only():
    store = MemoryLimits()
    now = [0.0]
    store.clock = lambda: now[0]
    for _ in range(3):
        await store.failure("198.51.100.1", 3, 300, 60)
    now[0] = 301.0
    assert await store.failure("198.51.100.1", 3, 300, 60) == (1, None)


async def test_memory_store_weighs_the_last_minute_into_the_handshake_rate():
    store = MemoryLimits()
    now = [60.0 * 100]
    store.clock = lambda: now[0]
    results = [await store.handshake("198.51.100.1", 4) for _ in range(5)]
    assert results == [None, None, None, None, Refusal.RATE]
    now[0] += 60 + 15  # a quarter into the next minute: 3 of last minute's 4 still count
    assert await store.handshake("198.51.100.1", 4) is None
    assert await store.handshake("198.51.100.1", 4) is Refusal.RATE


# --- connections per user ---------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_the_21st_connection_of_a_user_is_closed_with_4409_across_two_processes(
    redis_target, trader, other_trader
):
    redis = private_redis(redis_target)
    limits = {"MAX_CONNECTIONS_PER_USER": 20}
    token = await sync_to_async(access_token_for)(trader)
    with (
        live_server(realtime=limits, redis=redis) as a,
        live_server(realtime=limits, redis=redis) as b,
    ):
        opened = []
        for index in range(20):
            ws = await connect((a if index % 2 else b).ws_url, token=token)
            await receive_type(ws, "AUTHENTICATION")
            opened.append(ws)
        extra = await connect(a.ws_url, token=token)  # the handshake is accepted, then closed
        assert await closed_with(extra) == 4409
        in_band = await connect(b.ws_url)  # authenticating in-band counts the same
        await in_band.send(json.dumps({"type": "AUTHENTICATION", "payload": {"token": token}}))
        assert await closed_with(in_band) == 4409
        # Another user is not affected, and a place given back is free again.
        other = await connect(a.ws_url, token=await sync_to_async(access_token_for)(other_trader))
        await receive_type(other, "AUTHENTICATION")
        await opened.pop().close()

        async def admitted() -> bool:
            ws = await connect(b.ws_url, token=token)
            try:
                message = json.loads(await asyncio.wait_for(ws.recv(), 5))
            except websockets.ConnectionClosed:
                return False
            opened.append(ws)
            return message["type"] == "AUTHENTICATION"

        deadline = time.monotonic() + 10
        while not await admitted():
            assert time.monotonic() < deadline, "the released place was never given back"
            await asyncio.sleep(0.1)
        for ws in [*opened, other]:
            await ws.close()
    events = await sync_to_async(_events)("connection_limit")
    assert sum(e.count for e in events) >= 2
    assert {e.username for e in events} == {trader.username}


def _events(kind: str) -> list[SecurityEvent]:
    return list(SecurityEvent.objects.filter(kind=kind))


# --- handshakes per IP ------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_handshakes_over_the_per_ip_rate_are_refused_with_403():
    await sync_to_async(wait_for_fresh_minute)()
    with live_server(realtime={"HANDSHAKES_PER_IP_PER_MIN": 5}) as server:
        statuses = [await handshake_status(server.ws_url) for _ in range(7)]
        assert statuses == [101] * 5 + [403, 403]
        # HTTP is another door, with its own limits: the API still answers this address.
        async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as client:
            assert (await client.get("/api/schema/")).status_code == 200
    events = await sync_to_async(_events)("handshake_rate_limited")
    assert [(e.ip, e.count) for e in events] == [("127.0.0.1", 2)]


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_x_forwarded_for_from_an_untrusted_peer_is_ignored():
    await sync_to_async(wait_for_fresh_minute)()
    with live_server(realtime={"HANDSHAKES_PER_IP_PER_MIN": 3}) as server:
        statuses = [
            await handshake_status(
                server.ws_url, additional_headers={"X-Forwarded-For": f"203.0.113.{n}"}
            )
            for n in range(5)
        ]
    assert statuses == [101, 101, 101, 403, 403]  # all counted as 127.0.0.1
    events = await sync_to_async(_events)("handshake_rate_limited")
    assert {e.ip for e in events} == {"127.0.0.1"}


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_x_forwarded_for_from_a_trusted_proxy_names_the_client():
    await sync_to_async(wait_for_fresh_minute)()
    limits = {"HANDSHAKES_PER_IP_PER_MIN": 2, "TRUSTED_PROXIES": ["127.0.0.0/8"]}
    with live_server(realtime=limits) as server:

        async def from_client(address: str) -> int:
            headers = {"X-Forwarded-For": f"{address}, 127.0.0.1"}
            return await handshake_status(server.ws_url, additional_headers=headers)

        assert [await from_client("203.0.113.1") for _ in range(3)] == [101, 101, 403]
        assert [await from_client("203.0.113.2") for _ in range(2)] == [101, 101]
    events = await sync_to_async(_events)("handshake_rate_limited")
    assert [(e.ip, e.count) for e in events] == [("203.0.113.1", 1)]


# --- failed authentications and blocks ------------------------------------------------------------


BLOCKING = {
    "AUTH_FAILURES_PER_IP": 3,
    "AUTH_FAILURE_WINDOW_SECS": 60,
    "IP_BLOCK_SECS": 120,
    "TRUSTED_PROXIES": ["127.0.0.1"],
}


def as_client(address: str) -> dict[str, dict[str, str]]:
    return {"additional_headers": {"X-Forwarded-For": address}}


@pytest.mark.redis
@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_an_ip_over_the_auth_failure_limit_is_blocked_on_every_process_until_unblocked(
    redis_target, trader
):
    attacker, bystander = "203.0.113.66", "203.0.113.77"
    good = await sync_to_async(access_token_for)(trader)
    redis = private_redis(redis_target)
    with (
        live_server(realtime=BLOCKING, redis=redis) as a,
        live_server(realtime=BLOCKING, redis=redis) as b,
    ):
        # Three bad tokens at A's handshake, one in-band at B: the fourth failure blocks.
        for _ in range(3):
            assert await handshake_status(f"{a.ws_url}?token=forged", **as_client(attacker)) == 403
        ws = await connect(b.ws_url, **as_client(attacker))
        reply = await request(ws, "AUTHENTICATION", {"token": "forged"})
        assert reply["payload"]["code"] == "unauthenticated"
        await ws.close()
        # Now even a good token is refused from that address, on both processes.
        for server in (a, b):
            url = f"{server.ws_url}?token={good}"
            assert await handshake_status(url, **as_client(attacker)) == 403
            assert await handshake_status(url, **as_client(bystander)) == 101
        # The password login refuses it too, saying when to come back.
        async with httpx.AsyncClient(base_url=b.http_url, timeout=10) as client:
            login = await client.post(
                "/api/auth/token/",
                json={"username": trader.username, "password": "whatever"},
                headers={"X-Forwarded-For": attacker},
            )
        assert login.status_code == 429
        assert 0 < int(login.headers["Retry-After"]) <= 120

        listed = json.loads(a.manage("ws_blocks", "--json").stdout)
        assert [row["ip"] for row in listed] == [attacker]
        assert listed[0]["failures"] == 4

        unblocked = a.manage("ws_blocks", "unblock", attacker)
        assert unblocked.returncode == 0, unblocked.stderr
        assert attacker in unblocked.stdout
        for server in (a, b):
            url = f"{server.ws_url}?token={good}"
            assert await handshake_status(url, **as_client(attacker)) == 101
        assert json.loads(a.manage("ws_blocks", "--json").stdout) == []

    block = await sync_to_async(IPBlock.objects.get)(ip=attacker)
    assert block.lifted_by == "manage.py ws_blocks" and block.failures == 4
    kinds = await sync_to_async(_kinds_for)(attacker)
    assert kinds["auth_failed"] == 4
    assert kinds["ip_blocked"] >= 1 + 2 + 1  # the block, two handshakes, the login


def _kinds_for(ip: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in SecurityEvent.objects.filter(ip=ip):
        counts[event.kind] = counts.get(event.kind, 0) + event.count
    return counts


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_failed_password_logins_count_toward_the_block(trader):
    limits = {**BLOCKING, "LOGINS_PER_MIN": 100}
    attacker = "198.51.100.23"
    with live_server(realtime=limits) as server:
        async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as client:
            codes = [
                (
                    await client.post(
                        "/api/auth/token/",
                        json={"username": trader.username, "password": f"guess-{n}"},
                        headers={"X-Forwarded-For": attacker},
                    )
                ).status_code
                for n in range(5)
            ]
        assert codes == [401, 401, 401, 401, 429]
        assert await handshake_status(server.ws_url, **as_client(attacker)) == 403
    kinds = await sync_to_async(_kinds_for)(attacker)
    assert kinds["login_failed"] == 4 and kinds["ip_blocked"] >= 2


def test_ws_blocks_unblock_needs_the_shared_store(db):
    from tests.live import run_manage, server_environment

    result = run_manage(
        "ws_blocks", "unblock", "203.0.113.1", env=server_environment(realtime={}, extra={})
    )
    assert result.returncode != 0
    assert "REDIS_URL" in result.stderr


def test_ws_blocks_lists_the_blocks_in_force(db):
    from datetime import timedelta

    from django.core.management import call_command
    from django.utils import timezone

    now = timezone.now()
    IPBlock.objects.create(ip="192.0.2.1", blocked_at=now, expires_at=now + timedelta(minutes=5))
    IPBlock.objects.create(ip="192.0.2.2", blocked_at=now, expires_at=now - timedelta(minutes=5))
    IPBlock.objects.create(
        ip="192.0.2.3", blocked_at=now, expires_at=now + timedelta(minutes=5), lifted_at=now
    )
    out = _call(call_command, "ws_blocks")
    assert "192.0.2.1" in out and "192.0.2.2" not in out and "192.0.2.3" not in out


def _call(call_command, *args) -> str:
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        call_command(*args, stdout=buffer)
    return buffer.getvalue()


@pytest.mark.redis
async def test_a_burst_of_handshakes_waits_its_turn_instead_of_taking_the_layers_pool(redis_target):
    """1,000 clients reconnecting at once each have their handshake checked in Redis, through the
    channel layer's connection pool (it raises MaxConnectionsError when every connection is
    taken). 300 checks at once on a pool of 24: every check is answered, and the layer's own
    commands issued meanwhile (a group join, a send) still find a connection."""
    from channels_redis.core import RedisChannelLayer

    from realtime.limits import MAX_CALLS_IN_FLIGHT, RedisLimits, limits_for

    assert MAX_CALLS_IN_FLIGHT < 24
    target = private_redis(redis_target)
    layer = RedisChannelLayer(
        hosts=[{"address": target["url"], "max_connections": 24}], prefix=target["prefix"]
    )
    store = limits_for(layer)
    assert isinstance(store, RedisLimits)
    channel = await layer.new_channel()
    checks = [store.handshake(f"198.51.100.{n % 250}", 1000) for n in range(300)]
    layer_work = [layer.group_add("rt.burst", channel), layer.send(channel, {"type": "x"})]
    results = await asyncio.gather(*checks, *layer_work, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == []
    assert results[:300] == [None] * 300  # under the rate: let in, by a real check
    assert (await layer.receive(channel))["type"] == "x"
    await layer.flush()
    await layer.close_pools()
