"""Scenario 9, throttling: many connections each throttling many symbols, against the same load
unthrottled (CONTRACT section 10, `throttleMs`).

1,000 connections each subscribe to 20 market topics with `throttleMs` 250 while ticks arrive
at 200/s across those symbols (10/s a symbol, posted to `POST /api/market-data/` in batches of
10 ticks, 20 requests/s, as a feed handler would). The same connections, subscribers and ticks
run unthrottled on a new server, alternately, each `--repeats` times. For each run: messages
delivered and per second, server CPU per delivered message, the event loop's longest wait
(gcwatch's probe: how long a callback posted at any moment waited to run), how old a tick was
when it arrived, connections closed, and whether every client ended each symbol on the last
tick published for it (a throttle must never keep the last tick of a burst).

With every connection on all 20 symbols the load asks for 200,000 deliveries/s unthrottled
and at most 80,000/s throttled (4 a second per subscription): more than one Daphne process
delivers on this machine either way. That is the point of the measurement: what each does
when the demand is over capacity. `--symbols` spreads the connections over a larger set of
symbols (connection c watches symbols c .. c+19 of the set) for a load within capacity.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import common
from bench.fanout import Meter
from bench.loadgen import LoadGenerator
from bench.publisher import Publisher


def symbols_of(universe: int) -> list[str]:
    return [f"TH{index:03d}" for index in range(universe)]


def entries_for(
    connection: int, symbols: list[str], per_connection: int, throttle_ms: int
) -> list[Any]:
    """Connection c subscribes to `per_connection` symbols starting at c (mod the set)."""
    chosen = [symbols[(connection + k) % len(symbols)] for k in range(per_connection)]
    if not throttle_ms:
        return [f"market:{symbol}" for symbol in chosen]
    return [{"topic": f"market:{symbol}", "throttleMs": throttle_ms} for symbol in chosen]


def batch_body(symbols: list[str], batch: int) -> Any:
    """Request i carries ticks for the next `batch` symbols, round robin; `volume` is the
    send time (microseconds), as in every fan-out scenario."""

    def body(index: int, sent: float) -> tuple[bytes, list[str]]:
        chosen = [symbols[(index * batch + j) % len(symbols)] for j in range(batch)]
        ticks = [
            {"symbol": s, "last": f"{100 + (index % 100) / 100:.2f}", "volume": f"{sent:.6f}"}
            for s in chosen
        ]
        return json.dumps(ticks).encode(), chosen

    return body


def final_batch(symbols: list[str]) -> Any:
    """The closing request: one tick of every symbol, sent alone once every earlier request
    was answered, so it is each symbol's last tick whatever order the others took."""

    def body(index: int, sent: float) -> tuple[bytes, list[str]]:
        ticks = [{"symbol": s, "last": "99.99", "volume": f"{sent:.6f}"} for s in symbols]
        return json.dumps(ticks).encode(), symbols

    return body


def one_run(
    *,
    label: str,
    server: common.Server,
    loadgen: LoadGenerator,
    tokens: list[str | None],
    staff_token: str | None,
    symbols: list[str],
    per_connection: int,
    throttle_ms: int,
    tick_rate: float,
    batch: int,
    duration: float,
    grace: float,
    concurrency: int,
) -> dict[str, Any]:
    connections = len(tokens)
    connect = loadgen.connect(
        host=common.LOOPBACK,
        ports=[server.port],
        path="/ws",
        tokens=tokens,
        topics=[entries_for(c, symbols, per_connection, throttle_ms) for c in range(connections)],
        concurrency=concurrency,
    )
    if connect["opened"] != connections:
        raise RuntimeError(f"{label}: {connect['opened']} of {connections}: {connect['failures']}")
    requests_per_s = tick_rate / batch
    count = max(1, int(requests_per_s * duration))
    time.sleep(1.0)  # the subscriptions' snapshots and replies are out
    closes_before = Counter(loadgen.status()["closes"])  # earlier runs' closes are not ours
    loadgen.record("tick", latest=True)
    meter = Meter([server.pid], loadgen.pids)

    async def publish() -> tuple[Any, Any]:
        # Requests overlap (up to 32 at once, as a feed handler's would) so that the rate holds
        # as long as the server answers; the final batch then goes alone.
        publisher = Publisher(
            common.LOOPBACK, server.publish_port, server.publish_path, token=staff_token
        )
        try:
            log = await publisher.run(
                requests_per_s, count, batch_body(symbols, batch), drain_seconds=grace + 120
            )
            closing = await publisher.run(1.0, 1, final_batch(symbols), drain_seconds=120)
            return log, closing
        finally:
            publisher.close()

    cpu_before = common.cpu_seconds(server.pid)
    with meter:
        started = time.time()
        log, closing = asyncio.run(publish())
        ended = time.time()
    # Everything still queued drains (or is dropped) before the count: quiet for `grace`.
    loadgen.wait_recorded(10**12, quiet=grace, limit=600.0)
    drained = time.time()
    # The server's CPU from the first tick until the last delivery (a backlog drained after
    # the publishing is part of the cost; the quiet `grace` at the end costs nothing).
    server_cpu_s = common.cpu_seconds(server.pid) - cpu_before
    collected = loadgen.collect()
    loop_during = server.loop_latency(started, ended)
    loop_drain = server.loop_latency(ended, drained)
    loadgen.close_all()

    accepted = log.ok() == len(log.bodies) and closing.ok() == 1
    ticks = sum(len(chosen) for chosen in log.bodies) + len(symbols) if accepted else None
    subscribers_per_symbol = connections * per_connection / len(symbols)
    demanded = ticks * subscribers_per_symbol if ticks is not None else None
    delivered = len(collected["recv"])
    latencies = [r - s for s, r in zip(collected["sent"], collected["recv"], strict=True)]
    last = {symbol: float(f"{closing.sent[0]:.6f}") for symbol in symbols} if closing.sent else {}
    final = [
        (symbol, sent)
        for symbol, values in collected["latest"].items()
        for sent in values
        if symbol in last
    ]
    on_last = sum(1 for symbol, sent in final if sent == last[symbol])
    subscriptions = connections * per_connection
    publishing_s = max(log.sent) - min(log.sent) if len(log.sent) > 1 else duration
    delivering_s = max(collected["recv"]) - min(log.sent) if delivered and log.sent else duration
    return {
        "label": label,
        "throttle_ms": throttle_ms,
        "connections": connections,
        "subscriptions": subscriptions,
        "connect_failures": connect["failures"],
        "requests": len(log.bodies),
        "achieved_tick_rate": round(len(log.sent) * batch / max(1e-9, publishing_s), 1),
        "publishing_s": round(publishing_s, 2),
        "delivering_s": round(delivering_s, 2),
        "publish_statuses": {str(k): v for k, v in log.statuses.items()},
        "closing_status": {str(k): v for k, v in closing.statuses.items()},
        "publish_errors": log.errors,
        "ticks": ticks,
        "demanded_unthrottled": demanded,
        "delivered": delivered,
        # Deliveries a second from the first tick to the last receipt; a subscription's share.
        "delivered_per_s": round(delivered / max(1e-9, delivering_s)),
        "per_subscription_per_s": round(delivered / max(1e-9, delivering_s) / subscriptions, 2),
        "server_cpu_pct": meter.result["server_cpu_pct"][0],  # while publishing
        "server_cpu_s": round(server_cpu_s, 2),  # until drained
        "server_us_per_delivery": round(server_cpu_s / max(1, delivered) * 1e6, 1),
        "age_ms": common.summarize_ms(latencies),
        "loop_while_publishing": loop_during,
        "loop_while_draining": loop_drain,
        "drain_s": round(drained - ended, 2),
        "subscriptions_with_a_tick": len(final),
        "ended_on_last_tick": on_last,
        "ended_on_last_tick_pct": round(100 * on_last / subscriptions, 2),
        "closes": dict(Counter(collected["closes"]) - closes_before),
        "errors": collected["errors"],
        "open_after": collected["open"],
        "wire_bytes_per_message": round(collected["wire_bytes"] / delivered, 1)
        if delivered
        else None,
        "cpu": meter.result,
        "gc": server.gc_pauses(started, drained),
    }


def run(options: Any, log: Any = print) -> dict[str, Any]:
    quick = options.quick
    connections = options.connections or (20 if quick else 1000)
    universe = options.symbols or (4 if quick else 20)
    per_connection = min(options.per_connection or (4 if quick else 20), universe)
    tick_rate = options.tick_rate or (40.0 if quick else 200.0)
    batch = options.batch or (4 if quick else 10)
    throttle_ms = options.throttle_ms
    duration = options.duration or (1.0 if quick else 10.0)
    repeats = options.repeats or (1 if quick else 3)
    grace = 2.0 if quick else 3.0
    workers = options.workers or (2 if quick else 4)
    symbols = symbols_of(universe)
    out_dir = Path(options.out) if options.out else None
    result: dict[str, Any] = {
        "scenario": "throttle",
        "machine": common.machine_info(),
        "params": {
            "server": "daphne",
            "channel_layer": "in-process",
            "connections": connections,
            "symbols": universe,
            "per_connection": per_connection,
            "tick_rate": tick_rate,
            "batch": batch,
            "throttle_ms": throttle_ms,
            "duration_s": duration,
            "repeats": repeats,
            "workers": workers,
            "quick": quick,
        },
    }
    common.raise_nofile()
    runs: list[dict[str, Any]] = []
    with common.scenario_workspace(options, users=20, tokens=connections) as space:
        tokens: list[str | None] = list(space.tokens(connections))
        staff_token = space.tokens(1, staff=True)[0]
        env = common.server_environment(space, database_url=space.fresh_database())
        with LoadGenerator(workers) as loadgen:
            for repeat in range(repeats):
                kinds = [("throttled", throttle_ms), ("unthrottled", 0)]
                if repeat % 2:
                    kinds.reverse()
                for label, interval in kinds:
                    server = common.Server(
                        "daphne", env, space.directory, extra_args=options.server_args
                    )
                    with common.running(server):
                        measured = one_run(
                            label=label,
                            server=server,
                            loadgen=loadgen,
                            tokens=tokens,
                            staff_token=staff_token,
                            symbols=symbols,
                            per_connection=per_connection,
                            throttle_ms=interval,
                            tick_rate=tick_rate,
                            batch=batch,
                            duration=duration,
                            grace=grace,
                            concurrency=options.concurrency,
                        )
                    measured["repeat"] = repeat
                    runs.append(measured)
                    log(
                        f"  repeat {repeat + 1} {label}: {measured['delivered_per_s']}/s "
                        f"delivered, {measured['server_us_per_delivery']} us each, loop max "
                        f"{measured['loop_while_publishing']['max_ms']} ms, age p99 "
                        f"{measured['age_ms']['p99']} ms, on last tick "
                        f"{measured['ended_on_last_tick_pct']}%, closes {measured['closes']}"
                    )
    result["runs"] = runs
    result["summary"] = summarize(runs)
    result["targets"] = []  # the comparison is the finding (docs/BENCHMARKS.md)
    path = common.write_result("throttle", result, out_dir)
    log(render(result))
    log(f"written: {path}")
    return result


FIGURES = {
    "achieved_tick_rate": lambda r: r["achieved_tick_rate"],
    "delivered_per_s": lambda r: r["delivered_per_s"],
    "per_subscription_per_s": lambda r: r["per_subscription_per_s"],
    "server_cpu_pct": lambda r: r["server_cpu_pct"],
    "server_us_per_delivery": lambda r: r["server_us_per_delivery"],
    "loop_max_ms": lambda r: r["loop_while_publishing"]["max_ms"],
    "loop_over_50ms": lambda r: r["loop_while_publishing"]["over_50ms"],
    "loop_max_ms_draining": lambda r: r["loop_while_draining"]["max_ms"],
    "drain_s": lambda r: r["drain_s"],
    "age_p50_ms": lambda r: r["age_ms"]["p50"],
    "age_p99_ms": lambda r: r["age_ms"]["p99"],
    "ended_on_last_tick_pct": lambda r: r["ended_on_last_tick_pct"],
    "closed": lambda r: sum(r["closes"].values()),
}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for label in ("throttled", "unthrottled"):
        chosen = [r for r in runs if r["label"] == label]
        summary[label] = {}
        for name, figure in FIGURES.items():
            values = [figure(r) for r in chosen if figure(r) is not None]
            summary[label][name] = (
                {
                    "median": round(statistics.median(values), 2),
                    "min": min(values),
                    "max": max(values),
                }
                if values
                else None
            )
    return summary


def render(result: dict[str, Any]) -> str:
    summary = result["summary"]

    def cell(value: dict[str, Any] | None) -> str:
        if value is None:
            return "-"
        return f"{value['median']:g} ({value['min']:g}-{value['max']:g})"

    rows = [[name] + [cell(summary[label][name]) for label in summary] for name in FIGURES]
    return "\n".join(
        [
            "\n== throttle (median (min-max) of the repeats) ==",
            common.table(["figure", *summary], rows),
        ]
    )
