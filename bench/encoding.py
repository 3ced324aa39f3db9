"""Scenario 8, encodings: fan-out to JSON, MessagePack and 50/50 mixed subscribers, same run.

CONTRACT section 12: a broadcast is encoded once per encoding in use, not once per connection,
so what MessagePack costs or saves shows in three figures, each taken on one Daphne process
with the in-process layer and compared with JSON subscribers of the same server in the same
run: bytes on the wire per message, server CPU per delivery, and fan-out latency (p50, p99).

Each repeat starts a new server and runs the three mixes on it in a rotated order (JSON first,
then MessagePack first, then the mix first), each with new connections: a warm-up second, the
fixed rate (10 updates/s by default: latency) and a loaded step (30/s by default: CPU per
delivery, where the per-message costs dominate the per-second ones). The bare `websockets`
baseline (JSON) runs once after, as in every fan-out scenario. Ratios are taken within a
repeat (mix / JSON of the same server) and reported as the median of the repeats with their
range.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from bench import common
from bench.fanout import TOPIC, FanoutSession
from bench.loadgen import MSGPACK, LoadGenerator

MIXES = ("json", "msgpack", "mix")


def subprotocols_for(mix: str, count: int) -> list[str | None]:
    """Per client: MessagePack for all, none, or every other client (the 50/50 mix)."""
    if mix == "msgpack":
        return [MSGPACK] * count
    if mix == "mix":
        return [MSGPACK if i % 2 else None for i in range(count)]
    return [None] * count


def measure(
    session: FanoutSession, rate: float, load_rate: float, duration: float, grace: float
) -> dict[str, Any]:
    session.step(min(rate, 10), 1.0 if duration >= 1 else duration, grace)  # warm-up
    fixed = session.step(rate, duration, grace)
    loaded = session.step(load_rate, duration, grace)
    return {"label": session.label, "fixed": fixed, "loaded": loaded}


def row_of(measured: dict[str, Any]) -> dict[str, Any]:
    fixed, loaded = measured["fixed"], measured["loaded"]
    return {
        "p50_ms": fixed["latency_ms"]["p50"],
        "p99_ms": fixed["latency_ms"]["p99"],
        "delivered_pct": min(fixed["delivered_pct"] or 0, loaded["delivered_pct"] or 0),
        "wire_bytes_per_message": fixed["wire_bytes_per_message"],
        "server_us_per_delivery": fixed["server_us_per_delivery"],
        "loaded_server_us_per_delivery": loaded["server_us_per_delivery"],
        "loaded_p99_ms": loaded["latency_ms"]["p99"],
        "loop_max_ms": max(
            (x["max_ms"] or 0.0 for step in (fixed, loaded) for x in step["loop"]), default=None
        ),
        "other_load_pct": fixed["cpu"]["other_load_pct"],
    }


RATIO_KEYS = (
    "p50_ms",
    "p99_ms",
    "wire_bytes_per_message",
    "server_us_per_delivery",
    "loaded_server_us_per_delivery",
    "loaded_p99_ms",
)


def spread(values: list[float | None]) -> dict[str, float | None]:
    present = [v for v in values if v is not None]
    if not present:
        return {"median": None, "min": None, "max": None}
    return {
        "median": round(statistics.median(present), 3),
        "min": round(min(present), 3),
        "max": round(max(present), 3),
    }


def summarize(repeats: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per mix: each figure's median and range over the repeats, and its ratio to JSON."""
    summary: dict[str, Any] = {}
    for mix in MIXES:
        rows = [repeat[mix] for repeat in repeats]
        entry: dict[str, Any] = {key: spread([r[key] for r in rows]) for key in rows[0]}
        if mix != "json":
            entry["ratio_to_json"] = {
                key: spread(
                    [common.ratio(repeat[mix][key], repeat["json"][key]) for repeat in repeats]
                )
                for key in RATIO_KEYS
            }
        summary[mix] = entry
    return summary


def run(options: Any, log: Any = print) -> dict[str, Any]:
    quick = options.quick
    subscribers = options.subscribers or (20 if quick else 1000)
    duration = options.duration or (0.3 if quick else 10.0)
    repeats = options.repeats or (1 if quick else 3)
    rate = options.rate
    load_rate = options.load_rate or (15.0 if quick else 30.0)
    grace = 2.0 if quick else 3.0
    workers = options.workers or (2 if quick else 4)
    out_dir = Path(options.out) if options.out else None
    result: dict[str, Any] = {
        "scenario": "encoding",
        "machine": common.machine_info(),
        "params": {
            "server": "daphne",
            "channel_layer": "in-process",
            "subscribers": subscribers,
            "rate": rate,
            "load_rate": load_rate,
            "duration_s": duration,
            "repeats": repeats,
            "workers": workers,
            "quick": quick,
            "topic": TOPIC,
        },
    }
    common.raise_nofile()
    runs: list[dict[str, dict[str, Any]]] = []
    raw: list[dict[str, Any]] = []
    with common.scenario_workspace(options, users=20, tokens=subscribers) as space:
        tokens: list[str | None] = list(space.tokens(subscribers))
        staff_token = space.tokens(1, staff=True)[0]
        with LoadGenerator(workers) as loadgen:

            def session_on(servers: list[common.Server], label: str, mix: str) -> FanoutSession:
                session = FanoutSession(
                    label=label,
                    servers=servers,
                    loadgen=loadgen,
                    subscribers=subscribers,
                    tokens=tokens if label != "baseline" else [None] * subscribers,
                    staff_token=staff_token if label != "baseline" else None,
                    concurrency=options.concurrency,
                    deflate=False,
                    subprotocols=subprotocols_for(mix, subscribers),
                )
                session.window = 0.05 if quick else 0.2
                return session

            env = common.server_environment(space, database_url=space.fresh_database())
            turn = getattr(options, "run_index", 0)  # the run of `all --repeat N`
            for repeat in range(repeats):
                order = MIXES[(repeat + turn) % 3 :] + MIXES[: (repeat + turn) % 3]
                server = common.Server(
                    "daphne", env, space.directory, extra_args=options.server_args
                )
                measured: dict[str, dict[str, Any]] = {}
                with common.running(server):
                    for mix in order:
                        session = session_on([server], f"daphne {mix}", mix)
                        step = measure(session, rate, load_rate, duration, grace)
                        loadgen.close_all()
                        measured[mix] = row_of(step)
                        raw.append({"repeat": repeat, "mix": mix, **step})
                        row = measured[mix]
                        log(
                            f"  repeat {repeat + 1} {mix}: {row['wire_bytes_per_message']} B/msg, "
                            f"p50 {row['p50_ms']} p99 {row['p99_ms']} ms at {rate:g}/s, "
                            f"{row['server_us_per_delivery']} us/delivery, "
                            f"{row['loaded_server_us_per_delivery']} us/delivery at {load_rate:g}/s"
                        )
                runs.append(measured)
            if not options.no_baseline:
                baseline = common.Server("baseline", space.base_environment(), space.directory)
                with common.running(baseline):
                    session = session_on([baseline], "baseline", "json")
                    step = measure(session, rate, load_rate, duration, grace)
                    loadgen.close_all()
                result["baseline"] = row_of(step)
                raw.append({"repeat": None, "mix": "baseline", **step})
    result["runs"] = runs
    result["steps"] = raw
    result["summary"] = summarize(runs)
    result["targets"] = []  # no target: what MessagePack buys is the finding (BENCHMARKS.md)
    path = common.write_result("encoding", result, out_dir)
    log(render(result))
    log(f"written: {path}")
    return result


COLUMNS = [
    ("B/msg", "wire_bytes_per_message"),
    ("p50 ms", "p50_ms"),
    ("p99 ms", "p99_ms"),
    ("us/delivery", "server_us_per_delivery"),
    ("us/delivery loaded", "loaded_server_us_per_delivery"),
    ("p99 ms loaded", "loaded_p99_ms"),
    ("loop max ms", "loop_max_ms"),
]


def _cell(value: dict[str, Any] | None) -> str:
    if not value or value.get("median") is None:
        return "-"
    return f"{value['median']:g} ({value['min']:g}-{value['max']:g})"


def render(result: dict[str, Any]) -> str:
    summary = result["summary"]
    rows = [[mix] + [_cell(summary[mix][key]) for _, key in COLUMNS] for mix in MIXES]
    if "baseline" in result:
        rows.append(["baseline"] + [str(result["baseline"].get(key)) for _, key in COLUMNS])
    parts = [
        "\n== encoding fan-out (median (min-max) of the repeats) ==",
        common.table(["subscribers"] + [h for h, _ in COLUMNS], rows),
    ]
    ratio_rows = [
        [mix] + [_cell(summary[mix]["ratio_to_json"].get(key)) for _, key in COLUMNS[:-1]]
        for mix in MIXES[1:]
    ]
    parts += [
        "\nratio to JSON subscribers of the same server, same repeat:",
        common.table(["subscribers"] + [h for h, _ in COLUMNS[:-1]], ratio_rows),
    ]
    return "\n".join(parts)
