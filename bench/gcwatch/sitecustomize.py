"""Log the server's garbage collections (gen >= 1, or any over 2 ms) for the benchmarks.

Put on PYTHONPATH with BENCH_GC_LOG=<file> by bench.common.Server: each collection appends
"<unix time at start> <generation> <milliseconds>" to the file. It only observes (a callback
in gc.callbacks); the application is not changed.
"""

import gc
import os
import time

_path = os.environ.get("BENCH_GC_LOG")
if _path:
    _log = open(f"{_path}.{os.getpid()}", "a", buffering=1)  # noqa: SIM115
    _started = [0.0, 0.0]

    def _watch(phase: str, info: dict) -> None:
        if phase == "start":
            _started[0], _started[1] = time.time(), time.perf_counter()
            return
        took = (time.perf_counter() - _started[1]) * 1000
        if info["generation"] >= 1 or took > 2.0:
            _log.write(f"{_started[0]:.4f} {info['generation']} {took:.2f}\n")

    gc.callbacks.append(_watch)

    def _census(signum: int, frame: object) -> None:
        """On SIGUSR1: how many objects the collector tracks, and of which types."""
        import collections
        import json

        objects = gc.get_objects()
        kinds = collections.Counter(type(o).__qualname__ for o in objects)
        with open(f"{_path}.census.{os.getpid()}", "w") as out:
            json.dump({"tracked": len(objects), "types": kinds.most_common()}, out)

    import signal

    signal.signal(signal.SIGUSR1, _census)
