"""`GET /metrics` (CONTRACT section 13): Prometheus text that moves with real traffic, for staff
and METRICS_TOKEN only, summed over a host's processes in multiprocess mode."""

from __future__ import annotations

import re

import httpx
import pytest
from asgiref.sync import sync_to_async

from realtime import metrics
from tests.conftest import access_token_for
from tests.live import eventually, live_server
from tests.test_realtime_limits import handshake_status
from tests.wsclient import closed_with, connect, receive_type, subscribe

METRICS_TOKEN = "scrape-me-9f2c"


def scrape(server, token: str = METRICS_TOKEN) -> dict[str, float]:
    response = httpx.get(
        f"{server.http_url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def parse(text: str) -> dict[str, float]:
    """{'name{labels}': value} of every sample (labels as written, sorted as Prometheus does)."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def value(samples: dict[str, float], name: str, **labels: str) -> float:
    wanted = set(f'{k}="{v}"' for k, v in labels.items())
    total = 0.0
    for key, number in samples.items():
        match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?", key)
        if match is None or match.group(1) != name:
            continue
        present = set(re.findall(r'\w+="[^"]*"', match.group(2) or ""))
        if wanted <= present:
            total += number
    return total


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_metrics_move_with_real_traffic(trader):
    with live_server(env={"METRICS_TOKEN": METRICS_TOKEN}) as server:
        before = await sync_to_async(scrape)(server)
        assert value(before, "tradingrt_ws_connections") == 0
        token = await sync_to_async(access_token_for)(trader)
        ws = await connect(server.ws_url, token=token)
        await receive_type(ws, "AUTHENTICATION")

        await subscribe(ws, f"user:{trader.pk}:orders", "orders")  # the second is forbidden

        async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as client:
            placed = await client.post(
                "/api/orders/",
                json={"symbol": "AAPL", "side": "BUY", "orderType": "MARKET", "quantity": "1"},
                headers={"Authorization": f"Bearer {token}"},
            )
        assert placed.status_code == 201, placed.text
        await receive_type(ws, "ORDER_UPDATE")
        assert await handshake_status(f"{server.ws_url}?token=forged") == 403

        during = await sync_to_async(scrape)(server)
        assert value(during, "tradingrt_ws_connections") == 1
        assert value(during, "tradingrt_ws_messages_sent_total", type="ORDER_UPDATE") == 1
        assert value(during, "tradingrt_ws_messages_sent_total", type="AUTHENTICATION") == 1
        assert value(during, "tradingrt_ws_messages_sent_total", type="SUBSCRIPTION") == 1
        assert value(during, "tradingrt_publish_to_delivery_seconds_count") == 1
        assert value(during, "tradingrt_ws_security_events_total", kind="auth_failed") == 1
        assert (
            value(during, "tradingrt_ws_security_events_total", kind="forbidden_subscription") == 1
        )

        await ws.close()
        assert await closed_with(ws) in (1000, None)

        def closed():
            samples = scrape(server)
            return samples if value(samples, "tradingrt_ws_connections") == 0 else None

        after = await eventually(closed)
        assert after, "the connection never left the gauge"
        assert value(after, "tradingrt_ws_closes_total", code="1000") == 1
    for key in after:
        assert "127.0.0.1" not in key and trader.username not in key and "user:" not in key


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_metrics_answer_staff_and_the_metrics_token_only(trader, staff):
    with live_server(env={"METRICS_TOKEN": METRICS_TOKEN}) as server:
        async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as client:
            assert (await client.get("/metrics")).status_code == 401
            wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            trader_token = await sync_to_async(access_token_for)(trader)
            as_trader = {"Authorization": f"Bearer {trader_token}"}
            assert (await client.get("/metrics", headers=as_trader)).status_code == 401
            staff_token = await sync_to_async(access_token_for)(staff)
            as_staff = {"Authorization": f"Bearer {staff_token}"}
            assert (await client.get("/metrics", headers=as_staff)).status_code == 200
            assert (await client.post("/metrics", headers=as_staff)).status_code == 405


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_multiprocess_mode_reports_every_process_of_the_host(tmp_path, trader, other_trader):
    env = {"METRICS_TOKEN": METRICS_TOKEN, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    with live_server(env=env) as a, live_server(env=env) as b:
        sockets = []
        for server, user in ((a, trader), (b, other_trader), (b, trader)):
            ws = await connect(server.ws_url, token=await sync_to_async(access_token_for)(user))
            await receive_type(ws, "AUTHENTICATION")
            sockets.append(ws)

        def counted(server, connections, authentications=None):
            def check():
                samples = scrape(server)
                sent = value(samples, "tradingrt_ws_messages_sent_total", type="AUTHENTICATION")
                return value(
                    samples, "tradingrt_ws_connections"
                ) == connections and authentications in (None, sent)

            return check

        for server in (a, b):  # either process reports the host: 1 on A + 2 on B
            assert await eventually(counted(server, 3, 3)), "a process missed the others"
        b.kill()  # its connections are gone with it, and a scrape of A knows
        assert await eventually(counted(a, 1))
        for ws in sockets:
            await ws.close()


def test_close_codes_outside_the_known_set_are_reported_as_other():
    before = metrics.CLOSES.labels("other")._value.get()
    metrics.CONNECTIONS.inc(2)
    metrics.connection_closed(3999)
    metrics.connection_closed(4409)
    assert metrics.CLOSES.labels("other")._value.get() == before + 1
    assert b'code="4409"' in metrics.render()


def test_the_message_type_is_read_from_the_envelope():
    metrics.sync()
    text = '{"type":"MARKET_DATA","topic":"market:AAPL","seq":1,"epoch":"e","payload":{}}'
    before = metrics.MESSAGES_SENT.labels("MARKET_DATA")._value.get()
    for _ in range(3):
        metrics.message_sent(text)
    metrics.message_sent('{"type":"made-up"}')
    metrics.sync()
    assert metrics.MESSAGES_SENT.labels("MARKET_DATA")._value.get() == before + 3
    assert b'type="made-up"' not in metrics.render()
