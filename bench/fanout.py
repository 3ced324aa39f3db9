"""Fan-out: N subscribers of one topic, ticks published at a fixed rate, then a rising ladder.

Scenarios 1 (Daphne, in-process layer), 5 (two Daphne processes on Redis) and the fan-out half
of 6 (uvicorn). Every run measures the bare `websockets` baseline with the same load generator
and the same messages right after the server under test.

Publishing goes through the product's real path: `POST /api/market-data/` with a staff token
(DRF, `MarketDataService.apublish`, `apublish_rollback_unsafe`, the channel layer, the hub).
With the in-process layer the publish must happen inside the server, and that endpoint is how
the product takes ticks from outside; with Redis the POST goes to one process and reaches the
other through the layer. The baseline takes the same body on `POST /publish`.

Latency is receipt time minus the publisher's send time, which travels in the tick's `volume`
field with microsecond resolution (`timestamp` has only milliseconds): it covers the HTTP
request, the publish path and the delivery, as a feed's tick would experience it.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.loadgen import LoadGenerator
from bench.publisher import Publisher, tick_body

SYMBOL = "BENCH"
TOPIC = f"market:{SYMBOL}"
LADDER_START = 15.0  # the fixed-rate run (10/s by default) is the step below
LADDER_FACTOR = 1.5
BISECTIONS = 2  # between the last sustained step and the first failure


def ladder(start: float, factor: float, limit: float) -> list[float]:
    """The ladder's rates: whole numbers, or tenths below 10/s (a ladder for many subscribers
    starts low: `ladder_start`)."""
    rates: list[float] = []
    rate = start
    while rate <= limit:
        rates.append(round(rate, 1) if rate < 10 else round(rate))
        rate *= factor
    return rates


def ladder_start(subscribers: int) -> float:
    """Where the ladder starts: LADDER_START updates/s up to 1,000 subscribers, the same
    deliveries/s (15,000) above, so that 10,000 subscribers start at 1.5/s, not at a rate past
    both servers."""
    return LADDER_START * min(1.0, 1000 / max(1, subscribers))


class Meter:
    """CPU used by the servers, the load generator and the whole machine over an interval."""

    def __init__(self, server_pids: list[int], loadgen_pids: list[int]) -> None:
        self.server_pids, self.loadgen_pids = server_pids, loadgen_pids

    def __enter__(self) -> Meter:
        self.start = time.monotonic()
        self.server = [common.cpu_seconds(p) for p in self.server_pids]
        self.loadgen = sum(common.cpu_seconds(p) for p in self.loadgen_pids)
        self.publisher = time.process_time()
        self.machine = common.machine_cpu_seconds()
        return self

    def __exit__(self, *exc: Any) -> None:
        elapsed = time.monotonic() - self.start
        server = [
            common.cpu_seconds(p) - s for p, s in zip(self.server_pids, self.server, strict=True)
        ]
        loadgen = sum(common.cpu_seconds(p) for p in self.loadgen_pids) - self.loadgen
        busy, total = common.machine_cpu_seconds()
        self.result: dict[str, Any] = {
            "seconds": round(elapsed, 2),
            "server_cpu_pct": [round(100 * s / elapsed, 1) for s in server],
            "loadgen_cpu_pct": round(100 * loadgen / elapsed, 1),
            "publisher_cpu_pct": round(100 * (time.process_time() - self.publisher) / elapsed, 1),
            "machine_busy_pct": round(
                100 * (busy - self.machine[0]) / max(1e-9, total - self.machine[1]), 1
            ),
        }
        # What else ran: the machine's busy share minus the benchmark's own processes.
        ours = (sum(server) + loadgen + time.process_time() - self.publisher) / elapsed
        cores = os.cpu_count() or 1
        self.result["other_load_pct"] = round(
            max(0.0, self.result["machine_busy_pct"] - 100 * ours / cores), 1
        )


def analyse(collected: dict[str, Any], log: Any, subscribers: int, rate: float) -> dict[str, Any]:
    sent, recv = collected["sent"], collected["recv"]
    latencies = [r - s for s, r in zip(sent, recv, strict=True)]
    published = log.ok()
    expected = published * subscribers
    summary = common.summarize_ms(latencies)
    result: dict[str, Any] = {
        "rate": rate,
        "published": published,
        "publish_errors": log.errors,
        "publish_statuses": {str(k): v for k, v in log.statuses.items()},
        "expected": expected,
        "received": len(latencies),
        "delivered_pct": round(100 * len(latencies) / expected, 2) if expected else None,
        "latency_ms": summary,
        "post_ms": common.summarize_ms(log.answered),
        "closes": collected["closes"],
        "errors": collected["errors"],
        "open_after": collected["open"],
    }
    # Per publish: when its first and its last subscriber got it. The first is the publish
    # path (HTTP, layer, hub); last - first is the time one broadcast takes to go out.
    firsts: dict[float, float] = {}
    lasts: dict[float, float] = {}
    for s, latency in zip(sent, latencies, strict=True):
        if latency < firsts.get(s, float("inf")):
            firsts[s] = latency
        if latency > lasts.get(s, float("-inf")):
            lasts[s] = latency
    result["first_delivery_ms"] = common.summarize_ms(firsts.values())
    result["last_delivery_ms"] = common.summarize_ms(lasts.values())
    result["spread_ms"] = common.summarize_ms(lasts[k] - firsts[k] for k in firsts)
    if log.sent:
        span = max(log.sent) - min(log.sent) + 1 / rate
        result["achieved_rate"] = round(published / span, 1)
        lateness = [s - sc for s, sc in zip(log.sent, log.scheduled, strict=True)]
        result["publisher_late_ms_p99"] = common.summarize_ms(lateness)["p99"]
        # Lag trend: median latency of the first and last third of the publishes.
        first, last = min(log.sent), max(log.sent)
        third = (last - first) / 3
        early, late = [], []
        for s, latency in zip(sent, latencies, strict=True):
            if s <= first + third:
                early.append(latency)
            elif s >= last - third:
                late.append(latency)
        if early and late:
            early_median = statistics.median(early)
            late_median = statistics.median(late)
            result["median_first_third_ms"] = round(early_median * 1000, 2)
            result["median_last_third_ms"] = round(late_median * 1000, 2)
            result["lag_growth_ms"] = round((late_median - early_median) * 1000, 2)
    return result


def sustained(step: dict[str, Any]) -> tuple[bool, str]:
    """Did this step hold its rate: everything delivered, on schedule, lag not growing?"""
    if not step["expected"]:
        return False, "nothing published"
    if step["publish_errors"] or step["published"] < 0.99 * step["requested"]:
        return False, "publishing failed"
    if step["delivered_pct"] < 99.9:
        return False, f"only {step['delivered_pct']}% delivered"
    if step.get("achieved_rate", 0) < 0.95 * step["rate"]:
        return False, f"publisher held {step.get('achieved_rate')}/s only"
    growth = step.get("lag_growth_ms") or 0.0
    early = step.get("median_first_third_ms") or 0.0
    if growth > max(25.0, 0.25 * early):
        return False, f"lag grew {growth} ms over the step"
    if -growth > max(25.0, 0.25 * early):  # a backlog still draining: not a steady state
        return False, f"lag fell {-growth} ms over the step (not steady)"
    return True, "sustained"


class FanoutSession:
    """A set of servers with N subscribers connected, ready to be published to."""

    def __init__(
        self,
        *,
        label: str,
        servers: list[common.Server],
        loadgen: LoadGenerator,
        subscribers: int,
        tokens: list[str | None],
        staff_token: str | None,
        concurrency: int,
        deflate: bool,
        subprotocols: list[str | None] | None = None,
    ) -> None:
        self.label = label
        self.servers = servers
        self.loadgen = loadgen
        self.subscribers = subscribers
        self.deflate = deflate
        self.connect = loadgen.connect(
            host=common.LOOPBACK,
            ports=[s.port for s in servers],
            path="/ws",
            tokens=tokens[:subscribers],
            topics=[[TOPIC]] * subscribers,
            concurrency=concurrency,
            deflate=deflate,
            subprotocols=subprotocols[:subscribers] if subprotocols else None,
        )
        if self.connect["opened"] != subscribers:
            raise RuntimeError(
                f"{label}: only {self.connect['opened']} of {subscribers} connected: "
                f"{self.connect['failures']}"
            )
        target = servers[0]
        self.publisher_args = (common.LOOPBACK, target.publish_port, target.publish_path)
        self.staff_token = staff_token
        self.rss_kib = [common.rss_kib(s.pid) for s in servers]

    def step(self, rate: float, seconds: float, grace: float) -> dict[str, Any]:
        count = max(1, int(rate * seconds))
        self.wait_idle()
        self.loadgen.record("tick")
        meter = Meter([s.pid for s in self.servers], self.loadgen.pids)

        async def publish() -> Any:
            publisher = Publisher(*self.publisher_args, token=self.staff_token)
            try:
                return await publisher.run(rate, count, tick_body(SYMBOL), drain_seconds=grace + 30)
            finally:
                publisher.close()

        with meter:  # CPU while publishing: the steady state at this rate
            started = time.time()
            log = asyncio.run(publish())
            ended = time.time()
        self.loadgen.wait_recorded(log.ok() * self.subscribers, quiet=grace)
        collected = self.loadgen.collect()
        result = analyse(collected, log, self.subscribers, rate)
        result["requested"] = count
        result["delivery_per_s"] = round(result["received"] / max(1e-9, count / rate))
        result["cpu"] = meter.result
        result["gc"] = [server.gc_pauses(started, ended) for server in self.servers]
        result["loop"] = [server.loop_latency(started, ended) for server in self.servers]
        # Bytes read by the clients per tick they recorded: frames with their headers.
        result["wire_bytes_per_message"] = (
            round(collected["wire_bytes"] / collected["messages"], 1)
            if collected["messages"]
            else None
        )
        deliveries = max(1, result["received"])
        elapsed = meter.result["seconds"]
        # CPU cost per delivered message: immune to other load on the machine.
        result["server_us_per_delivery"] = round(
            sum(meter.result["server_cpu_pct"]) / 100 * elapsed / deliveries * 1e6, 1
        )
        result["loadgen_us_per_delivery"] = round(
            meter.result["loadgen_cpu_pct"] / 100 * elapsed / deliveries * 1e6, 1
        )
        ok, why = sustained(result)
        result["sustained"], result["verdict"] = ok, why
        return result

    window = 0.2  # seconds over which a server's CPU use is judged (quick runs: shorter)

    def _server_busy(self) -> bool:
        """More than 20% of a core used by any server over `window` seconds."""
        window = self.window
        before = [common.cpu_seconds(s.pid) for s in self.servers]
        time.sleep(window)
        after = [common.cpu_seconds(s.pid) for s in self.servers]
        return any(b - a > 0.2 * window for a, b in zip(before, after, strict=True))

    def wait_idle(self, limit: float = 60.0) -> None:
        """Before a step: no delivery for a while and the servers idle (a backlog drained)."""
        deadline = time.monotonic() + limit
        previous, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            count = self.loadgen.status()["received"]
            if count != previous:
                previous, since = count, time.monotonic()
            elif time.monotonic() - since >= 2 * self.window and not self._server_busy():
                return
            time.sleep(0.05)


def run_session(
    session: FanoutSession,
    *,
    rate: float,
    duration: float,
    step_seconds: float,
    ladder_limit: float,
    grace: float,
    do_ladder: bool,
    log: Any,
) -> dict[str, Any]:
    """Warm up, run the fixed rate, then climb the ladder to the first unsustained rate."""
    if duration >= 1.0:
        session.step(min(rate, 10), 1.0, grace)  # warm-up: first ticks pay one-off costs
    fixed = session.step(rate, duration, grace)
    log(
        f"  {session.label}: {rate:g}/s for {duration:g}s -> p50 {fixed['latency_ms']['p50']} ms, "
        f"p99 {fixed['latency_ms']['p99']} ms, {fixed['verdict']}"
    )
    steps: list[dict[str, Any]] = []
    # The fixed-rate run counts as a step below the ladder when it held its rate.
    start = ladder_start(session.subscribers)
    best: dict[str, Any] | None = fixed if fixed["sustained"] and rate < start else None
    if do_ladder:
        failed: dict[str, Any] | None = None
        for step_rate in ladder(start, LADDER_FACTOR, ladder_limit):
            step = session.step(step_rate, step_seconds, grace)
            steps.append(step)
            log(
                f"  {session.label}: ladder {step_rate:g}/s -> "
                f"p99 {step['latency_ms']['p99']} ms, growth {step.get('lag_growth_ms')} ms, "
                f"server cpu {step['cpu']['server_cpu_pct']}%, "
                f"loadgen cpu {step['cpu']['loadgen_cpu_pct']}%: {step['verdict']}"
            )
            if step["sustained"]:
                best = step
            else:
                failed = step
                break
        # BISECTIONS between the last sustained rate and the first failure, while clients
        # survived the failures (a slow-consumer close leaves fewer subscribers than measured):
        # the ladder's 1.5x steps leave the highest rate uncertain by up to 50%, two halvings
        # by about 12%, so that a ratio of 0.9 can be told from 1.0.
        for _ in range(BISECTIONS):
            if (
                failed is None
                or best is None
                or session.loadgen.status()["open"] < session.subscribers
            ):
                break
            middle = (best["rate"] + failed["rate"]) / 2
            middle = round(middle, 1) if middle < 10 else round(middle)
            if not best["rate"] < middle < failed["rate"]:
                break
            step = session.step(middle, step_seconds, grace)
            steps.append(step)
            log(
                f"  {session.label}: bisect {middle:g}/s -> "
                f"p99 {step['latency_ms']['p99']} ms, "
                f"growth {step.get('lag_growth_ms')} ms: {step['verdict']}"
            )
            if step["sustained"]:
                best = step
            else:
                failed = step
    return {
        "label": session.label,
        "subscribers": session.subscribers,
        "deflate_offered": session.deflate,
        "connect": {
            "opened": session.connect["opened"],
            "failures": session.connect["failures"],
            "seconds": round(max(session.connect["finished"]) - session.connect["started_at"], 2),
        },
        "rss_kib_with_subscribers": session.rss_kib,
        "fixed": fixed,
        "ladder": steps,
        "max_sustained_rate": best["rate"] if best else None,
        "max_delivery_per_s": best["delivery_per_s"] if best else None,
        "ladder_exhausted": bool(steps) and steps[-1]["sustained"],
    }


def run(options: Any, log: Any = print) -> dict[str, Any]:
    """Scenarios 1, 5 and 6 (fan-out part), selected by options.server / options.processes."""
    quick = options.quick
    subscribers = options.subscribers or (20 if quick else 1000)
    duration = options.duration or (0.3 if quick else 10.0)
    step_seconds = options.step or (0.3 if quick else 5.0)
    ladder_limit = options.ladder_limit or (15.0 if quick else 1000.0)
    grace = 2.0 if quick else 3.0  # no receipt for this long: the rest is lost
    workers = options.workers or (2 if quick else 4)
    rate = options.rate
    redis_url = options.redis_url if options.processes > 1 else None
    name = options.name
    out_dir = Path(options.out) if options.out else None

    result: dict[str, Any] = {
        "machine": common.machine_info(),
        "params": {
            "server": options.server,
            "processes": options.processes,
            "channel_layer": "redis" if redis_url else "in-process",
            "database": options.db,
            "subscribers": subscribers,
            "rate": rate,
            "duration_s": duration,
            "ladder_step_s": step_seconds,
            "ladder": ladder(ladder_start(subscribers), LADDER_FACTOR, ladder_limit),
            "workers": workers,
            "deflate_offered": options.deflate,
            "quick": quick,
            "topic": TOPIC,
        },
    }
    common.raise_nofile()
    with common.scenario_workspace(options, users=20, tokens=subscribers) as space:
        tokens: list[str | None] = list(space.tokens(subscribers))
        staff_token = space.tokens(1, staff=True)[0]
        with LoadGenerator(workers) as loadgen:
            sessions = []
            redis_ctx = common.redis_prefix(redis_url) if redis_url else None
            prefix = redis_ctx.__enter__() if redis_ctx else None
            try:
                env = common.server_environment(
                    space,
                    database_url=space.fresh_database(),
                    redis=(redis_url, prefix) if redis_url and prefix else None,
                )
                servers = [
                    common.Server(
                        options.server, env, space.directory, extra_args=options.server_args
                    )
                    for _ in range(options.processes)
                ]
                with common.running(*servers):
                    label = (
                        f"{options.server} x{options.processes}"
                        if options.processes > 1
                        else options.server
                    )
                    session = FanoutSession(
                        label=label,
                        servers=servers,
                        loadgen=loadgen,
                        subscribers=subscribers,
                        tokens=tokens,
                        staff_token=staff_token,
                        concurrency=options.concurrency,
                        deflate=options.deflate,
                    )
                    session.window = 0.05 if quick else 0.2
                    measured = run_session(
                        session,
                        rate=rate,
                        duration=duration,
                        step_seconds=step_seconds,
                        ladder_limit=ladder_limit,
                        grace=grace,
                        do_ladder=not options.no_ladder,
                        log=log,
                    )
                    if options.profile and measured["max_sustained_rate"]:
                        measured["profile"] = profile_session(
                            session,
                            measured["max_sustained_rate"],
                            10.0 if not quick else 2.0,
                            space.directory / "profile",
                            options,
                            name,
                        )
                    loadgen.close_all()
                    sessions.append(measured)
            finally:
                if redis_ctx:
                    redis_ctx.__exit__(None, None, None)
            if not options.no_baseline:
                baseline = common.Server("baseline", space.base_environment(), space.directory)
                with common.running(baseline):
                    session = FanoutSession(
                        label="baseline",
                        servers=[baseline],
                        loadgen=loadgen,
                        subscribers=subscribers,
                        tokens=[None] * subscribers,
                        staff_token=None,
                        concurrency=options.concurrency,
                        deflate=options.deflate,
                    )
                    session.window = 0.05 if quick else 0.2
                    sessions.append(
                        run_session(
                            session,
                            rate=rate,
                            duration=duration,
                            step_seconds=step_seconds,
                            ladder_limit=ladder_limit,
                            grace=grace,
                            do_ladder=not options.no_ladder,
                            log=log,
                        )
                    )
                    loadgen.close_all()
    result["sessions"] = sessions
    result["summary"] = summarize(sessions, options)
    result["targets"] = targets(result["summary"], options)
    result["scenario"] = name
    path = common.write_result(name, result, out_dir)
    log(render(result))
    log(f"written: {path}")
    return result


def profile_session(
    session: FanoutSession, rate: float, seconds: float, directory: Path, options: Any, name: str
) -> dict[str, Any]:
    from bench.profiling import Profiler

    out = directory / f"{name}-{session.label.replace(' ', '')}.txt"
    profilers = [
        Profiler(s.pid, seconds, out.with_suffix(f".{i}.txt"))
        for i, s in enumerate(session.servers)
    ]
    time.sleep(0.5)
    step = session.step(rate, seconds, 2.0)
    summaries = [p.wait() for p in profilers]
    keep = Path(options.out or common.RESULTS_DIR) / "profiles"
    keep.mkdir(parents=True, exist_ok=True)
    for p in profilers:
        if p.out.exists():
            p.out.replace(keep / p.out.name)
    return {
        "rate": rate,
        "seconds": seconds,
        "step": {k: step[k] for k in ("latency_ms", "cpu")},
        "servers": summaries,
    }


def summarize(sessions: list[dict[str, Any]], options: Any) -> dict[str, Any]:
    by_label = {s["label"]: s for s in sessions}
    base = by_label.get("baseline")
    rows = []
    for s in sessions:
        fixed = s["fixed"]["latency_ms"]
        row = {
            "label": s["label"],
            "subscribers": s["subscribers"],
            "rate": s["fixed"]["rate"],
            "p50_ms": fixed["p50"],
            "p99_ms": fixed["p99"],
            "max_ms": fixed["max"],
            "delivered_pct": s["fixed"]["delivered_pct"],
            "max_sustained_rate": s["max_sustained_rate"],
            "max_delivery_per_s": s["max_delivery_per_s"],
            "server_cpu_pct_at_fixed": s["fixed"]["cpu"]["server_cpu_pct"],
            "server_us_per_delivery": s["fixed"]["server_us_per_delivery"],
            "loadgen_us_per_delivery": s["fixed"]["loadgen_us_per_delivery"],
            "first_delivery_p50_ms": s["fixed"]["first_delivery_ms"]["p50"],
            "spread_p50_ms": s["fixed"]["spread_ms"]["p50"],
            "gc_full_collections": sum(g["gen2"]["count"] for g in s["fixed"]["gc"]),
            "gc_full_max_ms": max(
                (g["gen2"]["max_ms"] or 0.0 for g in s["fixed"]["gc"]), default=None
            ),
            "other_load_pct": s["fixed"]["cpu"]["other_load_pct"],
        }
        if base is not None and s is not base:
            bf = base["fixed"]["latency_ms"]
            row["p50_ratio"] = common.ratio(fixed["p50"], bf["p50"])
            row["p99_ratio"] = common.ratio(fixed["p99"], bf["p99"])
            row["delivery_ratio"] = common.ratio(
                s["max_delivery_per_s"], base["max_delivery_per_s"]
            )
            row["cost_ratio"] = common.ratio(
                s["fixed"]["server_us_per_delivery"], base["fixed"]["server_us_per_delivery"]
            )
        rows.append(row)
    return {"rows": rows}


def targets(summary: dict[str, Any], options: Any) -> list[dict[str, Any]]:
    rows = [r for r in summary["rows"] if r["label"] != "baseline"]
    if not rows or "p99_ratio" not in rows[0]:
        return []
    row = rows[0]
    found = []
    # Round two's limits (issue 18): ratios against the baseline measured in the same run.
    limit = 1.5 if options.processes > 1 else 1.2
    tag = f"{row['label']}, {row['subscribers']} subscribers, {row['rate']:g}/s"
    if options.deflate:
        tag += ", deflate offered"
    found.append(
        common.target(
            f"fan-out p99 / baseline p99 ({tag})",
            row["p99_ratio"],
            f"<= {limit}",
            row["p99_ratio"] is not None and row["p99_ratio"] <= limit,
        )
    )
    found.append(
        common.target(
            f"{row['rate']:g} updates/s sustained ({tag})",
            row["delivered_pct"],
            "100% delivered, lag flat",
            bool(row["delivered_pct"] and row["delivered_pct"] >= 99.9),
        )
    )
    if options.server == "daphne" and options.processes == 1 and not options.deflate:
        found.append(
            common.target(
                f"server CPU per delivery / baseline's ({tag})",
                row.get("cost_ratio"),
                "<= 0.6",
                row.get("cost_ratio") is not None and row["cost_ratio"] <= 0.6,
            )
        )
        if not options.no_ladder:
            found.append(
                common.target(
                    f"highest sustained delivery rate / baseline's ({row['label']}, "
                    f"{row['subscribers']} subscribers)",
                    row.get("delivery_ratio"),
                    ">= 0.9",
                    row.get("delivery_ratio") is not None and row["delivery_ratio"] >= 0.9,
                )
            )
    return found


SUMMARY_COLUMNS = [
    ("server", "label"), ("subs", "subscribers"), ("rate/s", "rate"), ("p50 ms", "p50_ms"),
    ("p99 ms", "p99_ms"), ("max ms", "max_ms"), ("delivered %", "delivered_pct"),
    ("p50 x", "p50_ratio"), ("p99 x", "p99_ratio"), ("first p50 ms", "first_delivery_p50_ms"),
    ("spread p50 ms", "spread_p50_ms"), ("full GCs", "gc_full_collections"),
    ("GC max ms", "gc_full_max_ms"), ("max rate/s", "max_sustained_rate"),
    ("max deliveries/s", "max_delivery_per_s"), ("deliveries x", "delivery_ratio"),
    ("server us/delivery", "server_us_per_delivery"), ("cost x", "cost_ratio"),
    ("loadgen us/delivery", "loadgen_us_per_delivery"), ("other load %", "other_load_pct"),
]  # fmt: skip

LADDER_COLUMNS = [
    ("rate/s", lambda s: s["rate"]),
    ("p50 ms", lambda s: s["latency_ms"]["p50"]),
    ("p99 ms", lambda s: s["latency_ms"]["p99"]),
    ("max ms", lambda s: s["latency_ms"]["max"]),
    ("lag growth ms", lambda s: s.get("lag_growth_ms")),
    ("delivered %", lambda s: s["delivered_pct"]),
    ("server cpu %", lambda s: "+".join(str(c) for c in s["cpu"]["server_cpu_pct"])),
    ("server us/dlv", lambda s: s["server_us_per_delivery"]),
    ("loadgen cpu %", lambda s: s["cpu"]["loadgen_cpu_pct"]),
    ("loadgen us/dlv", lambda s: s["loadgen_us_per_delivery"]),
    ("machine %", lambda s: s["cpu"]["machine_busy_pct"]),
    ("other %", lambda s: s["cpu"].get("other_load_pct")),
    ("verdict", lambda s: s["verdict"]),
]


def render(result: dict[str, Any]) -> str:
    rows = result["summary"]["rows"]
    main = common.table(
        [header for header, _ in SUMMARY_COLUMNS],
        [[row.get(key) for _, key in SUMMARY_COLUMNS] for row in rows],
    )
    parts = [f"\n== {result.get('scenario', '')} fan-out ==", main]
    for session in result["sessions"]:
        if session["ladder"]:
            parts.append(f"\nladder: {session['label']}")
            parts.append(
                common.table(
                    [header for header, _ in LADDER_COLUMNS],
                    [[cell(step) for _, cell in LADDER_COLUMNS] for step in session["ladder"]],
                )
            )
    if result.get("targets"):
        parts += ["", common.targets_table(result["targets"])]
    return "\n".join(parts)
