"""`manage.py simulate_market`: a live market for demos, through the market-data API."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management.base import BaseCommand, CommandError, CommandParser
from rest_framework_simplejwt.tokens import AccessToken

from market.models import MarketQuote
from market.simulator import DEFAULT_PRICES, Simulator, crossed_fill_price
from orders.models import Order, OrderStatus

SIMULATOR_USERNAME = "market-simulator"


class Command(BaseCommand):
    help = (
        "Simulate a market: random-walk ticks (with bid/ask and volume) for the demo symbols, "
        "POSTed to a server's /api/market-data/ as a real feed would, so MARKET_DATA reaches "
        "every subscriber and positions are marked to market. With --fill-orders it also fills "
        "resting LIMIT orders the market crosses, at their limit price or better (a BUY at the "
        "ask, a SELL at the bid), through the fills API, as the execution gateway would. A "
        "simulation: not for production data."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server")
        parser.add_argument(
            "--symbols",
            default=",".join(DEFAULT_PRICES),
            help="comma-separated symbols (default: the demo's)",
        )
        parser.add_argument("--rate", type=float, default=2.0, help="ticks per second per symbol")
        parser.add_argument(
            "--volatility",
            type=float,
            default=0.0008,
            help="standard deviation of one tick's log return (0.0008: about 0.08%%)",
        )
        parser.add_argument("--fill-orders", action="store_true", help="fill crossed LIMIT orders")
        parser.add_argument(
            "--duration", type=float, default=0, help="seconds; 0 runs until stopped"
        )
        parser.add_argument("--seed", type=int, default=None, help="repeatable random walk")
        parser.add_argument(
            "--wait", type=float, default=30, help="seconds to wait for the server to answer"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not 0 < options["rate"] <= 100:
            raise CommandError("--rate must be above 0 and at most 100 ticks a second.")
        if not 0 <= options["volatility"] < 0.1:
            raise CommandError("--volatility must be from 0 to 0.1 (a log return per tick).")
        symbols = [s.strip().upper() for s in options["symbols"].split(",") if s.strip()]
        if not symbols:
            raise CommandError("--symbols names no symbol.")
        self.base = options["url"].rstrip("/")
        if not self.base.startswith(("http://", "https://")):
            raise CommandError(f"--url must be an http:// or https:// URL, not {self.base!r}.")
        self.token = self._token()
        self._wait_for_server(options["wait"])
        simulator = Simulator(
            self._starting_prices(symbols), volatility=options["volatility"], seed=options["seed"]
        )
        stop = threading.Event()  # set by SIGTERM; the wait between ticks ends at once
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        interval = 1 / options["rate"]
        deadline = time.monotonic() + options["duration"] if options["duration"] else None
        sent = fills = 0
        self.stdout.write(
            f"Simulating {', '.join(symbols)} at {options['rate']:g} ticks/s each on {self.base}"
            + (" (filling crossed LIMIT orders)" if options["fill_orders"] else ""),
        )
        next_at = time.monotonic()
        try:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                ticks = simulator.ticks()
                self._post("/api/market-data/", [tick_json(tick) for tick in ticks])
                sent += len(ticks)
                if options["fill_orders"]:
                    fills += self._fill_crossed(ticks)
                next_at += interval
                stop.wait(max(0.0, next_at - time.monotonic()))
        except KeyboardInterrupt:
            pass
        self.stdout.write(f"Stopped: {sent} ticks sent, {fills} orders filled.")

    # --- the feed's identity and the server -----------------------------------------------

    def _token(self) -> str:
        """An access token of the simulator's own user, who may publish and record fills."""
        user, _ = get_user_model()._default_manager.get_or_create(
            username=SIMULATOR_USERNAME, defaults={"is_active": True}
        )
        if user.has_usable_password():
            user.set_unusable_password()  # it never logs in: tokens are minted here
            user.save(update_fields=["password"])
        user.user_permissions.add(
            *Permission.objects.filter(codename__in=["publish_market_data", "add_fill"])
        )
        return str(AccessToken.for_user(user))

    def _wait_for_server(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            try:
                with urllib.request.urlopen(f"{self.base}/ws/status", timeout=2):  # noqa: S310
                    return
            except urllib.error.HTTPError:
                return  # it answers (401/403 without credentials is an answer)
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise CommandError(
                        f"The server at {self.base} does not answer: {exc}"
                    ) from None
                time.sleep(0.5)

    def _post(self, path: str, body: Any) -> Any:
        request = urllib.request.Request(  # noqa: S310 - --url is checked to be http(s)
            self.base + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                return json.load(response)
        except urllib.error.HTTPError as exc:
            if exc.code == 401:  # the token expired: mint another and try once more
                self.token = self._token()
                request.headers["Authorization"] = f"Bearer {self.token}"
                with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                    return json.load(response)
            detail = exc.read().decode(errors="replace")[:300]
            self.stderr.write(f"{path} answered {exc.code}: {detail}")
            return None
        except OSError as exc:
            self.stderr.write(f"{path} failed: {exc}")
            return None

    @staticmethod
    def _starting_prices(symbols: list[str]) -> dict[str, Decimal]:
        stored = dict(MarketQuote.objects.filter(symbol__in=symbols).values_list("symbol", "last"))
        return {s: stored.get(s) or DEFAULT_PRICES.get(s) or Decimal("100") for s in symbols}

    def _fill_crossed(self, ticks: list[Any]) -> int:
        """Fill open LIMIT orders the market crossed, for what remains, at their limit price or
        better (market.simulator.crossed_fill_price), through the fills API."""
        filled = 0
        for tick in ticks:
            resting = Order.objects.filter(
                symbol=tick.symbol,
                order_type="LIMIT",
                status__in=[OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED],
            )
            for order in resting:
                price = crossed_fill_price(order.side, order.price, tick)
                if price is None:
                    continue
                remaining = order.quantity - order.filled_quantity
                answer = self._post(
                    f"/api/orders/{order.pk}/fills/",
                    {"quantity": str(remaining), "price": str(price)},
                )
                filled += answer is not None
        return filled


def tick_json(tick: Any) -> dict[str, Any]:
    return {key: value for key, value in tick.payload().items() if value is not None}
