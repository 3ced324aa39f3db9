"""A market simulator: random-walk ticks with a bid/ask spread and volume, for demos and tests.

Pure: it only makes `Tick`s. `manage.py simulate_market` sends them to a server through the
market-data API, the path real feeds use, so positions and strategies are marked to market and
every subscriber sees them, on one process or many.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from market.ticks import Tick

# Where a symbol starts when no quote is stored: the demo's symbols, roughly where they traded.
DEFAULT_PRICES = {
    "BTC-USD": Decimal("43120.5"),
    "ETH-USD": Decimal("2275"),
    "SOL-USD": Decimal("96.2"),
    "DOGE-USD": Decimal("0.08"),
}


def _places(price: Decimal) -> int:
    """Decimal places that keep about six significant digits."""
    if price <= 0:
        return 8
    return max(0, min(8, 5 - math.floor(math.log10(float(price)))))


@dataclass
class Walk:
    """One symbol's price: a geometric random walk, its spread a few basis points wide."""

    symbol: str
    price: float
    volatility: float  # standard deviation of one step's log return
    spread_bps: float = 4.0
    rng: random.Random = field(default_factory=random.Random)

    def step(self) -> Tick:
        self.price *= math.exp(self.rng.gauss(0.0, self.volatility))
        places = _places(Decimal(repr(self.price)))
        quantum = Decimal(1).scaleb(-places)
        last = Decimal(repr(self.price)).quantize(quantum)
        half = max(quantum, (last * Decimal(self.spread_bps / 20_000)).quantize(quantum))
        volume = Decimal(self.rng.randint(1, 400)) / (Decimal(10) if last > 1000 else 1)
        return Tick(
            symbol=self.symbol,
            last=last,
            bid=last - half,
            ask=last + half,
            volume=volume,
            timestamp=datetime.now(UTC),
        )


def crossed_fill_price(side: str, limit: Decimal, tick: Tick) -> Decimal | None:
    """The price a resting LIMIT order fills at when `tick` crosses it, or None if it does not.

    As on an exchange, a resting order fills at its limit or better: a BUY at the ask (the last
    price when the tick has no ask) once that is at or below its limit, a SELL at the bid (or
    the last price) once that is at or above its limit.
    """
    if side == "BUY":
        offer = tick.ask if tick.ask is not None else tick.last
        return min(limit, offer) if offer <= limit else None
    bid = tick.bid if tick.bid is not None else tick.last
    return max(limit, bid) if bid >= limit else None


class Simulator:
    """Ticks for several symbols; `seed` makes a run repeatable."""

    def __init__(
        self,
        prices: dict[str, Decimal],
        *,
        volatility: float = 0.0008,
        seed: int | None = None,
    ) -> None:
        rng = random.Random(seed)  # noqa: S311 - a simulation, not cryptography
        self.walks = [
            Walk(symbol, float(price), volatility, rng=random.Random(rng.random()))  # noqa: S311
            for symbol, price in prices.items()
        ]

    def ticks(self) -> list[Tick]:
        """One tick per symbol."""
        return [walk.step() for walk in self.walks]
