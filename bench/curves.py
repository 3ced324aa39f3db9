"""Growth curves: how the cost grows with subscribers, connections and server processes, each
against the bare `websockets` baseline on the same axes (issue 18; docs/BENCHMARKS.md).

- fan-out p99 and server CPU per delivery against subscribers of one topic (1k, 2k, 5k, 10k),
  scenario 1 (no ladder) at the same 10,000 deliveries/s for each count: 10 updates/s to 1k,
  5/s to 2k, 2/s to 5k, 1/s to 10k (issue 18's 10k target is at 1/s; 10/s to 10k subscribers
  is 100,000 deliveries/s, past what either server does on this machine), the baseline in the
  same run;
- resident memory per idle authenticated connection against connections held by one process
  (1k, 2k, 5k, 10k, 19.5k: this machine's open-files limit is 20,000 a process, and the
  server needs a few for itself), connected in steps on one server, memory read after each;
- highest sustained deliveries/s against server processes (1: scenario 1's ladder; 2:
  scenario 5's, on Redis), with the baseline's one process.

Each part writes its JSON; `curves.json` gathers the points and `python -m bench plot
curves.json` draws the PNGs (the command runs it at the end; matplotlib, in the dev extra).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import common
from bench.loadgen import LoadGenerator

SUBSCRIBERS = [1000, 2000, 5000, 10000]
DELIVERIES_PER_S = 10_000  # the fan-out curve's load at every point: 10/s to 1,000 subscribers
MAX_RATE = 10.0
MIN_PUBLISHES = 20  # a slow point runs long enough for 20 updates


def point_rate(subscribers: int) -> float:
    """Updates/s for a fan-out point: the same deliveries/s at every subscriber count."""
    return min(MAX_RATE, DELIVERIES_PER_S / subscribers)


CONNECTIONS = [1000, 2000, 5000, 10000, 19500]
WARMUP = 20


def _fanout_point(document: dict[str, Any], label: str) -> dict[str, Any] | None:
    rows = {row["label"]: row for row in document["summary"]["rows"]}
    row = rows.get(label)
    if row is None:
        return None
    session = next(s for s in document["sessions"] if s["label"] == label)
    loop = session["fixed"].get("loop") or []
    return {
        "p50_ms": row["p50_ms"],
        "p99_ms": row["p99_ms"],
        "server_us_per_delivery": row["server_us_per_delivery"],
        "delivered_pct": row["delivered_pct"],
        "max_sustained_rate": row["max_sustained_rate"],
        "max_delivery_per_s": row["max_delivery_per_s"],
        "loop_max_ms": max((x["max_ms"] or 0.0 for x in loop), default=None),
        "other_load_pct": row["other_load_pct"],
    }


def memory_steps(
    *,
    label: str,
    server: common.Server,
    loadgen: LoadGenerator,
    tokens: list[str | None],
    counts: list[int],
    concurrency: int,
    settle: float,
    log: Any,
) -> list[dict[str, Any]]:
    """Connect up to each count in turn on one server; resident memory per connection held."""
    warm = tokens[:WARMUP]
    loadgen.connect(
        host=common.LOOPBACK,
        ports=[server.port],
        path="/ws",
        tokens=warm,
        topics=[[]] * len(warm),
        concurrency=concurrency,
    )
    loadgen.close_all()
    time.sleep(settle)
    rss_before = common.rss_kib(server.pid)
    held = 0
    points = []
    for count in counts:
        adding = tokens[held:count]
        connected = loadgen.connect(
            host=common.LOOPBACK,
            ports=[server.port],
            path="/ws",
            tokens=adding,
            topics=[[]] * len(adding),
            concurrency=concurrency,
            timeout=120,
        )
        held += connected["opened"]
        time.sleep(settle)
        rss = common.rss_kib(server.pid)
        point = {
            "connections": held,
            "requested": count,
            "failures": connected["failures"],
            "rss_kib": rss,
            "kib_per_connection": round((rss - rss_before) / max(1, held), 2),
        }
        points.append(point)
        log(f"  {label}: {held} held, {point['kib_per_connection']} KiB each")
        if connected["opened"] < len(adding):
            break  # a limit was reached: the curve ends there (failures say which)
    loadgen.close_all()
    return points


def run(options: Any, fanout_options: Callable[..., Any], log: Any = print) -> dict[str, Any]:
    from bench import fanout

    quick = options.quick
    subscribers = options.subscriber_counts or ([20, 40] if quick else SUBSCRIBERS)
    connections = options.connection_counts or ([20, 40] if quick else CONNECTIONS)
    out_dir = Path(options.out) if options.out else common.RESULTS_DIR
    parts_dir = out_dir / "curves"
    result: dict[str, Any] = {
        "scenario": "curves",
        "machine": common.machine_info(),
        "params": {"subscribers": subscribers, "connections": connections, "quick": quick},
    }

    # 1. Fan-out against subscribers: the fixed rate only, the baseline beside.
    points = []
    for count in subscribers:
        rate = point_rate(count)
        log(f"\n== fan-out, {count} subscribers at {rate:g}/s")
        document = fanout.run(
            fanout_options(
                options,
                subscribers=count,
                rate=rate,
                duration=0.0 if quick else max(10.0, MIN_PUBLISHES / rate),
                no_ladder=True,
                out=str(parts_dir),
                name=f"fanout_{count}",
            ),
            log=log,
        )
        points.append(
            {
                "subscribers": count,
                "rate": rate,
                "daphne": _fanout_point(document, "daphne"),
                "baseline": _fanout_point(document, "baseline"),
            }
        )
    result["fanout"] = points

    # 2. Memory against connections held, on one server of each kind.
    log("\n== memory per connection")
    common.raise_nofile()
    memory: dict[str, Any] = {}
    with common.scenario_workspace(options, users=100, tokens=max(connections) + WARMUP) as space:
        tokens: list[str | None] = list(space.tokens(max(connections) + WARMUP))
        settle = 0.5 if quick else 3.0
        workers = options.workers or (2 if quick else 4)
        with LoadGenerator(workers) as loadgen:
            env = common.server_environment(space, database_url=space.fresh_database())
            server = common.Server("daphne", env, space.directory, extra_args=options.server_args)
            with common.running(server):
                memory["daphne"] = memory_steps(
                    label="daphne",
                    server=server,
                    loadgen=loadgen,
                    tokens=tokens,
                    counts=connections,
                    concurrency=options.concurrency,
                    settle=settle,
                    log=log,
                )
            baseline = common.Server("baseline", space.base_environment(), space.directory)
            with common.running(baseline):
                memory["baseline"] = memory_steps(
                    label="baseline",
                    server=baseline,
                    loadgen=loadgen,
                    tokens=[None] * len(tokens),
                    counts=connections,
                    concurrency=options.concurrency,
                    settle=settle,
                    log=log,
                )
    result["memory"] = memory

    # 3. Highest sustained deliveries/s against server processes (2: on Redis).
    processes: list[dict[str, Any]] = []
    for count in (1, 2):
        if count > 1 and not common.redis_available(options.redis_url):
            log(f"  skipping {count} processes: no Redis at {options.redis_url}")
            continue
        log(f"\n== fan-out ladder, {count} process(es)")
        document = fanout.run(
            fanout_options(
                options,
                processes=count,
                out=str(parts_dir),
                name=f"processes_{count}",
                no_baseline=count > 1,  # the baseline is one process: measured once
            ),
            log=log,
        )
        label = "daphne" if count == 1 else f"daphne x{count}"
        entry = {"processes": count, "daphne": _fanout_point(document, label)}
        if count == 1:
            entry["baseline"] = _fanout_point(document, "baseline")
        processes.append(entry)
    result["processes"] = processes
    result["targets"] = []
    path = common.write_result("curves", result, out_dir)
    log(f"written: {path}")
    for image in plot(result, out_dir):
        log(f"drawn: {image}")
    return result


def plot(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """The curves as PNG files beside the JSON (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    drawn: list[Path] = []
    commit = result.get("machine", {}).get("commit", "")
    styles: dict[str, dict[str, Any]] = {
        "daphne": {"marker": "o"},
        "baseline": {"marker": "s", "linestyle": "--"},
    }

    def counts_axis(axes: Any, counts: list[int]) -> None:
        """A log axis whose ticks are the counts measured, written out (1000, not 10^3)."""
        from matplotlib.ticker import NullLocator

        axes.set_xscale("log")
        axes.xaxis.set_minor_locator(NullLocator())
        axes.set_xticks(counts, [f"{count:,}" for count in counts])

    def finish(figure: Any, axes: Any, name: str, title: str, xlabel: str, ylabel: str) -> None:
        axes.set_title(f"{title}\n{commit}", fontsize=10)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.grid(True, alpha=0.3)
        axes.legend()
        figure.tight_layout()
        path = out_dir / f"curves-{name}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        drawn.append(path)

    fanout = result.get("fanout") or []
    for key, name, title, ylabel in (
        ("p99_ms", "fanout-p99", "Fan-out p99 at 10,000 deliveries/s", "p99 latency, ms"),
        (
            "server_us_per_delivery",
            "fanout-cpu",
            "Server CPU per delivery at 10,000 deliveries/s",
            "CPU per delivery, µs",
        ),
    ):
        figure, axes = plt.subplots(figsize=(6.4, 4.0))
        for label, style in styles.items():
            xs = [p["subscribers"] for p in fanout if p.get(label)]
            ys = [p[label][key] for p in fanout if p.get(label)]
            if xs:
                axes.plot(xs, ys, label=label, **style)
        counts_axis(axes, [p["subscribers"] for p in fanout])
        axes.set_ylim(bottom=0)
        rates = ", ".join(f"{p.get('rate', 10):g}/s" for p in fanout)
        finish(figure, axes, name, title, f"subscribers of one topic (updates: {rates})", ylabel)

    memory = result.get("memory") or {}
    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    for label, style in styles.items():
        steps = memory.get(label) or []
        if steps:
            axes.plot(
                [s["connections"] for s in steps],
                [s["kib_per_connection"] for s in steps],
                label=label,
                **style,
            )
    counts_axis(axes, [s["connections"] for s in memory.get("daphne") or []])
    axes.set_ylim(bottom=0)
    finish(
        figure,
        axes,
        "memory",
        "Resident memory per idle authenticated connection",
        "connections held by one process",
        "KiB per connection",
    )

    processes = result.get("processes") or []
    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    xs = [p["processes"] for p in processes if p.get("daphne")]
    ys = [p["daphne"]["max_delivery_per_s"] or 0 for p in processes if p.get("daphne")]
    if xs:
        axes.plot(xs, ys, label="daphne (2: on Redis)", **styles["daphne"])
    base = next((p["baseline"] for p in processes if p.get("baseline")), None)
    if base and base.get("max_delivery_per_s"):
        axes.axhline(base["max_delivery_per_s"], label="baseline (1 process)", linestyle="--")
    axes.set_xticks([1, 2])
    axes.set_ylim(bottom=0)
    finish(
        figure,
        axes,
        "processes",
        "Highest sustained deliveries/s, 1,000 subscribers",
        "server processes",
        "deliveries per second",
    )
    return drawn
