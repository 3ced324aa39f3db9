"""bench.profiling against a real py-spy and a real process: `BENCH_PROFILE_GIL=1` samples only
the thread that holds the GIL, where py-spy's default also counts a thread that runs C code with
the GIL released (a database driver's, hashing).

No timing is asserted: a thread that hashes with the GIL released is busy in most samples by
default and in few with the option, whatever the machine's speed.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bench import profiling

pytestmark = pytest.mark.skipif(
    profiling.available() is None, reason="py-spy is in the dev extra: dev.py test installs it"
)

# One thread in Python (holding the GIL) about half the time, one hashing a large buffer,
# which hashlib does with the GIL released.
SPINNERS = """
import hashlib, threading, time

def in_python():
    while True:
        sum(range(200000))
        time.sleep(0.005)

def without_the_gil():
    data = bytes(1 << 22)
    while True:
        hashlib.sha256(data).digest()

threading.Thread(target=in_python, daemon=True).start()
threading.Thread(target=without_the_gil, daemon=True).start()
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def spinners():
    child = subprocess.Popen([sys.executable, "-c", SPINNERS], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        yield child.pid
    finally:
        child.kill()
        child.wait(10)


def _record(pid: int, out: Path) -> tuple[list[str], Counter[str]]:
    """py-spy's command line, and the samples in which each of the two functions ran."""
    profiler = profiling.Profiler(pid, 2, out)
    command = profiler.command
    profiler.wait()
    samples: Counter[str] = Counter()
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        for function in ("in_python", "without_the_gil"):
            if f"{function} (" in stack:
                samples[function] += int(count)
    return command, samples


def test_gil_only_samples_the_holder_alone(spinners, tmp_path, monkeypatch):
    monkeypatch.delenv("BENCH_PROFILE_GIL", raising=False)
    every_command, every = _record(spinners, tmp_path / "every.txt")
    monkeypatch.setenv("BENCH_PROFILE_GIL", "1")
    gil_command, gil = _record(spinners, tmp_path / "gil.txt")

    assert "--gil" not in every_command and "--gil" in gil_command
    # By default the hashing thread is busy in most samples; with the option it is not counted
    # (it holds the GIL only between two digests), and the thread in Python still is.
    assert every["without_the_gil"] > 50, every
    assert gil["in_python"] > 0, gil
    assert gil["without_the_gil"] < every["without_the_gil"] / 4, (gil, every)


@pytest.mark.parametrize("value", ["", "0"])
def test_gil_only_is_off_unless_asked(value, monkeypatch):
    monkeypatch.setenv("BENCH_PROFILE_GIL", value)
    assert profiling.gil_only() is False
