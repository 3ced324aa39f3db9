"""The fan-out benchmark's search for the highest sustained rate (bench.fanout.run_session).

The sustained ratio (issue 18: >= 0.9x the baseline) is only as fine as this search, so it is
driven here by a stand-in session whose server holds every rate up to a known ceiling.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench.fanout import ladder, ladder_start, run_session


class CeilingSession:
    """Sustains every rate up to `ceiling` updates/s, loses lag above it; records the rates run."""

    def __init__(self, ceiling: float, subscribers: int = 1000, survivors: int | None = None):
        self.ceiling = ceiling
        self.subscribers = subscribers
        self.rates: list[float] = []
        self.label = "stand-in"
        self.deflate = False
        self.connect = {"opened": subscribers, "failures": {}, "finished": [1.0], "started_at": 0.0}
        self.rss_kib = 0
        open_after = subscribers if survivors is None else survivors
        self.loadgen = SimpleNamespace(status=lambda: {"open": open_after})

    def step(self, rate: float, seconds: float, grace: float) -> dict:
        self.rates.append(rate)
        sustained = rate <= self.ceiling
        return {
            "rate": rate,
            "sustained": sustained,
            "verdict": "sustained" if sustained else "lag grew",
            "latency_ms": {"p50": 1.0, "p99": 2.0},
            "lag_growth_ms": 0.0 if sustained else 500.0,
            "delivery_per_s": round(rate * self.subscribers),
            "cpu": {"server_cpu_pct": [50.0], "loadgen_cpu_pct": 50.0},
        }


def search(session: CeilingSession, rate: float = 10.0) -> dict:
    return run_session(
        session,
        rate=rate,
        duration=10.0,
        step_seconds=5.0,
        ladder_limit=1000.0,
        grace=1.0,
        do_ladder=True,
        log=lambda line: None,
    )


def test_the_ladder_climbs_by_half_again_and_starts_at_the_same_deliveries_above_1000():
    assert ladder(15.0, 1.5, 120) == [15, 22, 34, 51, 76, 114]
    assert ladder_start(20) == ladder_start(1000) == 15.0
    assert ladder_start(10_000) == 1.5
    assert ladder(ladder_start(10_000), 1.5, 12) == [1.5, 2.2, 3.4, 5.1, 7.6, 11]


@pytest.mark.parametrize(
    ("ceiling", "found", "rates"),
    [
        (72, 70, [15, 22, 34, 51, 76, 64, 70]),  # two halvings between 51 and 76
        (60, 58, [15, 22, 34, 51, 76, 64, 58]),
        (200, 192, [15, 22, 34, 51, 76, 114, 171, 256, 214, 192]),
    ],
)
def test_two_bisections_find_the_highest_rate_within_an_eighth(ceiling, found, rates):
    session = CeilingSession(ceiling)
    result = search(session)
    assert session.rates == [10, 10, *rates]  # a second's warm-up, the fixed rate, the search
    assert result["max_sustained_rate"] == found
    assert found <= ceiling < found * 1.125


def test_ten_thousand_subscribers_climb_from_a_rate_both_servers_can_hold():
    session = CeilingSession(5.5, subscribers=10_000)
    result = search(session, rate=1.0)
    assert session.rates == [1.0, 1.0, 1.5, 2.2, 3.4, 5.1, 7.6, 6.3, 5.7]
    assert result["max_sustained_rate"] == 5.1
    assert result["max_delivery_per_s"] == 51_000


def test_no_bisection_once_subscribers_were_lost_in_the_failed_step():
    session = CeilingSession(60, survivors=990)
    result = search(session)
    assert session.rates[-1] == 76  # the failure, and no step after it
    assert result["max_sustained_rate"] == 51
