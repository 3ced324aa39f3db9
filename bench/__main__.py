"""`python -m bench SCENARIO [options]`: one command per scenario (docs/BENCHMARKS.md).

  fanout        1. N subscribers of one topic: latency at a fixed rate, highest sustained rate
  e2e           2. an order fill through the REST API to the ORDER_UPDATE at its subscribers
  connections   3. authenticated connections one process holds: connect rate, memory each
  status        4. /ws/status latency with N tracked connections
  fanout-redis  5. fan-out with two Daphne processes on the Redis channel layer
  uvicorn       6. scenarios 1 and 3 under uvicorn (also with permessage-deflate offered)
  storm         7. reconnect storm: subscribers of a SIGKILLed process resume on the other
  encoding      8. fan-out to JSON, MessagePack and 50/50 mixed subscribers, same run
  throttle      9. 1,000 connections x 20 symbols throttled at 250 ms against unthrottled
  churn        10. memory left behind by 8,000 connections that connected, subscribed, left
  all           every scenario above, in order (--quick: tiny sizes, for the test suite)
  soak         11. 10 minutes of ticks, steady subscribers, resumers and churn on one Daphne:
                no message lost, memory on a plateau, resources back at the end (not in `all`)
  curves        growth curves: fan-out by subscribers, memory by connections, rate by
                processes, each with the baseline, drawn as PNG (not part of `all`)
  plot          draw the curves again from a curves.json

Each prints its tables and writes bench/results/<name>.json (--out to write elsewhere). Every
scenario with a comparable figure also measures the bare `websockets` baseline in the same run.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import common

# The servers a scenario can run the module under (`--server`); granian is measured beside
# Daphne and uvicorn for issue 18 (docs/BENCHMARKS.md), not deployed.
SERVERS = ["daphne", "uvicorn", "granian"]


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it works")
    parser.add_argument("--out", help="directory for the JSON results (default bench/results)")
    parser.add_argument("--workers", type=int, default=0, help="load generator processes")
    parser.add_argument("--concurrency", type=int, default=200, help="connects in flight")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--postgres-url", default=common.DEFAULT_POSTGRES_URL)
    parser.add_argument("--redis-url", default=common.DEFAULT_REDIS_URL)
    parser.add_argument("--profile", action="store_true", help="also record a py-spy profile")
    parser.add_argument(
        "--server-args",
        nargs=argparse.REMAINDER,
        default=[],
        help="extra arguments for the server command (last on the line)",
    )


def _fanout_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--subscribers", type=int, default=0, help="default 1000 (quick: 20)")
    parser.add_argument("--rate", type=float, default=10.0, help="fixed rate, updates/s")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds at the fixed rate")
    parser.add_argument("--step", type=float, default=0.0, help="seconds per ladder step")
    parser.add_argument("--ladder-limit", type=float, default=0.0, help="highest ladder rate")
    parser.add_argument("--no-ladder", action="store_true")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--deflate", action="store_true", help="clients offer permessage-deflate")


def _connections_arguments(parser: argparse.ArgumentParser, *, alone: bool = True) -> None:
    parser.add_argument("--connections", type=int, default=0, help="default 10000 (quick: 40)")
    parser.add_argument("--hold", type=float, default=0.0, help="seconds to hold them open")
    if alone:
        parser.add_argument("--no-baseline", action="store_true")
        parser.add_argument("--deflate", action="store_true", help="clients offer deflate")


def _counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="scenario", required=True)
    for name in ("fanout", "fanout-redis"):
        sub = commands.add_parser(name, help=f"scenario {name}")
        _common_arguments(sub)
        _fanout_arguments(sub)
        if name == "fanout":
            sub.add_argument("--server", choices=SERVERS, default="daphne")
    sub = commands.add_parser("e2e", help="order fill -> ORDER_UPDATE")
    _common_arguments(sub)
    sub.add_argument("--subscribers", type=int, default=0, help="default 100 (quick: 4)")
    sub.add_argument("--fills", type=int, default=0, help="default 200 (quick: 5)")
    sub.add_argument("--rate", type=float, default=10.0, help="fills per second")
    sub = commands.add_parser("connections", help="connections one process holds")
    _common_arguments(sub)
    _connections_arguments(sub)
    sub.add_argument("--server", choices=SERVERS, default="daphne")
    sub.add_argument(
        "--bare",
        action="store_true",
        help="serve bench/bare_asgi.py (the baseline's work per connection, nothing of ours) "
        "under the same server: its floor; an extra row, never a target's figure",
    )
    sub = commands.add_parser("status", help="/ws/status latency")
    _common_arguments(sub)
    sub.add_argument("--connections", type=int, default=0, help="default 10000 (quick: 40)")
    sub.add_argument("--seconds", type=float, default=0, help="default 30 (quick: 1)")
    sub = commands.add_parser("uvicorn", help="scenarios 1 and 3 under uvicorn")
    _common_arguments(sub)
    _fanout_arguments(sub)
    _connections_arguments(sub, alone=False)
    sub = commands.add_parser("storm", help="reconnect storm: resume with since after SIGKILL")
    _common_arguments(sub)
    sub.add_argument("--subscribers", type=int, default=0, help="default 1000 (quick: 20)")
    sub.add_argument("--rate", type=float, default=0.0, help="ticks/s on the topic (default 20)")
    sub.add_argument(
        "--reconnect-delay",
        type=float,
        default=None,
        help="seconds from a client's loss to its reconnect, before jitter (default 4.75)",
    )
    sub.add_argument(
        "--jitter", type=float, default=None, help="reconnect jitter, uniform, s (default 0.5)"
    )
    sub.add_argument("--runs", type=int, default=0, help="whole runs, new servers (default 3)")
    sub = commands.add_parser("encoding", help="fan-out by encoding: JSON, MessagePack, mixed")
    _common_arguments(sub)
    sub.add_argument("--subscribers", type=int, default=0, help="default 1000 (quick: 20)")
    sub.add_argument("--rate", type=float, default=10.0, help="fixed rate (latency), updates/s")
    sub.add_argument("--load-rate", type=float, default=0.0, help="loaded step (default 30/s)")
    sub.add_argument("--duration", type=float, default=0.0, help="seconds per step (default 10)")
    sub.add_argument("--repeats", type=int, default=0, help="servers, mixes rotated (default 3)")
    sub.add_argument("--no-baseline", action="store_true")
    sub = commands.add_parser("throttle", help="throttled subscriptions against unthrottled")
    _common_arguments(sub)
    sub.add_argument("--connections", type=int, default=0, help="default 1000 (quick: 20)")
    sub.add_argument("--symbols", type=int, default=0, help="symbols in all (default 20)")
    sub.add_argument("--per-connection", type=int, default=0, help="symbols each (default 20)")
    sub.add_argument("--tick-rate", type=float, default=0.0, help="ticks/s in all (default 200)")
    sub.add_argument("--batch", type=int, default=0, help="ticks per POST (default 10)")
    sub.add_argument("--throttle-ms", type=int, default=250)
    sub.add_argument("--duration", type=float, default=0.0, help="seconds (default 10)")
    sub.add_argument("--repeats", type=int, default=0, help="pairs of runs (default 3)")
    sub = commands.add_parser("churn", help="memory left by connections that came and went")
    _common_arguments(sub)
    sub.add_argument("--connections", type=int, default=0, help="churned (default 8000)")
    sub.add_argument("--warmup", type=int, default=0, help="churned first (default 1000)")
    sub.add_argument("--batch", type=int, default=0, help="connected at a time (default 200)")
    sub.add_argument("--server", choices=SERVERS, default="daphne")
    sub.add_argument("--no-baseline", action="store_true")
    sub = commands.add_parser("soak", help="minutes under a steady mix: loss and resources")
    _common_arguments(sub)
    sub.add_argument("--minutes", type=float, default=0.0, help="default 10 (quick: 0.3)")
    sub.add_argument("--rate", type=float, default=0.0, help="ticks/s in all (default 20)")
    sub.add_argument("--topics", type=int, default=0, help="market topics (default 4)")
    sub.add_argument("--subscribers", type=int, default=0, help="steady (default 200)")
    sub.add_argument("--resumers", type=int, default=0, help="default 100 (quick: 10)")
    sub.add_argument(
        "--resume-every", type=float, default=0.0, help="s between a resumer's drops (default 20)"
    )
    sub.add_argument("--churn-batch", type=int, default=0, help="per round (default 100)")
    sub.add_argument("--sample-every", type=float, default=0.0, help="s (default 5; quick: 1)")
    sub = commands.add_parser("curves", help="growth curves against the baseline, as PNG")
    _common_arguments(sub)
    sub.add_argument(
        "--subscriber-counts", type=_counts, default=None, help="default 1000,2000,5000,10000"
    )
    sub.add_argument(
        "--connection-counts", type=_counts, default=None, help="default 1000,...,19500"
    )
    sub = commands.add_parser("plot", help="draw curves.json's PNGs")
    sub.add_argument("file", help="a curves.json written by `curves`")
    sub.add_argument("--to", help="directory for the PNGs (default: beside the JSON)")
    sub = commands.add_parser("all", help="every scenario")
    _common_arguments(sub)
    sub.add_argument("--skip", nargs="*", default=[], help="scenarios to leave out")
    sub.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        help="seconds to wait before each scenario for an idle machine (default 600; quick 0)",
    )
    sub.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run every scenario this many times (out/run-N/); report medians with the range",
    )
    return parser


def fanout_options(options: argparse.Namespace, **overrides: Any) -> argparse.Namespace:
    result = copy.copy(options)
    defaults = {
        "subscribers": 0,
        "rate": 10.0,
        "duration": 0.0,
        "step": 0.0,
        "ladder_limit": 0.0,
        "no_ladder": False,
        "no_baseline": False,
        "deflate": False,
        "server": "daphne",
        "processes": 1,
        "name": "fanout",
    }
    for key, value in defaults.items():
        if not hasattr(result, key):
            setattr(result, key, value)
    for key, value in overrides.items():
        setattr(result, key, value)
    return result


def connections_options(options: argparse.Namespace, **overrides: Any) -> argparse.Namespace:
    result = copy.copy(options)
    defaults = {
        "connections": 0,
        "hold": 0.0,
        "no_baseline": False,
        "deflate": False,
        "server": "daphne",
        "bare": False,
        "name": "connections",
    }
    for key, value in defaults.items():
        if not hasattr(result, key):
            setattr(result, key, value)
    for key, value in overrides.items():
        setattr(result, key, value)
    return result


def run_fanout(options: argparse.Namespace) -> dict[str, Any]:
    from bench import fanout

    server = getattr(options, "server", "daphne")  # `all` runs Daphne
    name = "fanout" if server == "daphne" else f"{server}_fanout"
    return fanout.run(fanout_options(options, server=server, processes=1, name=name))


def run_fanout_redis(options: argparse.Namespace) -> dict[str, Any]:
    from bench import fanout

    if not common.redis_available(options.redis_url):
        raise SystemExit(f"fanout-redis needs Redis at {options.redis_url} (--redis-url)")
    return fanout.run(fanout_options(options, server="daphne", processes=2, name="fanout_redis"))


def run_storm(options: argparse.Namespace) -> dict[str, Any]:
    from bench import storm

    if not common.redis_available(options.redis_url):
        raise SystemExit(f"storm needs Redis at {options.redis_url} (--redis-url)")
    defaults = {"subscribers": 0, "rate": 0.0, "reconnect_delay": None, "jitter": None, "runs": 0}
    for key, value in defaults.items():  # under `all`, the storm's own options are absent
        if not hasattr(options, key):
            setattr(options, key, value)
    return storm.run(options)


def run_e2e(options: argparse.Namespace) -> dict[str, Any]:
    from bench import e2e

    return e2e.run(options)


def run_connections(options: argparse.Namespace) -> dict[str, Any]:
    from bench import connections

    server = getattr(options, "server", "daphne")
    name = "connections" if server == "daphne" else f"{server}_connections"
    if getattr(options, "bare", False):
        name = f"bare_{name}"
    return connections.run(connections_options(options, name=name))


def run_status(options: argparse.Namespace) -> dict[str, Any]:
    from bench import status

    return status.run(options)


def run_uvicorn(options: argparse.Namespace) -> dict[str, Any]:
    from bench import connections, fanout

    if not common.uvicorn_available():
        raise SystemExit("the uvicorn scenario needs uvicorn: pip install -e '.[uvicorn]'")
    parts = {
        "fanout": fanout.run(fanout_options(options, server="uvicorn", name="uvicorn_fanout")),
        "fanout_deflate": fanout.run(
            fanout_options(
                options,
                server="uvicorn",
                name="uvicorn_fanout_deflate",
                deflate=True,
                no_ladder=True,
            )
        ),
        "connections": connections.run(
            connections_options(options, server="uvicorn", name="uvicorn_connections")
        ),
        "connections_deflate": connections.run(
            connections_options(
                options, server="uvicorn", name="uvicorn_connections_deflate", deflate=True
            )
        ),
    }
    combined = {
        "machine": parts["fanout"]["machine"],
        "parts": {key: f"{value['scenario']}.json" for key, value in parts.items()},
        "targets": [t for part in parts.values() for t in part.get("targets", [])],
    }
    out_dir = Path(options.out) if options.out else None
    common.write_result("uvicorn", combined, out_dir)
    print(common.targets_table(combined["targets"]))
    return combined


def run_encoding(options: argparse.Namespace) -> dict[str, Any]:
    from bench import encoding

    defaults = {"subscribers": 0, "rate": 10.0, "load_rate": 0.0, "duration": 0.0}
    defaults["no_baseline"] = False
    # Under `all` one server, whose order of mixes turns with the run (`--repeat 3` covers the
    # three orders): the scenario alone runs three, 4.5 of `all`'s 20 minutes.
    defaults["repeats"] = 1
    for key, value in defaults.items():  # under `all`, the scenario's own options are absent
        if not hasattr(options, key):
            setattr(options, key, value)
    return encoding.run(options)


def run_throttle(options: argparse.Namespace) -> dict[str, Any]:
    from bench import throttle

    defaults: dict[str, Any] = {"connections": 0, "symbols": 0, "per_connection": 0}
    defaults |= {"tick_rate": 0.0, "batch": 0, "throttle_ms": 250, "duration": 0.0}
    defaults["repeats"] = 0
    for key, value in defaults.items():
        if not hasattr(options, key):
            setattr(options, key, value)
    return throttle.run(options)


def run_churn(options: argparse.Namespace) -> dict[str, Any]:
    from bench import churn

    defaults = {"connections": 0, "warmup": 0, "batch": 0, "no_baseline": False}
    for key, value in defaults.items():
        if not hasattr(options, key):
            setattr(options, key, value)
    return churn.run(options)


SCENARIOS = {
    "fanout": run_fanout,
    "e2e": run_e2e,
    "connections": run_connections,
    "status": run_status,
    "fanout-redis": run_fanout_redis,
    "uvicorn": run_uvicorn,
    "storm": run_storm,
    "encoding": run_encoding,
    "throttle": run_throttle,
    "churn": run_churn,
}


def run_all(options: argparse.Namespace) -> dict[str, Any]:
    started = time.time()
    summary: dict[str, Any] = {"machine": common.machine_info(), "scenarios": {}, "skipped": {}}
    common.raise_nofile()
    # One template database and one set of tokens for every scenario (each server still gets
    # a fresh copy of the database).
    with common.workspace(
        db=options.db,
        postgres_url=options.postgres_url,
        users=100,
        tokens=60 if options.quick else 10020,
        staff_tokens=3 if options.quick else 51,
    ) as space:
        options.space = space
        repeats = max(1, getattr(options, "repeat", 1) or 1)
        if repeats == 1:
            _run_scenarios(options, summary)
        else:  # each run in its own folder; the summary has each target's median and range
            base = Path(options.out) if options.out else common.RESULTS_DIR
            runs: list[dict[str, Any]] = []
            for index in range(repeats):
                print(f"\n########## run {index + 1} of {repeats}")
                one: dict[str, Any] = {"scenarios": {}, "skipped": {}}
                run_options = copy.copy(options)
                run_options.out = str(base / f"run-{index + 1}")
                run_options.run_index = index
                _run_scenarios(run_options, one)
                runs.append(one)
            summary["runs"] = runs
            summary["skipped"] = runs[0]["skipped"]
            summary["scenarios"] = runs[-1]["scenarios"]
    summary["seconds"] = round(time.time() - started, 1)
    summary["loadavg_at_end"] = common.loadavg()
    if "runs" in summary:
        summary["targets"] = combine_targets(
            [
                [t for s in run["scenarios"].values() for t in s["targets"]]
                for run in summary["runs"]
            ]
        )
    else:
        summary["targets"] = [t for s in summary["scenarios"].values() for t in s["targets"]]
    out_dir = Path(options.out) if options.out else None
    common.write_result("all", summary, out_dir)
    print("\n" + common.targets_table(summary["targets"]))
    print(f"all scenarios: {summary['seconds']} s")
    return summary


def combine_targets(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each target over repeated runs: the median run's value and verdict, with the range.

    The median is one run's own figure (the lower middle one for an even count), so its verdict
    is that run's, judged against the limit as the scenario judges it; runs where a target was
    not measured (None) do not count.
    """
    combined: list[dict[str, Any]] = []
    for position, first in enumerate(runs[0]):
        same = [
            run[position]
            for run in runs
            if position < len(run) and run[position]["target"] == first["target"]
        ]
        measured = [t for t in same if isinstance(t["value"], int | float)]
        if not measured:
            combined.append({**first, "values": [t["value"] for t in same]})
            continue
        middle = statistics.median_low(t["value"] for t in measured)
        chosen = next(t for t in measured if t["value"] == middle)
        combined.append(
            {
                **chosen,
                "min": min(t["value"] for t in measured),
                "max": max(t["value"] for t in measured),
                "values": [t["value"] for t in same],
                "met_in_runs": sum(1 for t in measured if t["met"]),
            }
        )
    return combined


def _run_scenarios(options: argparse.Namespace, summary: dict[str, Any]) -> None:
    for name, runner in SCENARIOS.items():
        if name in options.skip:
            summary["skipped"][name] = "--skip"
            continue
        if name in ("fanout-redis", "storm") and not common.redis_available(options.redis_url):
            summary["skipped"][name] = f"no Redis at {options.redis_url}"
            print(f"skipping {name}: no Redis at {options.redis_url}")
            continue
        if name == "uvicorn" and not common.uvicorn_available():
            summary["skipped"][name] = "uvicorn is not installed"
            print(f"skipping {name}: uvicorn is not installed")
            continue
        limit = (
            options.wait_quiet if options.wait_quiet is not None else 0 if options.quick else 600
        )
        quiet = common.wait_quiet(limit) if limit else None
        print(f"\n##### {name}" + (f" (machine {quiet['busy_pct']}% busy)" if quiet else ""))
        scenario_started = time.time()
        result = runner(copy.copy(options))
        if name == "uvicorn":
            result = {"targets": result["targets"]}
        summary["scenarios"][name] = {
            "machine_before": quiet,
            "seconds": round(time.time() - scenario_started, 1),
            "loadavg_after": common.loadavg(),
            "targets": result.get("targets", []),
        }


def run_soak(options: argparse.Namespace) -> dict[str, Any]:
    from bench import soak

    return soak.run(options)


def run_curves(options: argparse.Namespace) -> dict[str, Any]:
    from bench import curves

    return curves.run(options, fanout_options)


def run_plot(options: argparse.Namespace) -> dict[str, Any]:
    from bench import curves

    source = Path(options.file)
    drawn = curves.plot(json.loads(source.read_text()), Path(options.to or source.parent))
    for path in drawn:
        print(f"drawn: {path}")
    return {"drawn": [str(path) for path in drawn]}


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    extra = {"curves": run_curves, "plot": run_plot, "soak": run_soak}
    runner = (
        run_all
        if options.scenario == "all"
        else extra.get(options.scenario) or SCENARIOS[options.scenario]
    )
    result = runner(options)
    json.dumps(result)  # must be serialisable
    return 0


if __name__ == "__main__":
    sys.exit(main())
