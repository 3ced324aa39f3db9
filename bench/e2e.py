"""End to end: an order fill through the REST API to the ORDER_UPDATE at its subscribers
(scenario 2).

A trader places one large LIMIT order (`POST /api/orders/`). Then the execution gateway (a
staff token) records fills of 1 against it, `POST /api/orders/{id}/fills/`, one at a time at a
fixed rate. Half the subscribers are the trader's own connections on `user:{id}:orders`, half
are staff connections on `orders`. Latency: from writing the fill's request to the receipt of
the ORDER_UPDATE whose `filledQuantity` matches the fill's response, at every subscriber: the
HTTP request, the transaction (order, fill, position rows), the commit, the on_commit publish,
the layer, the hub and the delivery.

For reference the same subscribers also receive market ticks posted at the same rate
(`POST /api/market-data/`): the same publish path without the domain transaction.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from bench import common
from bench.loadgen import LoadGenerator
from bench.publisher import HttpConnection, Publisher, tick_body

SYMBOL = "BENCH"


async def place_order(port: int, token: str) -> int:
    connection = await HttpConnection.open(common.LOOPBACK, port)
    try:
        body = {
            "symbol": SYMBOL,
            "side": "BUY",
            "orderType": "LIMIT",
            "quantity": "100000000",
            "price": "100",
        }
        status, data = await connection.request(
            "POST",
            f"{common.LOOPBACK}:{port}",
            "/api/orders/",
            {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            json.dumps(body).encode(),
        )
    finally:
        connection.close()
    if status != 201:
        raise RuntimeError(f"placing the order failed: {status} {data[:300]!r}")
    return int(json.loads(data)["id"])


def fill_body(index: int, sent: float) -> tuple[bytes, Any]:
    return b'{"quantity": "1", "price": "100"}', None


def run(options: Any, log: Any = print) -> dict[str, Any]:
    quick = options.quick
    subscribers = getattr(options, "subscribers", 0) or (4 if quick else 100)
    fills = getattr(options, "fills", 0) or (5 if quick else 200)
    rate = getattr(options, "rate", 0) or 10.0
    workers = options.workers or (2 if quick else 4)
    out_dir = Path(options.out) if options.out else None
    owners = subscribers // 2
    result: dict[str, Any] = {
        "machine": common.machine_info(),
        "params": {
            "server": "daphne",
            "subscribers": subscribers,
            "owner_subscribers": owners,
            "staff_subscribers": subscribers - owners,
            "fills": fills,
            "rate": rate,
            "database": options.db,
            "workers": workers,
            "quick": quick,
        },
    }
    common.raise_nofile()
    with common.scenario_workspace(
        options, users=1, tokens=owners + 1, staff_tokens=subscribers - owners + 1
    ) as space:
        trader_tokens = space.tokens(owners + 1, user_index=0)
        staff_tokens = space.tokens(subscribers - owners + 1, staff=True)
        trader_id = space.identities["user_ids"][0]
        env = common.server_environment(space, database_url=space.fresh_database())
        server = common.Server("daphne", env, space.directory, extra_args=options.server_args)
        with LoadGenerator(workers) as loadgen, common.running(server):
            tokens: list[str | None] = [*trader_tokens[1:], *staff_tokens[1:]]
            topics = [[f"user:{trader_id}:orders", f"market:{SYMBOL}"]] * owners + [
                ["orders", f"market:{SYMBOL}"]
            ] * (subscribers - owners)
            connected = loadgen.connect(
                host=common.LOOPBACK,
                ports=[server.port],
                path="/ws",
                tokens=tokens,
                topics=topics,
                concurrency=options.concurrency,
            )
            if connected["opened"] != subscribers:
                raise RuntimeError(
                    f"only {connected['opened']} subscribers: {connected['failures']}"
                )
            order_id = asyncio.run(place_order(server.port, trader_tokens[0]))

            async def publish(path: str, count: int, body: Any, keep: bool) -> Any:
                publisher = Publisher(
                    common.LOOPBACK, server.port, path, token=staff_tokens[0], max_connections=1
                )
                try:
                    return await publisher.run(
                        rate, count, body, keep_responses=keep, drain_seconds=60
                    )
                finally:
                    publisher.close()

            # Warm-up: a few fills and ticks, not measured.
            loadgen.record("order")
            warm = asyncio.run(publish(f"/api/orders/{order_id}/fills/", 3, fill_body, False))
            ticks = asyncio.run(publish("/api/market-data/", 3, tick_body(SYMBOL), False))
            loadgen.wait_recorded((warm.ok() + ticks.ok()) * subscribers, quiet=3.0)
            loadgen.collect()

            loadgen.record("order")
            fill_log = asyncio.run(
                publish(f"/api/orders/{order_id}/fills/", fills, fill_body, True)
            )
            loadgen.wait_recorded(fill_log.ok() * subscribers, quiet=3.0)
            fill_collected = loadgen.collect()

            loadgen.record("order")
            tick_log = asyncio.run(publish("/api/market-data/", fills, tick_body(SYMBOL), False))
            loadgen.wait_recorded(tick_log.ok() * subscribers, quiet=3.0)
            tick_collected = loadgen.collect()
            loadgen.close_all()

    # Fill i's send time, keyed by the filledQuantity its response reports.
    sent_by_key: dict[tuple[int, str], float] = {}
    for sent, status, data in fill_log.responses:
        if status == 201:
            order = json.loads(data)["order"]
            sent_by_key[(int(order["id"]), str(order["filledQuantity"]))] = sent
    latencies = []
    unmatched = 0
    for order_id_received, filled, received in fill_collected["keys"]:
        sent = sent_by_key.get((int(order_id_received), str(filled)))
        if sent is None:
            unmatched += 1
        else:
            latencies.append(received - sent)
    expected = len(sent_by_key) * subscribers
    tick_latencies = [
        r - s for s, r in zip(tick_collected["sent"], tick_collected["recv"], strict=True)
    ]
    result["fill"] = {
        "fills_ok": len(sent_by_key),
        "statuses": {str(k): v for k, v in fill_log.statuses.items()},
        "errors": fill_log.errors,
        "expected": expected,
        "received": len(latencies),
        "unmatched": unmatched,
        "delivered_pct": round(100 * len(latencies) / expected, 2) if expected else None,
        "latency_ms": common.summarize_ms(latencies),
        "rest_response_ms": common.summarize_ms(fill_log.answered),
    }
    result["tick_reference"] = {
        "published": tick_log.ok(),
        "expected": tick_log.ok() * subscribers,
        "received": len(tick_latencies),
        "latency_ms": common.summarize_ms(tick_latencies),
        "rest_response_ms": common.summarize_ms(tick_log.answered),
    }
    result["targets"] = []  # the issue sets no target for this figure; it is reported
    result["scenario"] = "e2e"
    path = common.write_result("e2e", result, out_dir)
    log(render(result))
    log(f"written: {path}")
    return result


def render(result: dict[str, Any]) -> str:
    fill, tick = result["fill"], result["tick_reference"]
    p = result["params"]
    return "\n".join(
        [
            "\n== e2e: order fill -> ORDER_UPDATE ==",
            common.table(
                [
                    "path",
                    "subscribers",
                    "rate/s",
                    "sent",
                    "delivered",
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "max ms",
                    "REST p50 ms",
                    "REST p99 ms",
                ],
                [
                    [
                        "fill -> ORDER_UPDATE",
                        p["subscribers"],
                        p["rate"],
                        fill["fills_ok"],
                        f"{fill['received']}/{fill['expected']}",
                        fill["latency_ms"]["p50"],
                        fill["latency_ms"]["p90"],
                        fill["latency_ms"]["p99"],
                        fill["latency_ms"]["max"],
                        fill["rest_response_ms"]["p50"],
                        fill["rest_response_ms"]["p99"],
                    ],
                    [
                        "tick -> MARKET_DATA (reference)",
                        p["subscribers"],
                        p["rate"],
                        tick["published"],
                        f"{tick['received']}/{tick['expected']}",
                        tick["latency_ms"]["p50"],
                        tick["latency_ms"]["p90"],
                        tick["latency_ms"]["p99"],
                        tick["latency_ms"]["max"],
                        tick["rest_response_ms"]["p50"],
                        tick["rest_response_ms"]["p99"],
                    ],
                ],
            ),
        ]
    )
