"""Status: `GET /ws/status` latency with N tracked connections (scenario 4).

N authenticated connections are opened and held, each subscribed to a market topic (20
symbols) and to its user's orders, so the status document aggregates N `Connection` rows and
2N `Subscription` rows. The status is requested one request at a time over a keep-alive
connection with a staff token, first with no client connected, then with all N held. Each
request's time is from writing it to reading the whole response.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.loadgen import LoadGenerator
from bench.publisher import HttpConnection

SYMBOLS = 20


async def sample(
    port: int, token: str, requests: int, profile: tuple[int, Path] | None = None
) -> dict[str, Any]:
    connection = await HttpConnection.open(common.LOOPBACK, port)
    headers = {"Authorization": f"Bearer {token}", "Connection": "keep-alive"}
    durations = []
    statuses: dict[int, int] = {}
    document: Any = None
    profiler = None
    if profile is not None:
        from bench.profiling import Profiler

        profiler = Profiler(profile[0], None, profile[1])
        await asyncio.sleep(0.5)
    try:
        for _ in range(requests):
            started = time.perf_counter()
            status, body = await connection.request(
                "GET", f"{common.LOOPBACK}:{port}", "/ws/status", headers
            )
            durations.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
            document = body
            if not connection.usable:
                connection = await HttpConnection.open(common.LOOPBACK, port)
    finally:
        connection.close()
    parsed = json.loads(document) if document else {}
    result = {
        "requests": requests,
        "statuses": {str(k): v for k, v in statuses.items()},
        "latency_ms": common.summarize_ms(durations),
        "active_connections": parsed.get("activeConnections"),
        "authenticated_connections": parsed.get("authenticatedConnections"),
        "users_online": parsed.get("usersOnline"),
        "topics": len(parsed.get("topicSubscriptions") or {}),
        "subscriptions": sum((parsed.get("topicSubscriptions") or {}).values()),
        "response_bytes": len(document or b""),
    }
    if profiler is not None:
        result["profile"] = profiler.stop()
    return result


def run(options: Any, log: Any = print) -> dict[str, Any]:
    quick = options.quick
    count = getattr(options, "connections", 0) or (40 if quick else 10000)
    requests = getattr(options, "requests", 0) or (10 if quick else 300)
    workers = options.workers or (2 if quick else 4)
    out_dir = Path(options.out) if options.out else None
    result: dict[str, Any] = {
        "machine": common.machine_info(),
        "params": {
            "server": "daphne",
            "connections": count,
            "topics_per_connection": 2,
            "requests": requests,
            "database": options.db,
            "workers": workers,
            "quick": quick,
        },
    }
    common.raise_nofile()
    with common.scenario_workspace(options, users=100, tokens=count) as space:
        tokens: list[str | None] = list(space.tokens(count))
        staff = space.tokens(1, staff=True)[0]
        user_ids = space.identities["user_ids"]
        # Token i belongs to user_ids[i % users] (setup_db cycles them in this order).
        topics = [
            [f"market:SYM{i % SYMBOLS}", f"user:{user_ids[i % len(user_ids)]}:orders"]
            for i in range(count)
        ]
        env = common.server_environment(space, database_url=space.fresh_database())
        server = common.Server("daphne", env, space.directory, extra_args=options.server_args)
        with LoadGenerator(workers) as loadgen, common.running(server):
            empty = asyncio.run(sample(server.port, staff, requests))
            log(
                f"  status with 0 connections: p50 {empty['latency_ms']['p50']} ms, "
                f"p99 {empty['latency_ms']['p99']} ms"
            )
            connected = loadgen.connect(
                host=common.LOOPBACK,
                ports=[server.port],
                path="/ws",
                tokens=tokens,
                topics=topics,
                concurrency=options.concurrency,
                timeout=180,
            )
            seconds = max(connected["finished"]) - connected["started_at"]
            log(f"  {connected['opened']}/{count} connected and subscribed in {seconds:.1f} s")
            time.sleep(1.0)
            profile = None
            if options.profile:
                directory = Path(options.out or common.RESULTS_DIR) / "profiles"
                profile = (server.pid, directory / "status.txt")
            full = asyncio.run(sample(server.port, staff, requests, profile))
            log(
                f"  status with {full['active_connections']} connections: "
                f"p50 {full['latency_ms']['p50']} ms, p99 {full['latency_ms']['p99']} ms"
            )
            loadgen.close_all()
    result["connect"] = {
        "opened": connected["opened"],
        "failures": connected["failures"],
        "seconds": round(seconds, 2),
        "connects_per_s": round(connected["opened"] / seconds, 1),
    }
    result["empty"] = empty
    result["full"] = full
    p99 = full["latency_ms"]["p99"]
    result["targets"] = [
        common.target(
            f"/ws/status p99 ms with {full['active_connections']} tracked connections",
            p99,
            "< 50",
            p99 is not None and p99 < 50 and full["active_connections"] == count,
        )
    ]
    result["scenario"] = "status"
    path = common.write_result("status", result, out_dir)
    log(render(result))
    log(f"written: {path}")
    return result


def render(result: dict[str, Any]) -> str:
    rows = []
    for key in ("empty", "full"):
        s = result[key]
        rows.append(
            [
                s["active_connections"],
                s["subscriptions"],
                s["requests"],
                s["latency_ms"]["p50"],
                s["latency_ms"]["p90"],
                s["latency_ms"]["p99"],
                s["latency_ms"]["max"],
                s["response_bytes"],
            ]
        )
    return "\n".join(
        [
            "\n== status ==",
            common.table(
                [
                    "tracked connections",
                    "subscriptions",
                    "requests",
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "max ms",
                    "response bytes",
                ],
                rows,
            ),
            "",
            common.targets_table(result["targets"]),
        ]
    )
