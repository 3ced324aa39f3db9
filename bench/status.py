"""Status: `GET /ws/status` latency with N tracked connections (scenario 4).

N authenticated connections are opened and held, each subscribed to a market topic (20
symbols) and to its user's orders, so the status document aggregates N `Connection` rows and
2N `Subscription` rows. The status is requested one request after another over a keep-alive
connection with a staff token for 30 s (long enough to meet what a server does periodically:
Daphne's keepalive pings, the hub's HEARTBEAT, full garbage collections), first with no
client connected (5 s), then with all N held. Each request's time is from writing it to
reading the whole response; those over 100 ms are listed with when they happened.
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
    port: int, token: str, seconds: float, profile: tuple[int, Path] | None = None
) -> dict[str, Any]:
    """GET /ws/status one request after another for `seconds`."""
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
        began = time.time()
        slow: list[list[float]] = []
        while time.time() - began < seconds:
            at = time.time()
            started = time.perf_counter()
            status, body = await connection.request(
                "GET", f"{common.LOOPBACK}:{port}", "/ws/status", headers
            )
            took = time.perf_counter() - started
            durations.append(took)
            if took > 0.1:
                slow.append([round(at - began, 2), round(took * 1000, 1)])
            statuses[status] = statuses.get(status, 0) + 1
            document = body
            if not connection.usable:
                connection = await HttpConnection.open(common.LOOPBACK, port)
    finally:
        connection.close()
    parsed = json.loads(document) if document else {}
    result = {
        "seconds": seconds,
        "requests": len(durations),
        "slow_requests": slow[:100],  # [seconds into the run, ms] of those over 100 ms
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
    seconds = getattr(options, "seconds", 0) or (1.0 if quick else 30.0)
    workers = options.workers or (2 if quick else 4)
    out_dir = Path(options.out) if options.out else None
    result: dict[str, Any] = {
        "machine": common.machine_info(),
        "params": {
            "server": "daphne",
            "connections": count,
            "topics_per_connection": 2,
            "seconds": seconds,
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
            empty = asyncio.run(sample(server.port, staff, min(seconds, 5.0)))
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
            connect_seconds = max(connected["finished"]) - connected["started_at"]
            log(
                f"  {connected['opened']}/{count} connected and subscribed "
                f"in {connect_seconds:.1f} s"
            )
            time.sleep(1.0)
            profile = None
            if options.profile:
                directory = Path(options.out or common.RESULTS_DIR) / "profiles"
                profile = (server.pid, directory / "status.txt")
            started = time.time()
            full = asyncio.run(sample(server.port, staff, seconds, profile))
            full["gc"] = server.gc_pauses(started, time.time())
            log(
                f"  status with {full['active_connections']} connections: "
                f"p50 {full['latency_ms']['p50']} ms, p99 {full['latency_ms']['p99']} ms"
            )
            loadgen.close_all()
    result["connect"] = {
        "opened": connected["opened"],
        "failures": connected["failures"],
        "seconds": round(connect_seconds, 2),
        "connects_per_s": round(connected["opened"] / connect_seconds, 1),
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
