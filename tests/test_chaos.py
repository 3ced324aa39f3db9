"""Faults caused, not reasoned about: a Redis killed and restarted under two live servers.

Each test starts its own Redis on a free port (never the shared one), kills it with SIGKILL and
starts it again on the same port, while real Daphne processes serve real clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from asgiref.sync import sync_to_async

from orders.models import Order
from tests.conftest import _unavailable, access_token_for
from tests.live import free_port, live_server
from tests.rest import api
from tests.wsclient import connect, receive_type, subscribe

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.django_db(transaction=True)]


class PrivateRedis:
    """A redis-server of this test's own, on a free port, that keeps nothing on disk unless
    given a `data_dir`: there a SAVE writes what its next start loads (a restart that keeps the
    data but not the run id)."""

    def __init__(self, data_dir: Path | None = None) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            _unavailable("needs redis-server on PATH to start a private Redis")
        storage = [] if self.data_dir is None else ["--dir", str(self.data_dir)]
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--loglevel", "warning", *storage],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        import redis

        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the private Redis did not start")
            time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    yield server
    server.kill()


def _settings(redis_url: str) -> dict[str, object]:
    return {"url": redis_url, "prefix": "tradingrt-chaos"}


async def _order(client, n: int):
    return await client.post(
        "/api/orders/",
        json={"symbol": "AAPL", "side": "BUY", "orderType": "LIMIT", "quantity": "1",
              "price": str(100 + n)},
    )  # fmt: skip


async def test_a_committed_order_is_answered_201_while_redis_is_down(private_redis, trader):
    realtime = {"HEARTBEAT_INTERVAL_SECS": 0.5}
    with live_server(realtime=realtime, redis=_settings(private_redis.url)) as server:
        token = await sync_to_async(access_token_for)(trader)
        async with await connect(server.ws_url, token=token) as ws:  # the hub is up
            await receive_type(ws, "AUTHENTICATION")
        private_redis.kill()
        async with api(server, token) as client:
            responses = [await _order(client, n) for n in range(5)]
        assert [r.status_code for r in responses] == [201] * 5, [r.text for r in responses]
        assert await sync_to_async(Order.objects.filter(user=trader).count)() == 5
        log = server.log()
    assert "Publishing a committed ORDER_UPDATE" in log
    assert "__qualname__" not in log


async def test_market_data_posted_while_redis_is_down_is_refused_with_503_and_a_reason(
    private_redis, staff
):
    """A tick is not committed anywhere before it is published: if it cannot be, the feed must
    be told so it sends it again (503 with Retry-After and why), not answered 500."""
    with live_server(redis=_settings(private_redis.url)) as server:
        token = await sync_to_async(access_token_for)(staff)
        async with api(server, token) as client:
            tick = {"symbol": "AAPL", "last": "189.5"}
            assert (await client.post("/api/market-data/", json=tick)).status_code == 202
            private_redis.kill()
            refused = await client.post("/api/market-data/", json=[tick, tick])
            assert refused.status_code == 503, refused.text
            assert refused.headers.get("Retry-After", "").isdigit()
            assert "cannot be published" in refused.json()["detail"]
            private_redis.start()
            # The same port again: the server reconnects and takes ticks at once.
            answers = []
            for _ in range(50):
                answers.append((await client.post("/api/market-data/", json=tick)).status_code)
                if answers[-1] == 202:
                    break
                await asyncio.sleep(0.2)
            assert answers[-1] == 202, answers
        log = server.log()
    assert "Internal Server Error" not in log
    assert "Traceback" not in log
    assert "Market data for AAPL could not be published" in log


class Follower:
    """A client that does what a real one does: reconnect, resubscribe, retry `unavailable`."""

    def __init__(self, url: str, token: str, topic: str) -> None:
        self.url, self.token, self.topic = url, token, topic
        self.seen: set[int] = set()
        self.closes: list[int | None] = []
        self.subscribed = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with await connect(self.url, token=self.token) as ws:
                    await receive_type(ws, "AUTHENTICATION")
                    ack = await subscribe(ws, self.topic)
                    if self.topic not in ack["topics"]:
                        assert ack["rejected"] == [{"topic": self.topic, "reason": "unavailable"}]
                        await asyncio.sleep(0.2)
                        continue
                    self.subscribed.set()
                    async for raw in ws:
                        message = json.loads(raw)
                        if message["type"] == "ORDER_UPDATE":
                            self.seen.add(message["payload"]["id"])
                    self.closes.append(ws.close_code)
            except websockets.ConnectionClosed as closed:
                self.closes.append(closed.rcvd.code if closed.rcvd else None)
            except (OSError, TimeoutError, websockets.InvalidStatus):
                pass
            await asyncio.sleep(0.2)


def _flush(redis_server: PrivateRedis) -> None:
    import redis

    client = redis.Redis(port=redis_server.port)
    client.flushall()  # this test's own Redis: nothing else lives in it
    client.close()


@pytest.mark.parametrize("fault", ["down-half-a-second", "instant-restart", "flushall"])
async def test_a_redis_that_loses_its_data_is_noticed_and_updates_flow_again(
    private_redis, trader, fault
):
    realtime = {"HEARTBEAT_INTERVAL_SECS": 0.5, "LAYER_CHECK_INTERVAL_SECS": 0.25}
    redis = _settings(private_redis.url)
    with (
        live_server(realtime=realtime, redis=redis) as a,
        live_server(realtime=realtime, redis=redis) as b,
    ):
        token = await sync_to_async(access_token_for)(trader)
        topic = f"user:{trader.pk}:orders"
        followers = [Follower((a, b)[n % 2].ws_url, token, topic) for n in range(10)]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(f.run(stop)) for f in followers]
        try:
            await asyncio.wait_for(asyncio.gather(*(f.subscribed.wait() for f in followers)), 10)
            statuses: list[int] = []
            placed: list[tuple[float, int]] = []
            restarted_at = 0.0
            async with api(a, token) as via_a, api(b, token) as via_b:
                for n in range(70):
                    if fault == "down-half-a-second" and n == 15:
                        private_redis.kill()
                    if fault == "down-half-a-second" and n == 20:
                        private_redis.start()  # faster than redis-py's retries give up
                        restarted_at = time.monotonic()
                    if fault == "instant-restart" and n == 15:
                        private_redis.kill()  # no receive need fail: only the run id tells
                        private_redis.start()
                        restarted_at = time.monotonic()
                    if fault == "flushall" and n == 15:
                        _flush(private_redis)  # same server, groups gone
                        restarted_at = time.monotonic()
                    response = await _order((via_a, via_b)[n % 2], n)
                    statuses.append(response.status_code)
                    if response.status_code == 201:
                        placed.append((time.monotonic(), response.json()["id"]))
                    await asyncio.sleep(0.1)
                assert statuses == [201] * 70
                await asyncio.sleep(1.0)
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        before = [order_id for at, order_id in placed[:15]]
        settled = [order_id for at, order_id in placed if at > restarted_at + 3.0]
        assert len(settled) >= 20
        for follower in followers:
            assert set(before) <= follower.seen  # all of them, before the fault
            assert set(settled) <= follower.seen, (follower.closes, sorted(follower.seen))
            # Told, not left deaf: each was closed with 4503, the stream interrupted; and once
            # only (a stale pooled connection failing later is not a second loss).
            assert follower.closes == [4503], follower.closes
        first_back = min(
            (at for at, order_id in placed if at > restarted_at and all(
                order_id in f.seen for f in followers)),
            default=None,
        )  # fmt: skip
        assert first_back is not None and first_back - restarted_at < 3.0
