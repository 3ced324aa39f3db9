"""Scenario 11, soak: one Daphne under a steady mix for minutes, every message checked and the
server's resources sampled throughout.

One Daphne process (in-process layer, the topic history in memory: seq, epoch and resume as in
production), started as `bench churn` starts it, for `--minutes` (default 10) under, at once:

  publishing   ticks at `--rate` (default 20/s) through `POST /api/market-data/`, round-robin
               over `--topics` market topics (default 4);
  steady       `--subscribers` clients (default 200), one topic each (round-robin), connected
               throughout; each is a `loadgen.Track`: every seq of its topic from its first
               position to the topic's last, in order, once, of one epoch;
  resumers     `--resumers` clients (default 100), tracks too, each dropping its connection
               every `--resume-every` s on average (default 20) and coming back 0.5-1 s later
               with `since` = its last seq: every resume must come back `recovered` and its
               stream join exactly;
  churners     rounds of `--churn-batch` short-lived clients (default 100): connect, subscribe
               to 5 topics (the live ones and a quiet one), leave, as in scenario 10.

Every `--sample-every` s (default 5) the server is read: resident memory, open file descriptors,
threads (/proc), its asyncio tasks and pymalloc's allocated blocks (gcwatch's cheap probe on
SIGRTMIN+2, not the census: that lists every object and would pause the loop it measures), and
the connection rows in its database (`realtime_connection`), beside the clients the load
generator holds. The first sample is taken before any client, the last after every client has
left and the records are written. After the publisher stops, the topics' last seqs are read from
a fresh subscription's `positions`; every track is checked against them.

Verdicts: no message lost or duplicated (steady, resumers), every resume `recovered` and none
`reset`, memory growth over the second half of the run (least squares, KiB/min) under a limit,
descriptors, tasks and rows back to their starting level once the clients are gone, and nothing
logged at WARNING or above by the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import common
from bench.loadgen import LoadGenerator, RejoinSpec, StreamSpec
from bench.publisher import tick_body
from bench.storm import BackgroundPublisher, log_summary, publish_summary, wait_for

# Growth of resident memory over the second half of the run, KiB per minute, above which the
# server is not on a plateau. Scenario 10 measured 0.4 KiB left per churned connection over its
# 8,000; were that a steady leak, the default churn (about 40 connections/s) would grow the
# server by some 1,000 KiB/min, twice this. A plateau's slope is the noise of a few pages; the
# limit may be tightened once a 10-minute run shows that noise.
RSS_GROWTH_LIMIT_KIB_PER_MIN = 512.0
# How far above its starting level each count may end once every client has left: a thread
# pool's idle worker may hold a descriptor, a timer a task. Rows must all be gone.
END_SLACK = {"fds": 4, "tasks": 4, "rows": 0}
QUIET_TOPIC = "market:SOAKQUIET"  # subscribed by churners, never published


def ticks_over(symbols: list[str]) -> Callable[[int, float], tuple[bytes, Any]]:
    """Tick i goes to symbol i % len(symbols), each symbol's own ticks numbered from 0."""
    bodies = [tick_body(symbol) for symbol in symbols]

    def body(index: int, sent: float) -> tuple[bytes, Any]:
        return bodies[index % len(bodies)](index // len(bodies), sent)

    return body


def connection_rows(database_url: str) -> int:
    """Rows of realtime.Connection in the server's database: one per open connection."""
    query = "SELECT COUNT(*) FROM realtime_connection"
    if database_url.startswith("sqlite:///"):
        path = database_url.removeprefix("sqlite:///")
        # closing(): sqlite3's own context manager ends a transaction, not the connection.
        with contextlib.closing(
            sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        ) as db:
            return int(db.execute(query).fetchone()[0])
    import psycopg

    with psycopg.connect(database_url) as db:
        row = db.execute(query).fetchone()
        return int(row[0]) if row else 0


def topic_heads(port: int, token: str, topics: list[str]) -> dict[str, dict[str, Any]]:
    """Each topic's position (epoch, seq of its latest message), from a fresh subscription's
    reply: the server's own word, not the publisher's count."""
    from websockets.asyncio.client import connect

    async def read() -> dict[str, dict[str, Any]]:
        async with connect(f"ws://{common.LOOPBACK}:{port}/ws?token={token}") as socket:
            hello = json.loads(await socket.recv())
            if hello.get("type") != "AUTHENTICATION":
                raise RuntimeError(f"expected AUTHENTICATION, got {hello}")
            request = {"action": "subscribe", "topics": topics}
            await socket.send(json.dumps({"type": "SUBSCRIPTION", "id": 1, "payload": request}))
            while True:
                message = json.loads(await asyncio.wait_for(socket.recv(), 30))
                if message.get("type") == "SUBSCRIPTION":
                    return dict(message["payload"]["positions"])

    return asyncio.run(read())


class Churner:
    """Rounds of short-lived connections from a thread, on its own load generator (whose pipes
    only this thread uses), until stopped; `in_flight` is the round's open count."""

    def __init__(
        self,
        loadgen: LoadGenerator,
        port: int,
        tokens: list[str | None],
        topics: list[str],
        pause: float,
    ) -> None:
        self.loadgen, self.port, self.tokens, self.pause = loadgen, port, tokens, pause
        self.topics = topics
        self.rounds = self.opened = self.in_flight = 0
        self.failures: dict[str, int] = {}
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="soak-churn", daemon=True)

    def _main(self) -> None:
        try:
            while not self._stop.is_set():
                connect = self.loadgen.connect(
                    host=common.LOOPBACK,
                    ports=[self.port],
                    path="/ws",
                    tokens=self.tokens,
                    topics=[self.topics] * len(self.tokens),
                    concurrency=len(self.tokens),
                )
                self.in_flight = connect["opened"]
                self.opened += connect["opened"]
                for key, count in connect["failures"].items():
                    self.failures[key] = self.failures.get(key, 0) + count
                self.loadgen.close_all()
                self.in_flight = 0
                self.rounds += 1
                self._stop.wait(self.pause)
        except Exception as exc:  # reported in the result; the run goes on without churn
            self.error = repr(exc)

    def start(self) -> Churner:
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(120)
        return {
            "rounds": self.rounds,
            "opened": self.opened,
            "failures": self.failures,
            "error": self.error,
        }


def sample(
    server: common.Server,
    database_url: str,
    started: float,
    phase: str,
    clients_open: int | None,
) -> dict[str, Any]:
    """One reading of the server: /proc, gcwatch's probe and the connection rows."""
    probe = server.probe() or {}
    return {
        "t": round(time.time() - started, 2),
        "phase": phase,
        "rss_kib": common.rss_kib(server.pid),
        "fds": common.open_fds(server.pid),
        "fd_kinds": common.fd_kinds(server.pid) if phase in ("start", "end") else None,
        "threads": common.threads(server.pid),
        "tasks": probe.get("tasks"),
        "allocated_blocks": probe.get("allocated_blocks"),
        "rows": connection_rows(database_url),
        "clients_open": clients_open,
        "cpu_s": round(common.cpu_seconds(server.pid), 2),
    }


def slope_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per minute; None under 3 points."""
    if len(points) < 3 or len({t for t, _ in points}) < 2:
        return None
    fitted = statistics.linear_regression([t for t, _ in points], [v for _, v in points])
    return round(fitted.slope * 60, 1)


def check_tracks(collected: dict[str, Any]) -> dict[str, Any]:
    """Every leg of every track, checked (loadgen.Track.summary): what was lost, duplicated or
    out of order; for the legs that resumed, how many came back recovered or reset."""
    tracks = collected["tracks"]
    legs = [leg for track in tracks for leg in track["legs"]]
    resumes = [leg for leg in legs if leg["since"] is not None]
    resets: dict[str, int] = {}
    for leg in resumes:
        if leg["reset"]:
            resets[leg["reset"]] = resets.get(leg["reset"], 0) + 1
    return {
        "clients": len(tracks),
        "legs": len(legs),
        "received": sum(leg["received"] for leg in legs),
        "lost": sum(leg.get("missing", 0) for leg in legs),
        "duplicates": sum(leg.get("duplicates", 0) for leg in legs),
        "out_of_order": sum(leg.get("out_of_order", 0) for leg in legs),
        "unchecked": sum(1 for leg in legs if "exact" not in leg),
        "exact_clients": sum(1 for t in tracks if all(leg.get("exact") for leg in t["legs"])),
        "bad_epochs": sum(t["bad_epochs"] for t in tracks),
        "reconnected": sum(1 for t in tracks if len(t["legs"]) > 1),
        "resumes": len(resumes),
        "recovered": sum(1 for leg in resumes if leg["recovered"]),
        "resets": resets,
        "gave_up": sum(1 for leg in legs if leg["gave_up"]),
        "retried": sum(1 for leg in legs if leg["attempts"] > 1),
        "replayed": sum(leg.get("replayed", 0) for leg in resumes),
        "failures": sorted({f for leg in legs for f in leg["failures"]})[:10],
        # Publish -> receipt of the messages that came live on each client's last connection:
        # over a soak, a latency that creeps up is a backlog building.
        "live_ms": common.summarize_ms(
            r - s
            for s, r in zip(
                collected.get("live_sent", ()), collected.get("live_recv", ()), strict=True
            )
        ),
        "closes": collected["closes"],
        "errors": collected["errors"],
    }


def clean(checked: dict[str, Any]) -> bool:
    """Nothing lost, duplicated, out of order, of another epoch or left unchecked."""
    keys = ("lost", "duplicates", "out_of_order", "unchecked", "bad_epochs", "gave_up")
    return all(checked[key] == 0 for key in keys)


def fd_growth(start: dict[str, Any], end: dict[str, Any]) -> str:
    """Which kinds of file descriptor the server holds more of at the end than at the start."""
    before, after = start.get("fd_kinds") or {}, end.get("fd_kinds") or {}
    grown = {kind: after[kind] - before.get(kind, 0) for kind in after}
    return ", ".join(f"{kind} +{n}" for kind, n in grown.items() if n > 0)


def verdicts(result: dict[str, Any]) -> list[dict[str, Any]]:
    steady, resumers = result["steady"], result["resumers"]
    start, end = result["start"], result["end"]
    growth = result["summary"]["rss_growth_kib_per_min_second_half"]
    # A quick run's second half is seconds of the allocator warming up: reported, not judged.
    growth_met = (
        None
        if growth is None or result["params"]["quick"]
        else (growth <= RSS_GROWTH_LIMIT_KIB_PER_MIN)
    )
    targets = [
        common.target(
            f"soak: steady subscribers, messages lost + duplicated ({steady['clients']} clients)",
            steady["lost"] + steady["duplicates"],
            "0",
            clean(steady) and steady["reconnected"] == 0,
            "every seq from each client's first position to its topic's last, once, in order",
        ),
        common.target(
            f"soak: resumers, messages lost + duplicated ({resumers['resumes']} resumes)",
            resumers["lost"] + resumers["duplicates"],
            "0",
            clean(resumers),
        ),
        common.target(
            "soak: resumes recovered (none reset)",
            f"{resumers['recovered']} of {resumers['resumes']}",
            "all",
            resumers["resumes"] > 0
            and resumers["recovered"] == resumers["resumes"]
            and not resumers["resets"],
        ),
        common.target(
            "soak: RSS growth over the second half, KiB/min",
            growth,
            f"<= {RSS_GROWTH_LIMIT_KIB_PER_MIN:.0f}",
            growth_met,
            "" if growth_met is not None else "not judged: too short a run",
        ),
    ]
    for key, name in (("fds", "open fds"), ("tasks", "asyncio tasks"), ("rows", "connection rows")):
        before, after = start.get(key), end.get(key)
        met = None if before is None or after is None else after - before <= END_SLACK[key]
        targets.append(
            common.target(
                f"soak: {name} after the clients left, start -> end",
                f"{before} -> {after}",
                f"start + {END_SLACK[key]}",
                met,
                fd_growth(start, end) if key == "fds" else "",
            )
        )
    log = result["server_log"]
    targets.append(
        common.target("soak: server log errors (ERROR, tracebacks)", log.get("errors", 0), "0",
                      log.get("errors", 0) == 0)
    )  # fmt: skip
    targets.append(
        common.target("soak: server log warnings", log.get("lines", 0) - log.get("errors", 0),
                      "reported", None, "server_log.top in the JSON has them, by kind")
    )  # fmt: skip
    publishing = result["publisher"]
    refused = sum(n for status, n in publishing["statuses"].items() if not status.startswith("2"))
    failed = (
        refused + sum(publishing["errors"].values()) + sum(result["churn"]["failures"].values())
    )
    targets.append(
        common.target(
            "soak: publishes and churn connects that failed",
            failed,
            "0",
            failed == 0 and result["churn"]["error"] is None,
        )
    )
    return targets


def render(result: dict[str, Any]) -> str:
    rows = [
        [s["t"], s["phase"], s["rss_kib"], s["fds"], s["threads"], s["tasks"],
         s["allocated_blocks"], s["rows"], s["clients_open"], s["cpu_s"]]
        for s in result["samples"]
    ]  # fmt: skip
    series = common.table(
        ["t s", "phase", "RSS KiB", "fds", "threads", "tasks", "blocks", "rows", "clients",
         "cpu s"],
        rows,
    )  # fmt: skip
    totals = common.table(
        ["", "clients", "received", "lost", "duplicates", "resumes", "recovered", "resets",
         "live p50 ms", "live p99 ms"],
        [
            [name, group["clients"], group["received"], group["lost"], group["duplicates"],
             group["resumes"], group["recovered"], sum(group["resets"].values()),
             group["live_ms"]["p50"], group["live_ms"]["p99"]]
            for name, group in (("steady", result["steady"]), ("resumers", result["resumers"]))
        ],
    )  # fmt: skip
    params = result["params"]
    return "\n".join(
        [
            f"\n== soak ({params['minutes']} min, {params['rate']}/s over "
            f"{len(params['topics'])} topics, {params['subscribers']} steady, "
            f"{params['resumers']} resumers, churn {params['churn_batch']} a round) ==",
            series,
            "",
            totals,
            "",
            common.targets_table(result["targets"]),
            *(f"{t['target']}: {t['note']}" for t in result["targets"] if t.get("note")),
        ]
    )


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    duration = result["params"]["minutes"] * 60
    during = [s for s in result["samples"] if s["phase"] == "run"]
    second_half = [s for s in during if s["t"] >= result["run_started_t"] + duration / 2]
    return {
        "rss_growth_kib_per_min_second_half": slope_per_min(
            [(s["t"], s["rss_kib"]) for s in second_half]
        ),
        "blocks_growth_per_min_second_half": slope_per_min(
            [(s["t"], s["allocated_blocks"]) for s in second_half if s["allocated_blocks"]]
        ),
        "rss_kib": {
            "start": result["start"]["rss_kib"],
            "max": max((s["rss_kib"] for s in during), default=None),
            "end": result["end"]["rss_kib"],
        },
        "max_during": {
            key: max((s[key] for s in during if s[key] is not None), default=None)
            for key in ("fds", "threads", "tasks", "rows", "clients_open")
        },
        "published": result["publisher"]["published"],
        "heads_total": sum(int(h["seq"]) for h in result["heads"].values()),
        "steady_lost": result["steady"]["lost"],
        "resumers_lost": result["resumers"]["lost"],
        "resumes": result["resumers"]["resumes"],
        "churned": result["churn"]["opened"],
    }


class Soak:
    """One soak run against a started server, with three load generators: the steady
    subscribers', the resumers' (armed to come back with `since`) and the churners'."""

    def __init__(
        self,
        *,
        server: common.Server,
        database_url: str,
        loadgens: tuple[LoadGenerator, LoadGenerator, LoadGenerator],
        tokens: list[str | None],
        staff_token: str,
        params: dict[str, Any],
        log: Any,
    ) -> None:
        self.server, self.database_url = server, database_url
        self.steady, self.resumers, self.churn = loadgens
        self.params, self.log = params, log
        steady_n, resumers_n = params["subscribers"], params["resumers"]
        self.steady_tokens = tokens[:steady_n]
        self.resumer_tokens = tokens[steady_n : steady_n + resumers_n]
        self.churn_tokens = tokens[steady_n + resumers_n : -1]
        self.probe_token = str(tokens[-1])
        self.staff_token = staff_token
        self.samples: list[dict[str, Any]] = []
        self.started = time.time()
        self.churner: Churner | None = None

    def _clients_open(self) -> int:
        churning = self.churner.in_flight if self.churner is not None else 0
        return self.steady.status()["open"] + self.resumers.status()["open"] + churning

    def _sample(self, phase: str, clients_open: int | None = None) -> dict[str, Any]:
        if clients_open is None:
            clients_open = self._clients_open()
        reading = sample(self.server, self.database_url, self.started, phase, clients_open)
        self.samples.append(reading)
        return reading

    def _subscribe(self, loadgen: LoadGenerator, tokens: list[str | None], what: str) -> None:
        topics = self.params["topics"]
        loadgen.stream_setup(tokens, [topics[n % len(topics)] for n in range(len(tokens))])
        loadgen.stream_start(
            StreamSpec(common.LOOPBACK, self.server.port, "/ws", at=time.time() + 0.1, jitter=1.0)
        )
        n = len(tokens)
        status, _ = wait_for(loadgen, lambda s: s["resumed"].get("1", 0) >= n, 120)
        if status["resumed"].get("1", 0) < n:
            raise RuntimeError(f"only {status['resumed']} of {n} {what} subscribed: {status}")

    def _wait_rows(self, expected: int, limit: float) -> None:
        """Until the records writer has caught up: `expected` rows, or `limit` s."""
        deadline = time.monotonic() + limit
        while connection_rows(self.database_url) != expected and time.monotonic() < deadline:
            time.sleep(0.2)

    def run(self) -> dict[str, Any]:
        params, server = self.params, self.server
        warm = self.churn_tokens[: min(10, len(self.churn_tokens))]
        self.churn.connect(
            host=common.LOOPBACK,
            ports=[server.port],
            path="/ws",
            tokens=warm,
            topics=[params["churn_topics"]] * len(warm),
            concurrency=len(warm),
        )  # the hub starts on the first connection: not part of the start level
        self.churn.close_all()
        self._wait_rows(0, 15)
        time.sleep(params["settle_s"])
        start = self._sample("start", 0)
        publisher = BackgroundPublisher(
            server.port, self.staff_token, params["rate"], ticks_over(
                [topic.split(":", 1)[1] for topic in params["topics"]]
            )
        ).start()  # fmt: skip
        self._subscribe(self.steady, self.steady_tokens, "steady subscribers")
        self._subscribe(self.resumers, self.resumer_tokens, "resumers")
        self.resumers.stream_arm(
            RejoinSpec(
                common.LOOPBACK,
                server.port,
                "/ws",
                delay=params["reconnect_delay_s"],
                jitter=params["jitter_s"],
            )
        )
        self.churner = Churner(
            self.churn,
            server.port,
            self.churn_tokens,
            params["churn_topics"],
            params["churn_pause_s"],
        ).start()
        run_started = time.time()
        run_started_t = round(run_started - self.started, 2)
        duration = params["minutes"] * 60
        self.log(
            f"  soak: {len(self.steady_tokens)} steady, {len(self.resumer_tokens)} resumers, "
            f"churn of {len(self.churn_tokens)}, for {duration:.0f} s"
        )
        next_sample = next_drop = time.monotonic()
        deadline = time.monotonic() + duration
        drop_fraction = 1.0 / params["resume_every_s"]  # per second: one drop every N s each
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_drop:
                self.resumers.stream_drop(drop_fraction)
                next_drop += 1.0
            if now >= next_sample:
                self._sample("run")
                next_sample += params["sample_every_s"]
            if not server.alive():
                raise RuntimeError(f"the server exited during the soak:\n{server.log()}")
            time.sleep(max(0.0, min(next_drop, next_sample, deadline) - time.monotonic()))
        churned = self.churner.stop()
        self.churner = None
        n = len(self.resumer_tokens)
        time.sleep(0.2)  # the last drops' connections close: those tracks then show as lost
        wait_for(self.resumers, lambda s: s["lost"] == 0 and sum(s["resumed"].values()) >= n, 60)
        publishing = publish_summary(publisher.stop(), params["rate"])
        heads = topic_heads(server.port, self.probe_token, params["topics"])
        final = {topic: int(position["seq"]) for topic, position in heads.items()}
        for loadgen in (self.steady, self.resumers):
            settle(loadgen, params["settle_s"])
        steady = check_tracks(self.steady.stream_collect(final))
        resumers = check_tracks(self.resumers.stream_collect(final))
        self._sample("stopped")  # publisher and churn stopped, clients still connected
        self.steady.stream_close()
        self.resumers.stream_close()
        self._wait_rows(start["rows"], 30)
        time.sleep(params["settle_s"])
        end = self._sample("end", 0)
        self.log(
            f"  steady lost {steady['lost']}, duplicated {steady['duplicates']}; resumers "
            f"{resumers['resumes']} resumes, {resumers['recovered']} recovered, lost "
            f"{resumers['lost']}; churned {churned['opened']} in {churned['rounds']} rounds"
        )
        return {
            "samples": self.samples,
            "start": start,
            "end": end,
            "run_started_t": run_started_t,
            "heads": heads,
            "publisher": publishing,
            "steady": steady,
            "resumers": resumers,
            "churn": churned,
            "gc": server.gc_pauses(run_started, run_started + duration),
            "loop": server.loop_latency(run_started, run_started + duration),
        }


def settle(loadgen: LoadGenerator, quiet: float) -> None:
    """Until no message has arrived for `quiet` s: every topic's last seq is delivered by then
    (the tracks' own check says whether it was)."""
    previous, since = -1, time.monotonic()
    deadline = since + 60
    while time.monotonic() < deadline:
        received = loadgen.stream_status()["received"]
        if received != previous:
            previous, since = received, time.monotonic()
        elif time.monotonic() - since > quiet:
            return
        time.sleep(0.05)


def run(options: Any, log: Any = print) -> dict[str, Any]:
    quick = options.quick
    minutes = options.minutes or (0.3 if quick else 10.0)
    topics = [f"market:SOAK{index}" for index in range(options.topics or 4)]
    params: dict[str, Any] = {
        "minutes": minutes,
        "rate": options.rate or 20.0,
        "topics": topics,
        "churn_topics": [*topics, QUIET_TOPIC][-5:],
        "subscribers": options.subscribers or (20 if quick else 200),
        "resumers": options.resumers or (10 if quick else 100),
        "resume_every_s": options.resume_every or (3.0 if quick else 20.0),
        "reconnect_delay_s": 0.2 if quick else 0.5,
        "jitter_s": 0.2 if quick else 0.5,
        "churn_batch": options.churn_batch or (10 if quick else 100),
        "churn_pause_s": 0.5 if quick else 2.0,
        "sample_every_s": options.sample_every or (1.0 if quick else 5.0),
        "settle_s": 1.0 if quick else 3.0,
        "workers": options.workers or (1 if quick else 2),
        "database": options.db,
        "quick": quick,
    }
    out_dir = Path(options.out) if options.out else None
    result: dict[str, Any] = {"machine": common.machine_info(), "params": params}
    common.raise_nofile()
    steady_n, resumers_n, batch = params["subscribers"], params["resumers"], params["churn_batch"]
    count = steady_n + resumers_n + batch + 1  # and one to read the topics' heads at the end
    with common.scenario_workspace(options, users=20, tokens=count) as space:
        tokens: list[str | None] = list(space.tokens(count))
        staff_token = space.tokens(1, staff=True)[0]
        database_url = space.fresh_database()
        env = common.server_environment(space, database_url=database_url)
        server = common.Server("daphne", env, space.directory, extra_args=options.server_args)
        with (
            common.running(server),
            LoadGenerator(params["workers"]) as steady,
            LoadGenerator(1) as resumers,
            LoadGenerator(1) as churn,
        ):
            result |= Soak(
                server=server,
                database_url=database_url,
                loadgens=(steady, resumers, churn),
                tokens=tokens,
                staff_token=staff_token,
                params=params,
                log=log,
            ).run()
            result["server_log"] = log_summary(server.log_path)
    result["summary"] = summarize(result)
    result["targets"] = verdicts(result)
    path = common.write_result("soak", result, out_dir)
    log(render(result))
    log(f"written: {path}")
    return result
