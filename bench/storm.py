"""Reconnect storm (scenario 7): subscribers of a busy topic lose their server and resume.

Two Daphne processes on the Redis channel layer, A and B, as in scenario 5. The publisher posts
ticks to B at a steady rate (`POST /api/market-data/`, the product's path); B appends each to
the topic's history (seq, epoch) and the layer carries it to A. N clients of the load generator
subscribe to the topic on A. Then A is killed with SIGKILL. Each client notes the last seq it
got; when its connection drops it waits the reconnect delay plus a jitter (uniform, as the
JavaScript client's first attempt), reconnects to B and subscribes with `since` = that seq.

Measured, per client and overall: the time from the first reconnect until every client is
resumed (its `subscribed` reply received and the replayed messages up to the reply's position,
the head when its subscription took effect; everything after follows live), the messages
replayed, how many each had missed, and the check that nothing was lost: every client's seqs
after the reconnect are exactly since+1 .. the topic's last seq (read from Redis after the
publisher stopped), with no gap, no duplicate and none out of order. Resets are counted.

Baseline, same run, same processes: the same N clients connect to B on the same schedule
(the jitter) and subscribe fresh (no `since`); they are ready at their reply. The ratio is
storm / fresh. `--runs` (default 3) repeats the whole run on new servers; the summary gives
the median with min and max.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import common
from bench.loadgen import LoadGenerator, RejoinSpec, StreamSpec
from bench.publisher import Publisher, PublishLog, tick_body

SYMBOL = "BENCH"
TOPIC = f"market:{SYMBOL}"


class BackgroundPublisher:
    """Ticks to one server at `rate`/s from a thread (the parent's pipes block), until stopped:
    of `market:BENCH`, or what `body` builds (publisher.Publisher.run's `body_for`)."""

    def __init__(
        self,
        port: int,
        token: str,
        rate: float,
        body: Callable[[int, float], tuple[bytes, Any]] | None = None,
    ) -> None:
        self.args = (common.LOOPBACK, port, "/api/market-data/")
        self.token, self.rate = token, rate
        self.body = body or tick_body(SYMBOL)
        self._stop = threading.Event()
        self.log: PublishLog | None = None
        self._thread = threading.Thread(target=self._main, name="storm-publisher", daemon=True)

    def _main(self) -> None:
        async def publish() -> PublishLog:
            publisher = Publisher(*self.args, token=self.token)
            try:
                return await publisher.run(
                    self.rate,
                    int(self.rate * 3600),
                    self.body,
                    drain_seconds=10,
                    stop=self._stop.is_set,
                )
            finally:
                publisher.close()

        self.log = asyncio.run(publish())

    def start(self) -> BackgroundPublisher:
        self._thread.start()
        return self

    def stop(self) -> PublishLog:
        self._stop.set()
        self._thread.join(30)
        assert self.log is not None, "the publisher did not finish"
        return self.log


def topic_head(redis_url: str, prefix: str) -> tuple[str | None, int]:
    """The topic's (epoch, last seq) as the history on Redis holds them (realtime.history)."""
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        epoch, seq = client.hmget(f"{prefix}rt:h:{TOPIC}:m", "e", "s")
    finally:
        client.close()
    return (str(epoch) if epoch else None), int(seq or 0)


def log_summary(path: Path, limit: int = 12) -> dict[str, Any]:
    """The server's WARNING and ERROR lines, counted by their text without numbers or hex ids
    (a connection's id would make every line its own kind; the log level is WARNING: anything
    there is worth reading), and how many of them are errors (ERROR, CRITICAL, a traceback)."""
    import re

    counts: dict[str, int] = {}
    examples: dict[str, str] = {}
    errors = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    for line in lines:
        if "WARNING" not in line and "ERROR" not in line and "Traceback" not in line:
            continue
        errors += any(word in line for word in ("ERROR", "CRITICAL", "Traceback"))
        key = re.sub(r"[0-9a-f]{12,}|\d+", "N", line)[:160]
        counts[key] = counts.get(key, 0) + 1
        examples.setdefault(key, line[:400])
    top = sorted(counts, key=counts.__getitem__, reverse=True)[:limit]
    return {
        "lines": sum(counts.values()),
        "errors": errors,
        "top": [[counts[k], examples[k]] for k in top],
    }


def wait_for(
    loadgen: LoadGenerator, done: Callable[[dict[str, Any]], bool], limit: float
) -> tuple[dict[str, Any], float]:
    """Poll the load generator until `done(status)` or `limit` s; returns the last status and
    the wall-clock time it was seen."""
    deadline = time.monotonic() + limit
    while True:
        status = loadgen.stream_status()
        seen = time.time()
        if done(status) or time.monotonic() >= deadline:
            return status, seen
        time.sleep(0.02)


def settle(loadgen: LoadGenerator, final: int, quiet: float) -> dict[str, Any]:
    """Wait until every track has the topic's last seq, or nothing arrived for `quiet` s."""
    previous, since = -1, time.monotonic()
    while True:
        status = loadgen.stream_status()
        if status["min_last"] >= final:
            return status
        if status["received"] != previous:
            previous, since = status["received"], time.monotonic()
        elif time.monotonic() - since > quiet:
            return status
        time.sleep(0.05)


def spread(values: list[float]) -> dict[str, Any]:
    """count, min, p50, p90, p99, max of plain numbers (counts, seqs)."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0, "min": None, "p50": None, "p90": None, "p99": None, "max": None}
    return {
        "count": len(ordered),
        "min": ordered[0],
        "p50": common.percentile(ordered, 0.5),
        "p90": common.percentile(ordered, 0.9),
        "p99": common.percentile(ordered, 0.99),
        "max": ordered[-1],
    }


def analyse_phase(
    collected: dict[str, Any], leg_index: int, final: int, window: tuple[float, float]
) -> dict[str, Any]:
    """One phase's figures from every track's leg `leg_index` (0: first connection, 1: the
    reconnect after the kill), checked against the topic's last seq `final`."""
    tracks = collected["tracks"]
    legs = [t["legs"][leg_index] for t in tracks if len(t["legs"]) > leg_index]
    # Every connection from this one on is checked: a client closed again after it resumed
    # (the server lost its layer, say) reconnects once more, and its stream must still join.
    checked = [leg for t in tracks for leg in t["legs"][leg_index:]]
    clients = len(tracks)
    started = [leg["started_at"] for leg in legs if leg["started_at"] is not None]
    replied = [leg["reply_at"] for leg in legs if leg["reply_at"] is not None]
    caught_up = [leg["caught_up_at"] for leg in legs if leg.get("caught_up_at") is not None]
    first_live = [leg["first_live_at"] for leg in legs if leg.get("first_live_at") is not None]
    first = min(started) if started else None
    complete = len(caught_up) == clients

    def since_first(values: list[float]) -> float | None:
        if first is None or len(values) < clients:
            return None
        return round(max(values) - first, 3)

    per_client = {
        "reply_ms": common.summarize_ms(
            leg["reply_at"] - leg["started_at"] for leg in legs if leg["reply_at"] is not None
        ),
        "ready_ms": common.summarize_ms(
            leg["caught_up_at"] - leg["started_at"]
            for leg in legs
            if leg.get("caught_up_at") is not None
        ),
    }
    sent, recv = collected["live_sent"], collected["live_recv"]
    during = [r - s for s, r in zip(sent, recv, strict=True) if window[0] <= s <= window[1]]
    after = [r - s for s, r in zip(sent, recv, strict=True) if s > window[1]]
    resets: dict[str, int] = {}
    for leg in legs:
        if leg["reset"]:
            resets[leg["reset"]] = resets.get(leg["reset"], 0) + 1
    return {
        "clients": clients,
        "legs": len(legs),
        "all_ready": complete,
        "connect_span_s": round(max(started) - first, 3) if first is not None else None,
        "ready_s": since_first(caught_up),  # first (re)connect -> the last client ready
        "last_reply_s": since_first(replied),
        "last_first_live_s": since_first(first_live),
        "per_client": per_client,
        "recovered": sum(1 for leg in legs if leg["recovered"]),
        "resets": resets,
        "rejected": sum(1 for leg in legs if leg["rejected"]),
        "retried": sum(1 for leg in legs if leg["attempts"] > 1),
        "gave_up": sum(1 for leg in legs if leg["gave_up"]),
        "failures": sorted({f for leg in legs for f in leg["failures"]})[:10],
        "missed": spread([leg["missed"] for leg in legs if "missed" in leg]),
        "replayed": sum(leg.get("replayed", 0) for leg in checked),
        "lost": sum(leg.get("missing", 0) for leg in checked),
        "duplicates": sum(leg.get("duplicates", 0) for leg in checked),
        "out_of_order": sum(leg.get("out_of_order", 0) for leg in checked),
        "exact": sum(1 for t in tracks if all(leg.get("exact") for leg in t["legs"][leg_index:])),
        "unchecked": sum(1 for leg in checked if "exact" not in leg),
        "reconnected_again": sum(1 for t in tracks if len(t["legs"]) > leg_index + 1),
        "bad_epochs": sum(t["bad_epochs"] for t in tracks),
        "live_during_ms": common.summarize_ms(during),
        "live_after_ms": common.summarize_ms(after),
        "final_seq": final,
    }


def publish_summary(log: PublishLog, rate: float) -> dict[str, Any]:
    span = (max(log.sent) - min(log.sent)) if log.sent else 0.0
    return {
        "rate": rate,
        "published": log.ok(),
        "errors": log.errors,
        "resent": log.resent,
        "statuses": {str(k): v for k, v in log.statuses.items()},
        "achieved_rate": round((log.ok() - 1) / span, 1) if span > 0 else None,
        "post_ms": common.summarize_ms(log.answered),
    }


class StormRun:
    """One run: two new Daphne processes on a fresh Redis prefix and database."""

    def __init__(
        self,
        *,
        space: common.Workspace,
        loadgen: LoadGenerator,
        tokens: list[str | None],
        staff_token: str,
        redis_url: str,
        params: dict[str, Any],
        server_args: list[str],
        log: Any,
        number: int = 1,
        profile_dir: Path | None = None,
    ) -> None:
        self.space, self.loadgen, self.tokens = space, loadgen, tokens
        self.staff_token, self.redis_url = staff_token, redis_url
        self.params, self.server_args, self.log = params, server_args, log
        self.clients = len(tokens)
        self.number = number
        self.profile_dir = profile_dir  # py-spy on the survivor during the storm, if set

    def run(self) -> dict[str, Any]:
        with common.redis_prefix(self.redis_url) as prefix:
            self.prefix = prefix
            env = common.server_environment(
                self.space,
                database_url=self.space.fresh_database(),
                redis=(self.redis_url, prefix),
            )
            a, b = (
                common.Server("daphne", env, self.space.directory, extra_args=self.server_args)
                for _ in range(2)
            )
            with common.running(a, b):
                self.warm_up(a, b)
                fresh = self.fresh(b)
                storm = self.storm(a, b)
                storm["survivor_log"] = log_summary(b.log_path)
        storm["ratio"] = common.ratio(storm["ready_s"], fresh["ready_s"])
        storm["cpu_ratio"] = common.ratio(storm["survivor_cpu_s"], fresh["survivor_cpu_s"])
        return {"fresh": fresh, "storm": storm}

    def warm_up(self, *servers: common.Server) -> None:
        """A few clients through each process first: its hub starts on the first connection."""
        warm = self.tokens[: min(20, self.clients)]
        for server in servers:
            connect = self.loadgen.connect(
                host=common.LOOPBACK,
                ports=[server.port],
                path="/ws",
                tokens=warm,
                topics=[[TOPIC]] * len(warm),
                concurrency=20,
            )
            if connect["opened"] != len(warm):
                raise RuntimeError(f"warm-up failed: {connect['failures']}")
            self.loadgen.close_all()

    def _publish(self, b: common.Server) -> BackgroundPublisher:
        publisher = BackgroundPublisher(b.port, self.staff_token, self.params["rate"]).start()
        deadline = time.monotonic() + 30
        start = topic_head(self.redis_url, self.prefix)[1]
        while topic_head(self.redis_url, self.prefix)[1] < start + 5:  # the stream is flowing
            if time.monotonic() > deadline:
                raise RuntimeError(f"no tick reached the history:\n{b.log()}")
            time.sleep(0.05)
        return publisher

    def _finish(
        self, publisher: BackgroundPublisher, leg_index: int, window: tuple[float, float]
    ) -> dict[str, Any]:
        time.sleep(self.params["after_s"])  # live flow after everyone is back
        log = publisher.stop()
        epoch, final = topic_head(self.redis_url, self.prefix)
        settle(self.loadgen, final, quiet=self.params["settle_s"])
        collected = self.loadgen.stream_collect(final)
        self.loadgen.stream_close()
        result = analyse_phase(collected, leg_index, final, window)
        result["epoch"] = epoch
        result["publisher"] = publish_summary(log, self.params["rate"])
        result["closes"] = collected["closes"]
        result["errors"] = collected["errors"]
        if leg_index == 1:
            before = analyse_phase(collected, 0, final, window)
            result["before_kill"] = {
                k: before[k]
                for k in ("clients", "legs", "lost", "duplicates", "out_of_order", "unchecked")
            }
            last = [t["legs"][0].get("last_seq") for t in collected["tracks"]]
            result["last_seq_before_kill"] = spread([s for s in last if s is not None])
            lost_at = [t["legs"][0]["lost_at"] for t in collected["tracks"]]
            result["noticed_ms"] = common.summarize_ms(
                at - self.killed_at for at in lost_at if at is not None
            )
        return result

    def fresh(self, b: common.Server) -> dict[str, Any]:
        """Baseline: the same clients connect to B on the same schedule, subscribing fresh."""
        loadgen, n = self.loadgen, self.clients
        loadgen.stream_setup(self.tokens, TOPIC)
        publisher = self._publish(b)
        time.sleep(1.0)
        at = time.time() + 0.2
        cpu = common.cpu_seconds(b.pid)
        loadgen.stream_start(
            StreamSpec(common.LOOPBACK, b.port, "/ws", at=at, jitter=self.params["jitter_s"])
        )
        _, seen = wait_for(loadgen, lambda s: s["settled"].get("1", 0) >= n, self.params["limit_s"])
        cpu = common.cpu_seconds(b.pid) - cpu
        result = self._finish(publisher, 0, (at, seen))
        result["survivor_cpu_s"] = round(cpu, 3)
        self.log(
            f"  fresh: {n} clients ready {result['ready_s']} s after the first connect "
            f"(B cpu {result['survivor_cpu_s']} s); lost {result['lost']}"
        )
        self._quiet(b)
        return result

    def storm(self, a: common.Server, b: common.Server) -> dict[str, Any]:
        """The clients subscribe on A; A is SIGKILLed; they resume on B with `since`."""
        loadgen, n = self.loadgen, self.clients
        loadgen.stream_setup(self.tokens, TOPIC)
        publisher = self._publish(b)
        loadgen.stream_start(
            StreamSpec(common.LOOPBACK, a.port, "/ws", at=time.time() + 0.1, jitter=1.0)
        )
        status, _ = wait_for(loadgen, lambda s: s["resumed"].get("1", 0) >= n, 120)
        if status["resumed"].get("1", 0) < n:
            publisher.stop()
            raise RuntimeError(f"only {status['resumed']} of {n} subscribed on A: {status}")
        time.sleep(self.params["before_kill_s"])
        loadgen.stream_arm(
            RejoinSpec(
                common.LOOPBACK,
                b.port,
                "/ws",
                delay=self.params["reconnect_delay_s"],
                jitter=self.params["jitter_s"],
            )
        )
        assert a.process is not None
        head_at_kill = topic_head(self.redis_url, self.prefix)[1]
        self.killed_at = time.time()
        os.kill(a.pid, signal.SIGKILL)
        a.process.wait(10)
        cpu = common.cpu_seconds(b.pid)
        profiler = None
        if self.profile_dir is not None:
            from bench.profiling import Profiler

            # From just before the first reconnect until everyone is back (stopped then).
            time.sleep(max(0.0, self.params["reconnect_delay_s"] - 0.3))
            profiler = Profiler(b.pid, None, self.profile_dir / f"storm-survivor-{self.number}.txt")
        _, seen = wait_for(
            loadgen,
            lambda s: sum(v for k, v in s["settled"].items() if int(k) >= 2) >= n,
            self.params["limit_s"] + 30,
        )
        cpu = common.cpu_seconds(b.pid) - cpu
        profile = profiler.stop() if profiler is not None else None
        result = self._finish(publisher, 1, (self.killed_at, seen))
        if profile is not None:
            result["profile"] = profile
        result["head_at_kill"] = head_at_kill
        # B's CPU from the kill until all were back: the reconnects, resumes and replays, and
        # the live stream meanwhile (as in the fresh phase's window).
        result["survivor_cpu_s"] = round(cpu, 3)
        self.log(
            f"  storm: {n} clients ready {result['ready_s']} s after the first reconnect "
            f"(B cpu {result['survivor_cpu_s']} s); missed p50 {result['missed']['p50']} "
            f"({result['missed']['min']}-{result['missed']['max']}), replayed "
            f"{result['replayed']}, lost {result['lost']}, resets {result['resets']}"
        )
        return result

    def _quiet(self, server: common.Server, limit: float = 30.0) -> None:
        """Until the server uses under 10% of a core over 0.3 s (records written, etc.)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            before = common.cpu_seconds(server.pid)
            time.sleep(0.3)
            if common.cpu_seconds(server.pid) - before < 0.03:
                return


def median_range(values: list[Any]) -> dict[str, Any]:
    present = [v for v in values if v is not None]
    if not present:
        return {"median": None, "min": None, "max": None, "runs": values}
    return {
        "median": statistics.median(present),
        "min": min(present),
        "max": max(present),
        "runs": values,
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    storm = [r["storm"] for r in runs]
    fresh = [r["fresh"] for r in runs]
    return {
        "storm_ready_s": median_range([s["ready_s"] for s in storm]),
        "fresh_ready_s": median_range([f["ready_s"] for f in fresh]),
        "ratio": median_range([s["ratio"] for s in storm]),
        "storm_last_reply_s": median_range([s["last_reply_s"] for s in storm]),
        "fresh_last_reply_s": median_range([f["last_reply_s"] for f in fresh]),
        "storm_ready_p99_ms": median_range([s["per_client"]["ready_ms"]["p99"] for s in storm]),
        "fresh_ready_p99_ms": median_range([f["per_client"]["ready_ms"]["p99"] for f in fresh]),
        "storm_ready_p50_ms": median_range([s["per_client"]["ready_ms"]["p50"] for s in storm]),
        "fresh_ready_p50_ms": median_range([f["per_client"]["ready_ms"]["p50"] for f in fresh]),
        "storm_survivor_cpu_s": median_range([s["survivor_cpu_s"] for s in storm]),
        "fresh_survivor_cpu_s": median_range([f["survivor_cpu_s"] for f in fresh]),
        "cpu_ratio": median_range([s["cpu_ratio"] for s in storm]),
        "missed_p50": median_range([s["missed"]["p50"] for s in storm]),
        "missed_min": min((s["missed"]["min"] for s in storm if s["missed"]["count"]), default=0),
        "missed_max": max((s["missed"]["max"] for s in storm if s["missed"]["count"]), default=0),
        "replayed": median_range([s["replayed"] for s in storm]),
        "live_during_p99_ms": median_range([s["live_during_ms"]["p99"] for s in storm]),
        "live_after_p99_ms": median_range([s["live_after_ms"]["p99"] for s in storm]),
        "lost": sum(s["lost"] + s["before_kill"]["lost"] for s in storm)
        + sum(f["lost"] for f in fresh),
        "duplicates": sum(s["duplicates"] for s in storm) + sum(f["duplicates"] for f in fresh),
        "out_of_order": sum(s["out_of_order"] for s in storm)
        + sum(f["out_of_order"] for f in fresh),
        "unchecked": sum(s["unchecked"] for s in storm) + sum(f["unchecked"] for f in fresh),
        "resets": sum(sum(s["resets"].values()) for s in storm),
        "recovered": [s["recovered"] for s in storm],
        "exact": [s["exact"] for s in storm],
        "gave_up": sum(s["gave_up"] for s in storm) + sum(f["gave_up"] for f in fresh),
        "bad_epochs": sum(s["bad_epochs"] for s in storm) + sum(f["bad_epochs"] for f in fresh),
        "reconnected_again": sum(s["reconnected_again"] for s in storm),
        "publish_failures": sum(
            n
            for phase in (*storm, *fresh)
            for status, n in phase["publisher"]["statuses"].items()
            if not status.startswith("2")
        )
        + sum(sum(phase["publisher"]["errors"].values()) for phase in (*storm, *fresh)),
    }


def targets(summary: dict[str, Any], clients: int, runs: int) -> list[dict[str, Any]]:
    ratio = summary["ratio"]
    return [
        common.target(
            f"reconnect storm: messages lost ({clients} clients, {runs} runs)",
            summary["lost"] + summary["unchecked"],
            "0",
            summary["lost"] == 0 and summary["unchecked"] == 0 and summary["duplicates"] == 0,
        ),
        common.target(
            "reconnect storm: resets (all recovered)",
            summary["resets"],
            "0",
            summary["resets"] == 0 and all(r == clients for r in summary["recovered"]),
        ),
        common.target(
            "reconnect storm: time to all resumed / fresh subscribe (median)",
            ratio["median"],
            "reported",
            None,
        ),
    ]


def fmt_range(value: dict[str, Any], digits: int = 2) -> str:
    if value["median"] is None:
        return "-"
    if value["min"] == value["max"]:
        return common.fmt(value["median"], digits)
    return (
        f"{common.fmt(value['median'], digits)} "
        f"({common.fmt(value['min'], digits)}-{common.fmt(value['max'], digits)})"
    )


def render(result: dict[str, Any]) -> str:
    summary = result["summary"]
    runs = result["runs"]
    rows = []
    for number, run in enumerate(runs, 1):
        s, f = run["storm"], run["fresh"]
        rows.append(
            [
                number,
                common.fmt(s["ready_s"], 3),
                common.fmt(f["ready_s"], 3),
                common.fmt(s["ratio"], 2),
                s["per_client"]["ready_ms"]["p50"],
                s["per_client"]["ready_ms"]["p99"],
                f["per_client"]["ready_ms"]["p99"],
                f"{s['missed']['min']}/{s['missed']['p50']}/{s['missed']['max']}",
                s["replayed"],
                s["lost"] + s["before_kill"]["lost"] + f["lost"],
                sum(s["resets"].values()),
                s["recovered"],
                common.fmt(s["survivor_cpu_s"], 2),
                common.fmt(f["survivor_cpu_s"], 2),
                s["live_during_ms"]["p99"],
            ]
        )
    per_run = common.table(
        [
            "run", "storm s", "fresh s", "ratio", "storm p50 ms", "storm p99 ms",
            "fresh p99 ms", "missed min/p50/max", "replayed", "lost", "resets", "recovered",
            "B cpu storm s", "B cpu fresh s", "live p99 during ms",
        ],
        rows,
    )  # fmt: skip
    totals = common.table(
        ["figure", "median (min-max)"],
        [
            ["storm: first reconnect -> all resumed, s", fmt_range(summary["storm_ready_s"])],
            ["fresh: first connect -> all subscribed, s", fmt_range(summary["fresh_ready_s"])],
            ["ratio storm / fresh", fmt_range(summary["ratio"])],
            ["missed per client, p50", fmt_range(summary["missed_p50"], 0)],
            ["messages replayed", fmt_range(summary["replayed"], 0)],
            ["B cpu storm / fresh", fmt_range(summary["cpu_ratio"])],
            ["lost / duplicates / resets (all runs)",
             f"{summary['lost']} / {summary['duplicates']} / {summary['resets']}"],
        ],
    )  # fmt: skip
    return "\n".join(
        [f"\n== storm ({result['params']['clients']} clients) ==", per_run, "", totals, "",
         common.targets_table(result["targets"])]
    )  # fmt: skip


def run(options: Any, log: Any = print) -> dict[str, Any]:
    quick = options.quick
    clients = options.subscribers or (20 if quick else 1000)
    runs = options.runs or (1 if quick else 3)
    params = {
        "clients": clients,
        "topic": TOPIC,
        "rate": options.rate or 20.0,
        "reconnect_delay_s": options.reconnect_delay
        if options.reconnect_delay is not None
        else (0.5 if quick else 4.75),
        "jitter_s": options.jitter if options.jitter is not None else (0.2 if quick else 0.5),
        "before_kill_s": 0.5 if quick else 2.0,
        "after_s": 0.5 if quick else 2.0,
        "settle_s": 3.0 if quick else 5.0,
        "limit_s": 30.0 if quick else 120.0,
        "runs": runs,
        "workers": options.workers or (2 if quick else 4),
        "database": options.db,
        "quick": quick,
    }
    out_dir = Path(options.out) if options.out else None
    result: dict[str, Any] = {"machine": common.machine_info(), "params": params}
    common.raise_nofile()
    with common.scenario_workspace(options, users=20, tokens=clients) as space:
        tokens: list[str | None] = list(space.tokens(clients))
        staff_token = space.tokens(1, staff=True)[0]
        measured = []
        with LoadGenerator(params["workers"]) as loadgen:
            for number in range(1, runs + 1):
                if number > 1 and not quick:
                    quiet = common.wait_quiet(120)
                    log(f"  run {number}: machine {quiet['busy_pct']}% busy before it")
                log(f"  run {number} of {runs}")
                measured.append(
                    StormRun(
                        space=space,
                        loadgen=loadgen,
                        tokens=tokens,
                        staff_token=staff_token,
                        redis_url=options.redis_url,
                        params=params,
                        server_args=options.server_args,
                        log=log,
                        number=number,
                        profile_dir=(Path(options.out or common.RESULTS_DIR) / "profiles")
                        if options.profile
                        else None,
                    ).run()
                )
    result["runs"] = measured
    result["summary"] = summarize(measured)
    result["targets"] = targets(result["summary"], clients, runs)
    result["scenario"] = "storm"
    path = common.write_result("storm", result, out_dir)
    log(render(result))
    log(f"written: {path}")
    return result
