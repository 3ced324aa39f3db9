"""The market simulator: realistic ticks, through the market-data API, into every subscriber."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async

from market.simulator import Simulator, crossed_fill_price
from market.ticks import Tick
from tests.conftest import access_token_for
from tests.live import ROOT
from tests.test_delivery import open_ws, subscribe_entries, updates


def test_the_walk_has_a_spread_volume_and_stays_positive():
    simulator = Simulator({"BTC-USD": Decimal("43000"), "DOGE-USD": Decimal("0.08")}, seed=1)
    for _ in range(500):
        for tick in simulator.ticks():
            assert tick.bid < tick.last < tick.ask
            assert tick.last > 0 and tick.volume > 0
    again = Simulator({"BTC-USD": Decimal("43000"), "DOGE-USD": Decimal("0.08")}, seed=1)
    assert [t.last for t in again.ticks()] != []  # repeatable with a seed:
    first = Simulator({"X": Decimal("10")}, seed=7).ticks()[0].last
    assert first == Simulator({"X": Decimal("10")}, seed=7).ticks()[0].last


def test_a_crossed_limit_order_fills_at_its_limit_or_better():
    tick = Tick(symbol="X", last=Decimal("100"), bid=Decimal("99.9"), ask=Decimal("100.1"))
    assert crossed_fill_price("BUY", Decimal("150"), tick) == Decimal("100.1")  # at the ask
    assert crossed_fill_price("BUY", Decimal("100.1"), tick) == Decimal("100.1")
    assert crossed_fill_price("BUY", Decimal("100.05"), tick) is None  # not crossed
    assert crossed_fill_price("SELL", Decimal("50"), tick) == Decimal("99.9")  # at the bid
    assert crossed_fill_price("SELL", Decimal("99.95"), tick) is None
    last_only = Tick(symbol="X", last=Decimal("100"))  # no quote: the last price
    assert crossed_fill_price("BUY", Decimal("101"), last_only) == Decimal("100")
    assert crossed_fill_price("SELL", Decimal("99"), last_only) == Decimal("100")
    assert crossed_fill_price("SELL", Decimal("101"), last_only) is None


def simulate(server, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "manage.py", "simulate_market", "--url", server.http_url, *args],
        cwd=ROOT,
        env=server.environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_the_simulator_publishes_within_seconds_and_stops_cleanly(live, trader):
    ws = await open_ws(live, trader)
    start = (await subscribe_entries(ws, "market:SIM-A"))["positions"]["market:SIM-A"]["seq"]
    process = simulate(live, "--symbols", "SIM-A,SIM-B", "--rate", "5", "--duration", "2")
    ticks = await updates(ws, "market:SIM-A", until_seq=start + 3, timeout=10)
    assert all(t["type"] == "MARKET_DATA" for t in ticks)
    assert all(Decimal(t["payload"]["bid"]) < Decimal(t["payload"]["ask"]) for t in ticks)
    output, _ = await asyncio.to_thread(process.communicate, timeout=20)
    assert process.returncode == 0, output
    assert "Stopped:" in output and "ticks sent" in output


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_simulator_runs_until_a_signal_then_stops_cleanly(live, stop):
    """Without --duration it runs until stopped: SIGTERM (a service manager, dev.py) or SIGINT
    (Ctrl-C) ends it with exit status 0 and its "Stopped:" line, no traceback, at once: not
    after the wait for its next tick (20 s here)."""
    process = simulate(live, "--symbols", "SIM-S", "--rate", "0.05")
    assert process.stdout is not None
    started = process.stdout.readline()  # printed once the signal handlers are in place
    assert started.startswith("Simulating SIM-S"), started
    time.sleep(0.5)  # its first tick out: stopped while waiting for the next, not starting
    signalled = time.monotonic()
    process.send_signal(stop)
    output, _ = process.communicate(timeout=20)
    assert time.monotonic() - signalled < 5, "it waited for its next tick before stopping"
    assert process.returncode == 0, output
    assert "Stopped:" in output and "Traceback" not in output, output


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_the_simulator_fills_a_limit_order_the_market_crosses(live, trader):
    token = await sync_to_async(access_token_for)(trader)
    topic = f"user:{trader.pk}:orders"
    ws = await open_ws(live, trader)
    start = (await subscribe_entries(ws, topic))["positions"][topic]["seq"]
    import httpx

    async with httpx.AsyncClient(
        base_url=live.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as client:
        response = await client.post(
            "/api/orders/",
            json={"symbol": "SIMX", "side": "BUY", "orderType": "LIMIT", "quantity": "2",
                  "price": "150"},
        )  # fmt: skip
    assert response.status_code == 201, response.text
    order = response.json()  # above the market (100 for an unknown symbol): it crosses
    process = simulate(
        live, "--symbols", "SIMX", "--rate", "10", "--duration", "3", "--fill-orders",
        "--volatility", "0",
    )  # fmt: skip
    got = await updates(ws, topic, until_seq=start + 2, timeout=15)
    assert got[-1]["payload"]["id"] == order["id"]
    assert got[-1]["payload"]["event"] == "filled" and got[-1]["payload"]["status"] == "FILLED"
    # At the ask of a market standing still at 100 (4 bps wide), not at its limit of 150.
    assert Decimal(got[-1]["payload"]["averageFillPrice"]) == Decimal("100.02")
    await asyncio.to_thread(process.communicate, timeout=20)


def test_a_bad_option_is_refused_with_a_reason(db):
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="--rate"):
        call_command("simulate_market", "--rate", "0")
    with pytest.raises(CommandError, match="http"):
        call_command("simulate_market", "--url", "file:///etc/passwd")
