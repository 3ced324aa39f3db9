"""`manage.py demo`: consistent demo data, created once, and the connection block."""

from __future__ import annotations

from decimal import Decimal
from io import StringIO

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import CommandError, call_command

from orders.models import Fill, Order, OrderStatus
from positions.models import Position
from strategies.models import Strategy, StrategyStatus

pytestmark = pytest.mark.django_db


def run_demo(*args: str) -> str:
    out = StringIO()
    call_command("demo", *args, stdout=out)
    return out.getvalue()


def counts() -> dict[str, int]:
    models = (get_user_model(), Strategy, Order, Fill, Position)
    return {model.__name__: model.objects.count() for model in models}


def test_demo_creates_logins_that_work():
    run_demo()

    admin = authenticate(username="admin", password="admin-demo-pass")
    assert admin is not None and admin.is_staff and admin.is_superuser
    for username in ("alice", "bob"):
        trader = authenticate(username=username, password=f"{username}-demo-pass")
        assert trader is not None and not trader.is_staff


def test_demo_covers_every_order_and_strategy_state():
    run_demo()

    assert set(Order.objects.values_list("status", flat=True)) == set(OrderStatus.values)
    assert {StrategyStatus.DRAFT, StrategyStatus.RUNNING, StrategyStatus.PAUSED} <= set(
        Strategy.objects.values_list("status", flat=True)
    )
    assert Position.objects.filter(quantity__lt=0).exists()  # a short
    assert Strategy.objects.exclude(metrics__winRate=None).exists()


def test_demo_positions_agree_with_the_fills():
    run_demo()

    for position in Position.objects.all():
        signed = sum(
            (fill.quantity if fill.order.side == "BUY" else -fill.quantity)
            for fill in Fill.objects.filter(
                order__user=position.user, order__symbol=position.symbol
            ).select_related("order")
        )
        assert position.quantity == signed
        assert position.market_price is not None


def test_demo_orders_agree_with_their_fills():
    run_demo()

    for order in Order.objects.prefetch_related("fills"):
        assert order.filled_quantity == sum((f.quantity for f in order.fills.all()), Decimal(0))


def test_running_demo_twice_changes_nothing_and_still_prints_the_block():
    first = run_demo()
    before = counts()

    second = run_demo()

    assert counts() == before
    assert "already present" in second
    assert "created" in first
    for output in (first, second):
        assert "http://127.0.0.1:8000/admin/" in output
        assert "http://127.0.0.1:8000/api/docs/" in output
        assert "ws://127.0.0.1:8000/ws" in output


def test_demo_prints_logins_and_copy_pasteable_examples_for_the_host():
    output = run_demo("--host", "https://trading.example.com/")

    for login in ("admin-demo-pass", "alice-demo-pass", "bob-demo-pass"):
        assert login in output
    assert "curl -s -X POST https://trading.example.com/api/auth/token/" in output
    assert 'websocat "wss://trading.example.com/ws?token=$TOKEN"' in output
    alice = get_user_model().objects.get(username="alice")
    assert f"user:{alice.pk}:orders" in output


def test_demo_refuses_a_host_that_is_not_a_url():
    with pytest.raises(CommandError, match="--host"):
        run_demo("--host", "127.0.0.1:8000")
