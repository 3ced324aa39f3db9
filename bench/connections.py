"""Connections: how many authenticated connections one process holds, how fast they connect,
and the resident memory each costs (scenario 3, and its uvicorn half in scenario 6).

Every client connects with its own access token in `?token=` (users repeat, tokens do not), so
each connect pays what a real one does: the handshake, JWT validation, loading the user, the
`Connection` row, the AUTHENTICATION message. A connect counts when that message arrives.
Memory: the server's VmRSS after a warm-up (20 connections opened and closed, so code paths,
the hub and the database connection exist) against VmRSS with all N held, after settling.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.loadgen import LoadGenerator
from bench.publisher import get_json

WARMUP = 20


def measure(
    *,
    label: str,
    server: common.Server,
    loadgen: LoadGenerator,
    tokens: list[str | None],
    warmup_tokens: list[str | None],
    staff_token: str | None,
    concurrency: int,
    deflate: bool,
    hold: float,
    profile_to: Path | None,
    log: Any,
    settle: float = 1.5,
) -> dict[str, Any]:
    host, port = common.LOOPBACK, server.port
    warm = loadgen.connect(
        host=host,
        ports=[port],
        path="/ws",
        tokens=warmup_tokens,
        topics=[[]] * len(warmup_tokens),
        concurrency=concurrency,
        deflate=deflate,
    )
    loadgen.close_all()
    time.sleep(settle)
    census_before = server.census()
    traced_before = server.tracemalloc_snapshot()
    rss_before = common.rss_kib(server.pid)
    cpu_before = common.cpu_seconds(server.pid)
    overflows_before = common.listen_overflows()
    profiler = None
    if profile_to is not None:
        from bench.profiling import Profiler

        profiler = Profiler(server.pid, None, profile_to)
        time.sleep(0.5)
    connect_started = time.time()
    connected = loadgen.connect(
        host=host,
        ports=[port],
        path="/ws",
        tokens=tokens,
        topics=[[]] * len(tokens),
        concurrency=concurrency,
        deflate=deflate,
        timeout=120,
    )
    profile = profiler.stop() if profiler is not None else None
    gc_pauses = server.gc_pauses(connect_started, time.time())
    cpu_connect = common.cpu_seconds(server.pid) - cpu_before
    overflows = common.listen_overflows() - overflows_before
    rss_connected = common.rss_kib(server.pid)
    time.sleep(hold)
    rss_held = common.rss_kib(server.pid)
    census_held = server.census()
    traced_held = server.tracemalloc_snapshot() if traced_before is not None else None
    status = loadgen.status()
    tracked = None
    if staff_token is not None:
        code, document = asyncio.run(get_json(host, port, "/ws/status", staff_token))
        if code == 200:
            tracked = document.get("authenticatedConnections")
    opened = connected["opened"]
    finished = connected["finished"]
    seconds = (max(finished) - connected["started_at"]) if finished else None
    result = {
        "label": label,
        "deflate_offered": deflate,
        "requested": len(tokens),
        "opened": opened,
        "failures": connected["failures"],
        "warmup_failures": warm["failures"],
        "connect_seconds": round(seconds, 2) if seconds else None,
        "connects_per_s": round(opened / seconds, 1) if seconds else None,
        "connect_latency_ms": common.summarize_ms(connected["durations"]),
        "server_cpu_ms_per_connect": round(1000 * cpu_connect / max(1, opened), 3),
        "listen_overflows": overflows,
        "rss_kib_before": rss_before,
        "rss_kib_connected": rss_connected,
        "rss_kib_held": rss_held,
        "kib_per_connection": round((rss_held - rss_before) / max(1, opened), 2),
        "held_seconds": hold,
        "open_after_hold": status["open"],
        "closes_during_hold": status["closes"],
        "tracked_by_status": tracked,
        "gc_during_connects": gc_pauses,
    }
    if census_before and census_held:
        before_types = dict(census_before["types"])
        result["gc_tracked_objects_per_connection"] = round(
            (census_held["tracked"] - census_before["tracked"]) / max(1, opened), 1
        )
        growth = [
            [name, round((count - before_types.get(name, 0)) / max(1, opened), 2)]
            for name, count in census_held["types"]
        ]
        growth.sort(key=lambda item: -item[1])
        result["gc_tracked_types_per_connection"] = growth[:20]
        if "owners" in census_held:  # BENCH_GC_OWNERS=1: by type and holder, per connection
            held_before = {(kind, by): n for kind, by, n in census_before.get("owners", ())}
            by_owner = [
                [kind, by, round((n - held_before.get((kind, by), 0)) / max(1, opened), 2)]
                for kind, by, n in census_held["owners"]
            ]
            by_owner.sort(key=lambda item: -item[2])
            result["gc_tracked_owners_per_connection"] = by_owner[:40]
    if traced_before is not None and traced_held is not None:
        allocated = allocations_per_connection(traced_before, traced_held, max(1, opened))
        result["allocated_per_connection"] = allocated
        owners = ", ".join(f"{name} {kib}" for name, kib in allocated["by_area_kib"][:8])
        log(f"  {label}: {allocated['kib_per_connection']} KiB allocated each: {owners}")
    if profile is not None:
        result["profile"] = profile
    loadgen.close_all()
    time.sleep(settle)
    result["rss_kib_after_close"] = common.rss_kib(server.pid)
    log(
        f"  {label}: {opened}/{len(tokens)} in {result['connect_seconds']} s "
        f"({result['connects_per_s']}/s), {result['kib_per_connection']} KiB each, "
        f"open after {hold:g} s: {status['open']}"
    )
    return result


def allocations_per_connection(before: Path, after: Path, count: int) -> dict[str, Any]:
    """What the held connections allocated, by source line: bytes per connection, largest first
    (tracemalloc; the lines are where the memory was allocated, each with its callers when the
    server traced more than one frame)."""
    import tracemalloc

    old, new = tracemalloc.Snapshot.load(str(before)), tracemalloc.Snapshot.load(str(after))
    frames = new.traceback_limit
    differences = new.compare_to(old, "traceback" if frames > 1 else "lineno")
    total = sum(d.size_diff for d in differences)
    rows = []
    for difference in differences[:40]:
        where = [
            f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in difference.traceback
        ]
        rows.append(
            {
                "bytes_per_connection": round(difference.size_diff / count, 1),
                "blocks_per_connection": round(difference.count_diff / count, 2),
                "where": where,
            }
        )
    # Whose memory it is: every line's bytes by the package that allocated them (the first
    # frame's file, as the CPU profile's areas), so a connection's memory splits into ours and
    # the server's.
    from bench.profiling import area_of

    areas: dict[str, float] = {}
    for difference in differences:
        owner = area_of(difference.traceback[0].filename) if difference.traceback else "other"
        areas[owner] = areas.get(owner, 0.0) + difference.size_diff
    by_area = sorted(
        ((name, round(size / count / 1024, 2)) for name, size in areas.items()),
        key=lambda item: -item[1],
    )
    return {
        "kib_per_connection": round(total / count / 1024, 2),
        "frames": frames,
        "by_area_kib": by_area,
        "top": rows,
    }


def run(options: Any, log: Any = print) -> dict[str, Any]:
    quick = options.quick
    count = options.connections or (40 if quick else 10000)
    hold = options.hold or (0.3 if quick else 5.0)
    workers = options.workers or (2 if quick else 4)
    concurrency = options.concurrency
    name = options.name
    out_dir = Path(options.out) if options.out else None
    server_kind = options.server
    result: dict[str, Any] = {
        "machine": common.machine_info(),
        "params": {
            "server": server_kind,
            "connections": count,
            "concurrency": concurrency,
            "workers": workers,
            "hold_s": hold,
            "database": options.db,
            "deflate_offered": options.deflate,
            "bare": options.bare,
            "quick": quick,
        },
    }
    common.raise_nofile()
    sessions = []
    with common.scenario_workspace(options, users=100, tokens=count + WARMUP) as space:
        tokens: list[str | None] = list(space.tokens(count + WARMUP))
        staff = space.tokens(1, staff=True)[0]
        with LoadGenerator(workers) as loadgen:
            env = common.server_environment(space, database_url=space.fresh_database())
            server = common.Server(
                server_kind,
                env,
                space.directory,
                extra_args=options.server_args,
                app="bench.bare_asgi:application" if options.bare else common.Server.app,
            )
            profile_to = None
            if options.profile:
                profile_to = Path(options.out or common.RESULTS_DIR) / "profiles" / f"{name}.txt"
            with common.running(server):
                sessions.append(
                    measure(
                        label=f"{server_kind} (bare)" if options.bare else server_kind,
                        server=server,
                        loadgen=loadgen,
                        tokens=tokens[WARMUP:],
                        warmup_tokens=tokens[:WARMUP],
                        staff_token=staff,
                        concurrency=concurrency,
                        deflate=options.deflate,
                        hold=hold,
                        profile_to=profile_to,
                        log=log,
                        settle=0.3 if quick else 1.5,
                    )
                )
            if not options.no_baseline:
                baseline = common.Server("baseline", space.base_environment(), space.directory)
                with common.running(baseline):
                    sessions.append(
                        measure(
                            label="baseline",
                            server=baseline,
                            loadgen=loadgen,
                            tokens=[None] * count,
                            warmup_tokens=[None] * WARMUP,
                            staff_token=None,
                            concurrency=concurrency,
                            deflate=options.deflate,
                            hold=hold,
                            profile_to=None,
                            log=log,
                            settle=0.3 if quick else 1.5,
                        )
                    )
    result["sessions"] = sessions
    result["targets"] = targets(sessions, options, count)
    result["scenario"] = name
    path = common.write_result(name, result, out_dir)
    log(render(result))
    log(f"written: {path}")
    return result


def targets(sessions: list[dict[str, Any]], options: Any, count: int) -> list[dict[str, Any]]:
    main = sessions[0]
    tag = f"{main['label']}{', deflate offered' if options.deflate else ''}"
    found = [
        common.target(
            f"authenticated connections held by one process ({tag})",
            main["open_after_hold"],
            f">= {count}",
            main["open_after_hold"] >= count and main["opened"] >= count,
        ),
        common.target(
            f"resident memory per connection, KiB ({tag})",
            main["kib_per_connection"],
            "<= 40 KB (39.1 KiB)",
            main["kib_per_connection"] <= 40 * 1000 / 1024,
        ),
        common.target(
            f"authenticated connects per second ({tag})",
            main["connects_per_s"],
            ">= 500",
            (main["connects_per_s"] or 0) >= 500,
        ),
    ]
    base = next((s for s in sessions if s["label"] == "baseline"), None)
    if base is not None and main["label"] == "daphne" and not options.deflate:
        # Round two's limits (issue 18), against the baseline measured in the same run.
        memory = common.ratio(main["kib_per_connection"], base["kib_per_connection"])
        connects = common.ratio(main["connects_per_s"], base["connects_per_s"])
        found.append(
            common.target(
                f"memory per connection / baseline's ({tag}, {count} connections)",
                memory,
                "<= 1.5",
                memory is not None and memory <= 1.5,
            )
        )
        found.append(
            common.target(
                f"authenticated connects per second / baseline's ({tag})",
                connects,
                ">= 0.7",
                connects is not None and connects >= 0.7,
            )
        )
    return found


def render(result: dict[str, Any]) -> str:
    sessions = result["sessions"]
    base = next((s for s in sessions if s["label"] == "baseline"), None)
    rows = []
    for s in sessions:
        ratios: tuple[float | None, float | None] = (None, None)
        if base is not None and s is not base:
            ratios = (
                common.ratio(s["connects_per_s"], base["connects_per_s"]),
                common.ratio(s["kib_per_connection"], base["kib_per_connection"]),
            )
        rows.append(
            [
                s["label"],
                s["opened"],
                s["open_after_hold"],
                s["connect_seconds"],
                s["connects_per_s"],
                ratios[0],
                s["connect_latency_ms"]["p50"],
                s["connect_latency_ms"]["p99"],
                s["server_cpu_ms_per_connect"],
                s["kib_per_connection"],
                ratios[1],
                s["rss_kib_before"],
                s["rss_kib_held"],
                s["listen_overflows"],
                s["tracked_by_status"],
            ]
        )
    parts = [
        f"\n== {result['scenario']} ==",
        common.table(
            [
                "server",
                "opened",
                "open after hold",
                "seconds",
                "connects/s",
                "rate x",
                "connect p50 ms",
                "connect p99 ms",
                "server cpu ms/connect",
                "KiB/conn",
                "memory x",
                "RSS before KiB",
                "RSS held KiB",
                "listen overflows",
                "tracked (status)",
            ],
            rows,
        ),
    ]
    if result.get("targets"):
        parts += ["", common.targets_table(result["targets"])]
    return "\n".join(parts)
