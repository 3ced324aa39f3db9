"""Log the server's garbage collections (gen >= 1, or any over 2 ms) and its event loop's
latency for the benchmarks.

Put on PYTHONPATH with BENCH_GC_LOG=<file> by bench.common.Server: each collection appends
"<unix time at start> <generation> <milliseconds>" to the file. It only observes (a callback
in gc.callbacks, and signal handlers that write reports: SIGUSR1 a census, SIGUSR2 a full
collection, SIGRTMIN+2 a cheap probe); the application is not changed.
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
        report: dict = {"tracked": len(objects), "types": kinds.most_common()}
        if os.environ.get("BENCH_GC_OWNERS"):
            report["owners"] = _owners(objects)
        with open(f"{_path}.census.{os.getpid()}", "w") as out:
            json.dump(report, out)

    def _owners(objects: list) -> list:
        """Each tracked object counted by its type and by the first object found to refer to
        it (its type and the attribute, key or slot): which of the application's objects
        holds the lists, dicts and methods a connection adds."""
        import collections

        owner: dict[int, str] = {}
        for source in objects:
            for child in gc.get_referents(source):
                if id(child) not in owner and gc.is_tracked(child):
                    owner[id(child)] = f"{type(source).__qualname__}{_edge(source, child)}"
        held = collections.Counter((type(o).__qualname__, owner.get(id(o), "?")) for o in objects)
        return [[kind, by, count] for (kind, by), count in held.most_common(150)]

    def _edge(source: object, target: object) -> str:
        """How `source` refers to `target`: an attribute or key name where there is one."""
        if isinstance(source, dict):
            for key, value in source.items():
                if value is target:
                    return f"[{key!r}]"
            return "[key]"
        if isinstance(source, (list, tuple, set, frozenset)):
            return "[i]"
        for name in ("__dict__", "__self__", "__func__", "__closure__", "cell_contents"):
            if getattr(source, name, None) is target:
                return f".{name}"
        for name in getattr(type(source), "__slots__", ()):
            if getattr(source, name, None) is target:
                return f".{name}"
        return "->"

    def _cycle_through(type_name: str, garbage: list) -> list[str] | None:
        """The shortest reference path from one garbage object of `type_name` back to itself,
        through garbage objects only: the cycle that kept it for the collector."""
        start = next((o for o in garbage if type(o).__qualname__ == type_name), None)
        if start is None:
            return None
        inside = {id(o) for o in garbage}
        previous: dict[int, object] = {}
        frontier = [start]
        seen = {id(start)}
        while frontier:
            following = []
            for node in frontier:
                for child in gc.get_referents(node):
                    if child is start:
                        path = [f"{type(node).__qualname__}{_edge(node, start)}"]
                        while node is not start:
                            parent = previous[id(node)]
                            path.append(f"{type(parent).__qualname__}{_edge(parent, node)}")
                            node = parent
                        return list(reversed(path))
                    if id(child) in inside and id(child) not in seen:
                        seen.add(id(child))
                        previous[id(child)] = node
                        following.append(child)
            frontier = following
        return None

    def _garbage(signum: int, frame: object) -> None:
        """On SIGUSR2: a full collection that keeps what it finds (gc.DEBUG_SAVEALL), and the
        types of those objects: what reference counting alone could not free (cycles)."""
        import collections
        import json

        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            found = gc.collect()
            kinds = collections.Counter(type(o).__qualname__ for o in gc.garbage)
            modules = collections.Counter(
                getattr(type(o), "__module__", "?") or "?" for o in gc.garbage
            )
            cycles = {
                name: _cycle_through(name, gc.garbage)
                for name in filter(None, os.environ.get("BENCH_GC_CYCLES", "").split(","))
            }
        finally:
            gc.garbage.clear()
            gc.set_debug(0)
        with open(f"{_path}.garbage.{os.getpid()}", "w") as out:
            json.dump(
                {
                    "unreachable": found,
                    "types": kinds.most_common(),
                    "modules": modules.most_common(),
                    "cycles": cycles,
                },
                out,
            )

    def _probe(signum: int, frame: object) -> None:
        """On SIGRTMIN+2: a cheap reading for a time series (bench soak), unlike the census
        (a list of every tracked object, its types counted): the running loop's asyncio tasks
        and the memory blocks pymalloc has handed out (live small objects, to within a
        constant), each O(what it counts), so sampling every few seconds does not move what it
        watches."""
        import asyncio
        import json
        import sys

        loop = asyncio.events._get_running_loop()
        tasks = len(asyncio.all_tasks(loop)) if loop is not None else None
        with open(f"{_path}.probe.{os.getpid()}", "w") as out:
            json.dump({"tasks": tasks, "allocated_blocks": sys.getallocatedblocks()}, out)

    # --- What a slow young collection walked (BENCH_GC_YOUNG=<ms>): before each collection of
    # generation 0 or 1, the objects in the generations it collects are counted by type, and the
    # largest containers among them noted; a collection that then takes over <ms> milliseconds
    # is written as one JSON line to "<BENCH_GC_YOUNG_LOG, else BENCH_GC_LOG>.young.<pid>". The
    # census is taken before the collection's clock starts: the duration is the collection's.
    _young_ms = float(os.environ.get("BENCH_GC_YOUNG", "0") or 0)
    if _young_ms:
        import collections as _collections
        import json as _json

        _young_base = os.environ.get("BENCH_GC_YOUNG_LOG") or _path
        _young_log = open(f"{_young_base}.young.{os.getpid()}", "a", buffering=1)  # noqa: SIM115
        _census_before: list[object] = [None]

        def _young(phase: str, info: dict) -> None:
            generation = info["generation"]
            if generation > 1:
                return
            if phase == "start":
                objects = [o for g in range(generation + 1) for o in gc.get_objects(generation=g)]
                kinds = _collections.Counter(type(o).__qualname__ for o in objects)
                sized = sorted(
                    (
                        (len(o), type(o).__qualname__)
                        for o in objects
                        if isinstance(o, (dict, list, tuple, set, frozenset)) and len(o) > 1000
                    ),
                    reverse=True,
                )[:10]
                referents = sum(len(gc.get_referents(o)) for o in objects)
                _census_before[0] = (len(objects), referents, kinds.most_common(15), sized)
                del objects
                _started_young[0] = time.perf_counter()
                return
            took = (time.perf_counter() - _started_young[0]) * 1000
            if took > _young_ms and _census_before[0] is not None:
                count, referents, kinds, sized = _census_before[0]
                _young_log.write(
                    _json.dumps(
                        {
                            "time": time.time(),
                            "generation": generation,
                            "ms": round(took, 2),
                            "collected": info.get("collected"),
                            "objects": count,
                            "referents": referents,
                            "types": kinds,
                            "largest": sized,
                        }
                    )
                    + "\n"
                )
            _census_before[0] = None

        _started_young = [0.0]
        gc.callbacks.insert(0, _young)

    import signal

    signal.signal(signal.SIGUSR1, _census)
    signal.signal(signal.SIGUSR2, _garbage)
    signal.signal(signal.SIGRTMIN + 2, _probe)

    # --- What memory is allocated where (BENCH_TRACEMALLOC=frames): tracemalloc from start-up,
    # and on SIGRTMIN+1 a snapshot written beside the GC log (compared by bench connections).
    _trace_frames = int(os.environ.get("BENCH_TRACEMALLOC", "0") or 0)
    if _trace_frames:
        import tracemalloc

        tracemalloc.start(_trace_frames)
        _snapshots = [0]

        def _snapshot(signum: int, frame: object) -> None:
            _snapshots[0] += 1
            snapshot = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)]
            )
            target = f"{_path}.tracemalloc.{os.getpid()}.{_snapshots[0]}"
            snapshot.dump(target + ".part")
            os.replace(target + ".part", target)

        signal.signal(signal.SIGRTMIN + 1, _snapshot)


# --- Event-loop latency: how late the server's loop runs a timer (BENCH_LOOP_LOG) --------------
# A callback on the server's own loop re-arms itself every PROBE_SECS and measures how late it
# ran: the time the loop was busy past the moment it was due (whatever callback was running and
# everything queued ahead). Each probe later than LOG_ABOVE_MS is logged as "<unix time due>
# <milliseconds late>", and one line per second "<time> s <probes> <max ms>" records that the
# probe ran, so a quiet log means a responsive loop rather than a dead probe. No thread: a
# thread contending for the GIL would add to the very costs the benchmarks measure. The loop is
# found when it starts running (asyncio.events._set_running_loop, called by every asyncio
# loop's run_forever, Twisted's asyncio reactor included); no loop found: nothing is logged.

_loop_path = os.environ.get("BENCH_LOOP_LOG")
if _loop_path:
    import asyncio.events
    import threading

    PROBE_SECS = 0.01
    LOG_ABOVE_MS = 5.0
    _original_set_running_loop = asyncio.events._set_running_loop
    _watched: list[object] = []

    def _start_probe(loop: "asyncio.AbstractEventLoop") -> None:
        log = open(f"{_loop_path}.{os.getpid()}", "a", buffering=1)  # noqa: SIM115
        clock, wall = loop.time, time.time
        state = {"second": int(wall()), "probes": 0, "worst": 0.0}

        def _probe(due: float) -> None:
            late = (clock() - due) * 1000
            now = wall()
            state["probes"] += 1
            state["worst"] = max(state["worst"], late)
            if late > LOG_ABOVE_MS:
                log.write(f"{now - late / 1000:.4f} {late:.2f}\n")
            if int(now) != state["second"]:
                log.write(f"{state['second']} s {state['probes']} {state['worst']:.2f}\n")
                state["second"], state["probes"], state["worst"] = int(now), 0, 0.0
            next_due = clock() + PROBE_SECS
            loop.call_at(next_due, _probe, next_due)

        first = clock() + PROBE_SECS
        loop.call_at(first, _probe, first)

    def _set_running_loop(loop: "asyncio.AbstractEventLoop | None") -> None:
        _original_set_running_loop(loop)
        if (
            loop is not None
            and not _watched
            and threading.current_thread() is threading.main_thread()
        ):
            _watched.append(loop)
            loop.call_soon(_start_probe, loop)

    asyncio.events._set_running_loop = _set_running_loop
