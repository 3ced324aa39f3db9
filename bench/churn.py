"""Scenario 10, churn: memory left behind by connections that came and went.

Rounds of `--batch` clients (default 200) connect with their own tokens, subscribe to 5 market
topics, and close, `--connections` in all (default 8,000) after a warm-up of `--warmup` (1,000);
the server's resident memory after the warm-up and at the end gives KiB per churned connection
(a server that frees a closed connection at once grows by nothing once its allocator has warmed
up). At the end gcwatch runs one full collection that keeps what it finds: the reference cycles
closed connections left for the collector (by type), then the memory after it. The bare
`websockets` baseline gets the same churn in the same run. With BENCH_TRACEMALLOC=frames (N
frames) the server is also traced: `allocations_left` is what the churned connections left
allocated, per connection and by source line (tracemalloc snapshots after the warm-up and at the
end), to tell live objects from memory the allocator keeps.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench import common
from bench.connections import allocations_per_connection
from bench.loadgen import LoadGenerator

TOPICS = [f"market:CH{index}" for index in range(5)]


def churn(
    loadgen: LoadGenerator,
    server: common.Server,
    tokens: list[str | None],
    batch: int,
    total: int,
    concurrency: int,
    curve: list[tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """Rounds of `batch` clients that connect, subscribe and close, `total` in all; with `curve`,
    the server's RSS after each round is appended to it as (connections so far, KiB)."""
    opened = 0
    failures: dict[str, int] = {}
    for start in range(0, total, batch):
        chosen = [tokens[(start + i) % len(tokens)] for i in range(min(batch, total - start))]
        connect = loadgen.connect(
            host=common.LOOPBACK,
            ports=[server.port],
            path="/ws",
            tokens=chosen,
            topics=[TOPICS] * len(chosen),
            concurrency=concurrency,
        )
        opened += connect["opened"]
        for key, count in connect["failures"].items():
            failures[key] = failures.get(key, 0) + count
        loadgen.close_all()
        if curve is not None:
            curve.append((opened, common.rss_kib(server.pid)))
    return {"opened": opened, "failures": failures}


def halves(start_kib: int, curve: list[tuple[int, int]]) -> list[float] | None:
    """KiB of RSS per churned connection over the first and the second half of the rounds."""
    if len(curve) < 2:
        return None
    middle = curve[len(curve) // 2 - 1]
    end = curve[-1]
    return [
        round((middle[1] - start_kib) / max(1, middle[0]), 2),
        round((end[1] - middle[1]) / max(1, end[0] - middle[0]), 2),
    ]


def measure(
    *,
    label: str,
    server: common.Server,
    loadgen: LoadGenerator,
    tokens: list[str | None],
    batch: int,
    warmup: int,
    total: int,
    concurrency: int,
    settle: float,
    log: Any,
) -> dict[str, Any]:
    started = time.time()
    warm = churn(loadgen, server, tokens, batch, warmup, concurrency)
    time.sleep(settle)
    rss_warm = common.rss_kib(server.pid)
    traced_warm = server.tracemalloc_snapshot()  # None unless BENCH_TRACEMALLOC is set
    curve: list[tuple[int, int]] = []
    measured = churn(loadgen, server, tokens, batch, total, concurrency, curve)
    time.sleep(settle)
    rss_end = common.rss_kib(server.pid)
    traced_end = server.tracemalloc_snapshot() if traced_warm is not None else None
    elapsed = time.time() - started
    garbage = server.garbage() if label != "baseline" else None
    rss_collected = common.rss_kib(server.pid)
    result = {
        "label": label,
        "warmup": warm,
        "churned": measured,
        "rss_kib_after_warmup": rss_warm,
        "rss_kib_end": rss_end,
        "rss_kib_after_full_collection": rss_collected,
        "kib_per_churned_connection": round((rss_end - rss_warm) / max(1, measured["opened"]), 2),
        # The same over each half of the measured churn: a plateau shows as a second half that
        # grows by much less than the first; a leak as two halves alike.
        "kib_per_churned_connection_by_half": halves(rss_warm, curve),
        "rss_curve": curve,
        "seconds": round(elapsed, 1),
        "connections_per_s": round((warm["opened"] + measured["opened"]) / elapsed, 1),
        "gc": server.gc_pauses(started, time.time()),
    }
    if traced_warm is not None and traced_end is not None:
        # What the churned connections left allocated, by source line: live Python objects.
        # RSS growth beyond it is memory the allocator keeps (arenas, fragmentation).
        result["allocations_left"] = allocations_per_connection(
            traced_warm, traced_end, max(1, measured["opened"])
        )
    if garbage is not None:
        result["cycles_left"] = {
            "unreachable": garbage["unreachable"],
            "per_churned_connection": round(
                garbage["unreachable"] / max(1, warm["opened"] + measured["opened"]), 1
            ),
            "top_types": garbage["types"][:25],
            "top_modules": garbage["modules"][:15],
            "cycles": garbage.get("cycles", {}),  # BENCH_GC_CYCLES=Type,...: one cycle each
        }
    log(
        f"  {label}: {measured['opened']} churned after {warm['opened']}: RSS "
        f"{rss_warm} -> {rss_end} KiB ({result['kib_per_churned_connection']} KiB each; "
        f"by half {result['kib_per_churned_connection_by_half']})"
        + (
            f", {garbage['unreachable']} objects in cycles left, RSS after a full collection "
            f"{rss_collected} KiB"
            if garbage
            else ""
        )
    )
    return result


def run(options: Any, log: Any = print) -> dict[str, Any]:
    quick = options.quick
    total = options.connections or (100 if quick else 8000)
    warmup = options.warmup or (40 if quick else 1000)
    batch = options.batch or (20 if quick else 200)
    settle = 0.5 if quick else 2.0
    workers = options.workers or (2 if quick else 4)
    out_dir = Path(options.out) if options.out else None
    result: dict[str, Any] = {
        "scenario": "churn",
        "machine": common.machine_info(),
        "params": {
            "server": getattr(options, "server", "daphne"),
            "connections": total,
            "warmup": warmup,
            "batch": batch,
            "topics": TOPICS,
            "workers": workers,
            "quick": quick,
        },
    }
    common.raise_nofile()
    sessions = []
    with common.scenario_workspace(options, users=20, tokens=batch) as space:
        tokens: list[str | None] = list(space.tokens(batch))
        with LoadGenerator(workers) as loadgen:
            env = common.server_environment(space, database_url=space.fresh_database())
            kind = getattr(options, "server", "daphne")
            runs = [(kind, env, tokens)]
            if not options.no_baseline:
                runs.append(("baseline", space.base_environment(), [None] * batch))
            for label, environment, run_tokens in runs:
                server = common.Server(
                    label, environment, space.directory, extra_args=options.server_args
                )
                with common.running(server):
                    sessions.append(
                        measure(
                            label=label,
                            server=server,
                            loadgen=loadgen,
                            tokens=run_tokens,
                            batch=batch,
                            warmup=warmup,
                            total=total,
                            concurrency=options.concurrency,
                            settle=settle,
                            log=log,
                        )
                    )
    result["sessions"] = sessions
    by_label = {s["label"]: s for s in sessions}
    ours = sessions[0]
    result["summary"] = {
        "kib_per_churned_connection": ours["kib_per_churned_connection"],
        "baseline_kib_per_churned_connection": by_label.get("baseline", {}).get(
            "kib_per_churned_connection"
        ),
        "kib_per_churned_connection_by_half": ours["kib_per_churned_connection_by_half"],
        "baseline_kib_per_churned_connection_by_half": by_label.get("baseline", {}).get(
            "kib_per_churned_connection_by_half"
        ),
        "cycles_left_per_connection": ours.get("cycles_left", {}).get("per_churned_connection"),
    }
    result["targets"] = []
    path = common.write_result("churn", result, out_dir)
    log(f"written: {path}")
    return result
