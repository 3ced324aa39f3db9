"""Where a server's CPU time goes: py-spy samples summarised by package and by function.

`Profiler(pid, seconds, out)` runs `py-spy record` beside a measurement and leaves a flame
graph (SVG) and the raw folded stacks; `summarize` turns the stacks into shares of the busy
samples: self time per package area and per function, and inclusive time of the functions
that matter on the hot path.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*)\)$")

# Ordered: the first match wins. Matched against py-spy's shortened file names.
AREAS = [
    ("realtime (ours)", ("realtime/",)),
    ("tradingrt/orders/positions (ours)", ("tradingrt/", "orders/", "positions/", "strategies/")),
    ("daphne", ("daphne/",)),
    ("autobahn (WebSocket framing)", ("autobahn/", "txaio/")),
    ("twisted (reactor, TCP)", ("twisted/",)),
    ("uvicorn", ("uvicorn/",)),
    ("websockets", ("websockets/",)),
    ("channels", ("channels/", "channels_redis/")),
    ("asgiref (sync/async bridges)", ("asgiref/",)),
    ("redis client", ("redis/", "msgpack")),
    ("django ORM / DB driver", ("django/db/", "sqlite3/", "psycopg")),
    ("django (other)", ("django/",)),
    ("rest_framework / simplejwt", ("rest_framework", "jwt/")),
    ("json", ("json/",)),
    ("asyncio event loop", ("asyncio/", "uvloop", "selectors.py")),
    ("threads / executor", ("threading.py", "concurrent/", "queue.py")),
    ("logging", ("logging/",)),
]


def area_of(file: str) -> str:
    """The area (package) a source file belongs to, by AREAS."""
    for name, needles in AREAS:
        if any(needle in file for needle in needles):
            return name
    return "other"


def available() -> str | None:
    candidate = Path(sys.executable).with_name("py-spy")
    if candidate.exists():
        return str(candidate)
    return shutil.which("py-spy")


def gil_only() -> bool:
    """`BENCH_PROFILE_GIL=1`: sample only the thread that holds the GIL (py-spy `--gil`)."""
    return os.environ.get("BENCH_PROFILE_GIL", "") not in ("", "0")


class Profiler:
    """py-spy on `pid` for `seconds` (or until `stop()`), writing folded stacks to `out`."""

    def __init__(self, pid: int, seconds: float | None, out: Path, rate: int = 100) -> None:
        self.out = out
        binary = available()
        if binary is None:
            raise RuntimeError("py-spy is not installed (the dev extra has it: dev.py test)")
        out.parent.mkdir(parents=True, exist_ok=True)
        command = [binary, "record", "--pid", str(pid), "--rate", str(rate), "--nonblocking"]
        if gil_only():
            # Only the thread holding the GIL: by default py-spy counts every thread on a CPU,
            # a database thread in SQLite's C code with the GIL released too.
            command.append("--gil")
        if seconds is not None:
            command += ["--duration", str(max(1, int(seconds)))]
        command += ["--format", "raw", "--nolineno", "-o", str(out)]
        self.command = command
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def stop(self) -> dict[str, Any]:
        """End the recording now (py-spy writes its output on SIGINT)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        return self.wait()

    def wait(self) -> dict[str, Any]:
        try:
            self.process.wait(120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        return summarize(self.out)


def summarize(path: Path, top: int = 25) -> dict[str, Any]:
    """Shares (percent of busy samples) by area (self time) and by function (self, inclusive)."""
    if not path.exists():
        return {"samples": 0, "error": "no profile written"}
    areas: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        names = []
        for frame in frames:
            match = FRAME.match(frame)
            if match:
                names.append((match["function"], match["file"]))
            else:
                names.append((frame, ""))
        leaf_function, leaf_file = names[-1]
        areas[area_of(leaf_file)] += count
        self_time[f"{leaf_function} ({leaf_file})"] += count
        for key in {f"{f} ({file})" for f, file in names}:
            inclusive[key] += count

    def share(counter: Counter[str], n: int) -> list[list[Any]]:
        return [[key, round(100 * value / total, 1)] for key, value in counter.most_common(n)]

    if total == 0:
        return {"samples": 0}
    return {
        "samples": total,
        "areas_self_pct": share(areas, len(areas)),
        "functions_self_pct": share(self_time, top),
        "functions_inclusive_pct": share(inclusive, top * 2),
    }
