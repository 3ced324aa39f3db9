"""Demo users, strategies, orders, fills and positions, created through the domain services."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction

from market.services import market_mark
from market.ticks import Tick
from orders.services import order_cancel, order_create, order_fill, order_reject
from strategies.services import strategy_create, strategy_pause, strategy_start, strategy_stop

ADMIN = ("admin", "admin-demo-pass")
TRADERS = (("alice", "alice-demo-pass"), ("bob", "bob-demo-pass"))
LOGINS = (ADMIN, *TRADERS)


@dataclass(frozen=True)
class DemoData:
    """The demo users, and whether this run created the trading data (False: it existed)."""

    users: dict[str, Any]
    created: bool


def demo_data_load() -> DemoData:
    """Create the demo users if missing and, unless the traders already exist, their data."""
    user_model = get_user_model()
    with transaction.atomic():
        already_loaded = user_model.objects.filter(username__in=[n for n, _ in TRADERS]).exists()
        users = {username: _user(username, password) for username, password in LOGINS}
        if not already_loaded:
            _alice_trades(users["alice"])
            _bob_trades(users["bob"])
            prices = (("BTC-USD", "43120.5"), ("ETH-USD", "2275"), ("SOL-USD", "96.2"))
            market_mark(
                ticks=[Tick(symbol=symbol, last=Decimal(price)) for symbol, price in prices]
            )
    return DemoData(users=users, created=not already_loaded)


def _user(username: str, password: str) -> Any:
    user_model = get_user_model()
    user = user_model.objects.filter(username=username).first()
    if user is not None:
        return user
    if username == ADMIN[0]:
        return user_model.objects.create_superuser(username, f"{username}@example.com", password)
    return user_model.objects.create_user(username, f"{username}@example.com", password)


def _order(user: Any, symbol: str, side: str, order_type: str, quantity: str, **kw: Any) -> Any:
    prices: dict[str, Any] = {
        name: Decimal(kw.pop(name)) for name in ("price", "stop_price") if name in kw
    }
    return order_create(
        user=user,
        symbol=symbol,
        side=side,
        order_type=order_type,
        quantity=Decimal(quantity),
        **prices,
        **kw,
    )


def _fill(order: Any, quantity: str, price: str) -> None:
    order_fill(order=order, quantity=Decimal(quantity), price=Decimal(price))


def _alice_trades(alice: Any) -> None:
    momentum = strategy_create(
        owner=alice,
        name="BTC momentum",
        description="Buys breakouts above the 20-period high; exits on a 1.5% trailing stop.",
        parameters={"symbol": "BTC-USD", "lookback": 20, "trailingStop": "0.015"},
    )
    strategy_start(strategy=momentum)
    swing = strategy_create(
        owner=alice,
        name="ETH swing",
        description="Holds ETH through multi-day swings.",
        parameters={"symbol": "ETH-USD", "entryRsi": 30, "exitRsi": 70},
    )
    strategy_start(strategy=swing)

    entry = _order(alice, "BTC-USD", "BUY", "LIMIT", "2", price="42000", strategy=momentum)
    _fill(entry, "1", "41950")
    _fill(entry, "1", "42010")
    take_profit = _order(alice, "BTC-USD", "SELL", "LIMIT", "1", price="43500", strategy=momentum)
    _fill(take_profit, "1", "43500")
    _order(alice, "BTC-USD", "BUY", "LIMIT", "0.5", price="41000", strategy=momentum)

    _fill(_order(alice, "ETH-USD", "BUY", "MARKET", "10", strategy=swing), "10", "2250")
    stop = _order(
        alice, "ETH-USD", "SELL", "STOP_LIMIT", "5", price="2140", stop_price="2150", strategy=swing
    )
    order_cancel(order=stop)
    strategy_pause(strategy=swing)

    _fill(_order(alice, "SOL-USD", "BUY", "LIMIT", "100", price="95"), "40", "94.9")
    too_big = _order(alice, "DOGE-USD", "BUY", "LIMIT", "50000", price="0.05")
    order_reject(order=too_big, reason="Insufficient buying power.")


def _bob_trades(bob: Any) -> None:
    reversion = strategy_create(
        owner=bob,
        name="ETH mean reversion",
        description="Fades moves of more than two standard deviations from the 1h mean.",
        parameters={"symbol": "ETH-USD", "window": 60, "zScore": 2},
    )
    strategy_start(strategy=reversion)
    _fill(
        _order(bob, "ETH-USD", "SELL", "LIMIT", "8", price="2300", strategy=reversion), "8", "2300"
    )
    _fill(
        _order(bob, "ETH-USD", "BUY", "LIMIT", "3", price="2240", strategy=reversion), "3", "2240"
    )
    _fill(
        _order(bob, "ETH-USD", "BUY", "LIMIT", "2", price="2320", strategy=reversion), "2", "2320"
    )

    retired = strategy_create(
        owner=bob, name="BTC grid (retired)", parameters={"symbol": "BTC-USD", "levels": 10}
    )
    strategy_start(strategy=retired)
    strategy_stop(strategy=retired)
    strategy_create(owner=bob, name="Pairs (draft)", parameters={"pair": ["BTC-USD", "ETH-USD"]})

    _fill(_order(bob, "BTC-USD", "BUY", "MARKET", "1.5"), "1.5", "42500")
    _order(bob, "BTC-USD", "SELL", "STOP", "1.5", stop_price="40000")
