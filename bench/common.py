"""What every scenario shares: databases, servers, /proc readings, statistics, tables and JSON."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = resource.getpagesize() // 1024
DEFAULT_POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
LOOPBACK = "127.0.0.1"  # every benchmark targets loopback only


# --- the process and the machine ----------------------------------------------------------


WANTED_NOFILE = 65536  # 20,000 connections and their server's own files, with room


def raise_nofile() -> int:
    """Raise this process's open-files limit to its hard limit, and the hard limit to
    WANTED_NOFILE where the process may (root); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < WANTED_NOFILE:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (WANTED_NOFILE, WANTED_NOFILE))
            soft = hard = WANTED_NOFILE
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def _process_cpu_clock(pid: int) -> int:
    """Linux's clock id for the CPU time of the whole process `pid` (every thread, living or
    ended): MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED) from the kernel's posix-timers.h, which
    clock_gettime(2) reads for any process, in nanoseconds."""
    return ((~pid) << 3) | 2


def open_fds(pid: int) -> int:
    """File descriptors `pid` holds open (sockets, database files, pipes)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_kinds(pid: int) -> dict[str, int]:
    """What `pid`'s open file descriptors are, counted by kind: `socket`, `pipe`, an anonymous
    inode (`anon_inode:[eventpoll]`, ...) or the file's name (a database file, its -wal)."""
    kinds: dict[str, int] = {}
    base = Path(f"/proc/{pid}/fd")
    for entry in base.iterdir():
        try:
            target = os.readlink(entry)
        except OSError:  # closed meanwhile
            continue
        if target.startswith(("socket:", "pipe:")):
            kind = target.split(":", 1)[0]
        elif target.startswith("anon_inode:"):
            kind = target
        else:
            kind = Path(target).name
        kinds[kind] = kinds.get(kind, 0) + 1
    return dict(sorted(kinds.items(), key=lambda item: -item[1]))


def threads(pid: int) -> int:
    """Threads of `pid` (the event loop's, the thread pools', the database's)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Threads for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds `pid` has used (its threads included), to the nanosecond: a
    short quick run on a few subscribers uses less than one 10 ms tick of /proc/<pid>/stat,
    which read as 0. Falls back to the ticks where the process clock cannot be read."""
    try:
        return time.clock_gettime_ns(_process_cpu_clock(pid)) / 1e9
    except OSError:
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen backlog was full."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        if header.startswith("TcpExt:"):
            names, numbers = header.split()[1:], values.split()[1:]
            return int(dict(zip(names, numbers, strict=False)).get("ListenOverflows", 0))
    return 0


def loadavg() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def _version(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _commit() -> str | None:
    """The commit measured: BENCH_COMMIT (set for an exported tree), else the checkout's HEAD
    with "+dirty" when tracked files differ from it."""
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    packages = [
        "daphne", "twisted", "autobahn", "channels", "channels-redis", "django", "websockets",
        "uvicorn", "uvloop", "httptools", "redis", "psycopg",
    ]  # fmt: skip
    return {
        "commit": _commit(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in packages},
        "loadavg_at_start": loadavg(),
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }


def wait_quiet(limit: float, threshold_pct: float = 10.0, window: float = 3.0) -> dict[str, Any]:
    """Wait (up to `limit` s) until the machine is idle: busy under `threshold_pct` over
    `window` s. Returns how long it waited and the busy share last measured."""
    started = time.monotonic()
    busy_pct = 100.0
    while True:
        before = machine_cpu_seconds()
        time.sleep(window)
        after = machine_cpu_seconds()
        busy_pct = 100 * (after[0] - before[0]) / max(1e-9, after[1] - before[1])
        if busy_pct < threshold_pct or time.monotonic() - started >= limit:
            break
    return {
        "waited_s": round(time.monotonic() - started, 1),
        "busy_pct": round(busy_pct, 1),
        "quiet": busy_pct < threshold_pct,
        "loadavg": loadavg(),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited at start:\n{_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port} within {timeout} s:\n{_tail(log)}")


def _tail(path: Path, size: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return ""


# --- statistics ------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def summarize_ms(values_s: Iterable[float]) -> dict[str, Any]:
    """count, p50, p90, p99, max and mean of durations given in seconds, in milliseconds."""
    ordered = sorted(values_s)
    if not ordered:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    return {
        "count": len(ordered),
        "p50": round(percentile(ordered, 0.50) * 1000, 2),
        "p90": round(percentile(ordered, 0.90) * 1000, 2),
        "p99": round(percentile(ordered, 0.99) * 1000, 2),
        "max": round(ordered[-1] * 1000, 2),
        "mean": round(sum(ordered) / len(ordered) * 1000, 2),
    }


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return round(value / reference, 2)


# --- databases, users and tokens -----------------------------------------------------------


@dataclass
class Workspace:
    """A private directory, secret key and template database for one benchmark command.

    The template is migrated once and holds the benchmark's users; every server under test
    gets a fresh copy (`fresh_database`), so no run sees another's connection records.
    """

    db: str = "sqlite"  # or "postgres"
    postgres_url: str = DEFAULT_POSTGRES_URL
    users: int = 100
    directory: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="tradingrt-bench-"))
    )
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(50))
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    _databases: list[str] = field(default_factory=list)
    _copies: int = 0
    _template: str | None = None
    identities: dict[str, Any] = field(default_factory=dict)

    def base_environment(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("REALTIME_", "DATABASE_URL", "REDIS_", "DJANGO_", "JWT_"))
        }
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "tradingrt.settings",
                "DJANGO_SECRET_KEY": self.secret_key,
                "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
                "DJANGO_LOG_LEVEL": "WARNING",
                "TRADINGRT_VAR_DIR": str(self.directory / "var"),
                # Tokens minted at setup must outlive the run (the server closes a socket with
                # 4401 at the token's expiry).
                "JWT_ACCESS_TOKEN_MINUTES": "720",
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def _postgres(self, name: str) -> str:
        base = self.postgres_url.rsplit("/", 1)[0]
        return f"{base}/{name}"

    def _psql(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.postgres_url, autocommit=True) as conn:
            conn.execute(sql.encode())

    def prepare(self, *, tokens: int = 0, staff_tokens: int = 1) -> Workspace:
        """Migrate the template database, create the users (and a staff user), mint tokens."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.db == "sqlite":
            self._template = str(self.directory / "template.sqlite3")
        else:
            self._template = f"bench_{self.tag}_template"
            self._psql(f'CREATE DATABASE "{self._template}"')
            self._databases.append(self._template)
        self.identities = self._setup_db(
            "--users", str(self.users), "--mint", str(tokens), "--staff-mint", str(staff_tokens)
        )
        return self

    def _setup_db(self, *arguments: str) -> dict[str, Any]:
        env = self.base_environment() | {"DATABASE_URL": self.template_url()}
        out = subprocess.run(
            [PYTHON, "-m", "bench.setup_db", *arguments],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"bench.setup_db failed:\n{out.stdout}\n{out.stderr}")
        return dict(json.loads(out.stdout))

    def tokens(
        self, count: int, *, staff: bool = False, user_index: int | None = None
    ) -> list[str]:
        """`count` distinct access tokens: token i is user i % users' (or all one user's, or
        the staff user's); minted once and reused for later calls."""
        if user_index is not None and len(self.identities["user_ids"]) == 1:
            user_index = None  # the users' tokens are that user's already
        key = "staff_tokens" if staff else "tokens" if user_index is None else f"user{user_index}"
        have: list[str] = self.identities.get(key, [])
        if len(have) < count:
            more = str(count - len(have))
            if staff:
                minted = self._setup_db("--staff-mint", more)["staff_tokens"]
            elif user_index is None:
                minted = self._setup_db("--mint", more)["tokens"]
            else:
                minted = self._setup_db("--mint", more, "--user-index", str(user_index))["tokens"]
            have = self.identities[key] = have + minted
        return have[:count]

    def template_url(self) -> str:
        assert self._template is not None, "prepare() first"
        if self.db == "sqlite":
            return f"sqlite:///{self._template}"
        return self._postgres(self._template)

    def fresh_database(self) -> str:
        """A new database copied from the template; returns its DATABASE_URL."""
        assert self._template is not None, "prepare() first"
        self._copies += 1
        name = f"bench_{self.tag}_{self._copies}"
        if self.db == "sqlite":
            # A new file each time: copying over an earlier one would leave its -wal and -shm
            # beside the copy (a SIGKILLed server leaves them), and SQLite would then read the
            # old log into the new file ("database disk image is malformed").
            path = self.directory / f"{name}.sqlite3"
            shutil.copyfile(self._template, path)
            return f"sqlite:///{path}"
        self._psql(f'CREATE DATABASE "{name}" TEMPLATE "{self._template}"')
        self._databases.append(name)
        return self._postgres(name)

    def cleanup(self) -> None:
        if self.db == "postgres":
            for name in reversed(self._databases):
                with contextlib.suppress(Exception):
                    self._psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def workspace(*, tokens: int = 0, staff_tokens: int = 1, **kwargs: Any) -> Iterator[Workspace]:
    space = Workspace(**kwargs)
    try:
        yield space.prepare(tokens=tokens, staff_tokens=staff_tokens)
    finally:
        space.cleanup()


@contextlib.contextmanager
def scenario_workspace(options: Any, **kwargs: Any) -> Iterator[Workspace]:
    """The workspace `python -m bench all` shares between scenarios, or a new one."""
    shared = getattr(options, "space", None)
    if shared is not None:
        yield shared
        return
    with workspace(db=options.db, postgres_url=options.postgres_url, **kwargs) as space:
        yield space


@contextlib.contextmanager
def redis_prefix(url: str) -> Iterator[str]:
    """A key prefix private to this run; only its keys are deleted afterwards (never a flush)."""
    import redis

    client = redis.Redis.from_url(url)
    client.ping()
    prefix = f"tradingrt-bench-{uuid.uuid4().hex[:12]}"
    try:
        yield prefix
    finally:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()


def redis_available(url: str) -> bool:
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        client.ping()
        client.close()
        return True
    except Exception:
        return False


def uvicorn_available() -> bool:
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        return False
    return True


# --- servers --------------------------------------------------------------------------------


def granian_worker(supervisor: int, timeout: float = 10.0) -> int:
    """The pid of granian's one worker: the child of its supervisor that runs the application
    (forked by multiprocessing, so its command line is granian's; `spawn_main` if spawned; not
    a resource tracker)."""
    deadline = time.monotonic() + timeout
    while True:
        for child in _children(supervisor):
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:  # gone since it was listed
                continue
            if b"spawn_main" in command or b"granian" in command:
                return child
        if time.monotonic() > deadline:
            raise RuntimeError(f"granian ({supervisor}) has no worker process")
        time.sleep(0.1)


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            children += [int(c) for c in (task / "children").read_text().split()]
    return children


def _raise_child_nofile() -> None:  # runs in the child before exec
    raise_nofile()


@dataclass
class Server:
    """One server process under test, on 127.0.0.1: daphne, uvicorn, granian or the baseline."""

    kind: str  # "daphne" | "uvicorn" | "granian" | "baseline"
    env: dict[str, str]
    directory: Path
    port: int = field(default_factory=free_port)
    control_port: int | None = None  # the baseline's HTTP publish port
    extra_args: list[str] = field(default_factory=list)
    app: str = "tradingrt.asgi:application"  # bench.bare_asgi:application: the server's floor
    process: subprocess.Popen[bytes] | None = None
    _worker_pid: int | None = field(default=None, init=False, repr=False)

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.kind}-{self.port}.log"

    @property
    def pid(self) -> int:
        """The process that serves the connections: the one started, or, for granian (a
        supervisor that spawns its worker), the worker, found once it listens."""
        assert self.process is not None
        if self.kind == "granian":
            if self._worker_pid is None:
                self._worker_pid = granian_worker(self.process.pid)
            return self._worker_pid
        return self.process.pid

    @property
    def publish_port(self) -> int:
        return self.control_port if self.kind == "baseline" else self.port  # type: ignore[return-value]

    @property
    def publish_path(self) -> str:
        return "/publish" if self.kind == "baseline" else "/api/market-data/"

    def command(self) -> list[str]:
        """The server's command line: the flags docs/DEPLOYMENT.md gives, on loopback."""
        if self.kind == "daphne":
            endpoint = f"tcp:port={self.port}:interface={LOOPBACK}:backlog=1024"
            return [
                PYTHON, "-m", "daphne", "-e", endpoint,
                "--ping-interval", "20", "--ping-timeout", "30",
                *self.extra_args, self.app,
            ]  # fmt: skip
        if self.kind == "uvicorn":
            return [
                PYTHON, "-m", "uvicorn", "--host", LOOPBACK, "--port", str(self.port),
                "--ws-ping-interval", "20", "--ws-ping-timeout", "30",
                "--ws-max-size", "1048576", "--no-access-log", "--log-level", "warning",
                *self.extra_args, self.app,
            ]  # fmt: skip
        if self.kind == "granian":
            # One worker process, asyncio's loop (as Daphne and the baseline), no request limit
            # below the connections a scenario holds (--backpressure: requests in flight per
            # worker; an open WebSocket is one). Granian sends no WebSocket pings of its own.
            return [
                PYTHON, "-m", "granian", "--interface", "asgi", "--host", LOOPBACK,
                "--port", str(self.port), "--workers", "1", "--loop", "asyncio",
                "--backlog", "1024", "--backpressure", "100000", "--log-level", "warning",
                *self.extra_args, self.app,
            ]  # fmt: skip
        if self.kind == "baseline":
            self.control_port = self.control_port or free_port()
            return [
                PYTHON, "-m", "bench.baseline_server", "--port", str(self.port),
                "--control-port", str(self.control_port), *self.extra_args,
            ]  # fmt: skip
        raise ValueError(self.kind)

    @property
    def gc_log_base(self) -> Path:
        return self.directory / f"gc-{self.kind}-{self.port}"

    def gc_pauses(self, since: float, until: float) -> dict[str, Any]:
        """The garbage collections the server logged between two wall-clock times."""
        pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        for path in self.directory.glob(self.gc_log_base.name + ".[0-9]*"):
            for line in path.read_text().splitlines():
                started, generation, took = line.split()
                if since <= float(started) <= until:
                    pauses[int(generation)].append(float(took))
        return {
            f"gen{generation}": {
                "count": len(values),
                "max_ms": round(max(values), 1) if values else None,
                "total_ms": round(sum(values), 1),
            }
            for generation, values in pauses.items()
        }

    @property
    def loop_log_base(self) -> Path:
        return self.directory / f"loop-{self.port}"

    def loop_latency(self, since: float, until: float) -> dict[str, Any]:
        """How late the server's event loop ran gcwatch's probe (a timer every 10 ms) between
        two wall-clock times: the longest delay (the loop's longest stall), how many were over
        50 ms, and how many probes ran (None when the probe never reported: no figure rather
        than a wrong 0)."""
        lines: list[str] = []
        deadline = time.monotonic() + 2.5
        while True:  # the probe writes a second's line early in the next: wait for `until`'s
            lines = [
                line
                for path in self.directory.glob(self.loop_log_base.name + ".[0-9]*")
                for line in path.read_text().splitlines()
            ]
            seconds = [float(line.split()[0]) for line in lines if " s " in line]
            if (seconds and max(seconds) >= int(until)) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        waits: list[float] = []
        probes, worst = 0, 0.0
        for line in lines:
            fields = line.split()
            if len(fields) == 4 and fields[1] == "s":  # one line per second: count, worst
                if since - 1 < float(fields[0]) <= until:
                    probes += int(fields[2])
                    worst = max(worst, float(fields[3]))
            elif len(fields) == 2 and since <= float(fields[0]) <= until:
                waits.append(float(fields[1]))
        if not probes and not waits:
            return {"probes": None, "max_ms": None, "over_50ms": None, "over_5ms": None}
        return {
            "probes": probes,
            "max_ms": round(max([worst, *waits]), 1),
            "over_50ms": sum(1 for w in waits if w > 50),
            "over_5ms": len(waits),
        }

    def garbage(self, timeout: float = 30.0) -> dict[str, Any] | None:
        """A full collection in the server that reports what it freed, by type (gcwatch answers
        SIGUSR2): the reference cycles left behind, which reference counting did not free."""
        return self._report(signal.SIGUSR2, "garbage", timeout)

    def _report(self, signum: int, kind: str, timeout: float) -> dict[str, Any] | None:
        """Signal gcwatch in the server and read the JSON report it writes for `kind`."""
        path = self.directory / f"{self.gc_log_base.name}.{kind}.{self.pid}"
        path.unlink(missing_ok=True)
        os.kill(self.pid, signum)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists():
                with contextlib.suppress(ValueError):
                    return dict(json.loads(path.read_text()))
            time.sleep(0.1)
        return None

    def tracemalloc_snapshot(self, timeout: float = 60.0) -> Path | None:
        """A tracemalloc snapshot of the server (started with BENCH_TRACEMALLOC=frames), as a
        file `tracemalloc.Snapshot.load` reads; None when the server does not trace."""
        if not self.env.get("BENCH_TRACEMALLOC"):
            return None
        self._snapshots = getattr(self, "_snapshots", 0) + 1
        path = self.directory / f"{self.gc_log_base.name}.tracemalloc.{self.pid}.{self._snapshots}"
        os.kill(self.pid, signal.SIGRTMIN + 1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists():
                return path
            time.sleep(0.1)
        return None

    def probe(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The server's asyncio tasks and pymalloc's allocated blocks (gcwatch answers
        SIGRTMIN+2): cheap enough to read every few seconds, unlike `census`."""
        return self._report(signal.SIGRTMIN + 2, "probe", timeout)

    def census(self, timeout: float = 30.0) -> dict[str, Any] | None:
        """Objects the server's collector tracks, by type (gcwatch answers SIGUSR1)."""
        return self._report(signal.SIGUSR1, "census", timeout)

    def start(self, timeout: float = 60) -> Server:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = self.command()
        env = dict(self.env)
        # Observe (only) the server's garbage collections: bench/gcwatch/sitecustomize.py.
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT / "bench" / "gcwatch"), env.get("PYTHONPATH")])
        )
        env["BENCH_GC_LOG"] = str(self.gc_log_base)
        if env.get("BENCH_LOOP_PROBE", "1") != "0":  # BENCH_LOOP_PROBE=0: no probe thread
            env["BENCH_LOOP_LOG"] = str(self.loop_log_base)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_raise_child_nofile,
            )
        wait_listening(self.port, self.process, timeout, self.log_path)
        if self.control_port:
            wait_listening(self.control_port, self.process, timeout, self.log_path)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return _tail(self.log_path)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@contextlib.contextmanager
def running(*servers: Server) -> Iterator[tuple[Server, ...]]:
    started: list[Server] = []
    try:
        for server in servers:
            started.append(server.start())
        yield servers
    finally:
        for server in reversed(started):
            server.stop()


# The limits the benchmarks and the load generator need off (CONTRACT section 13: 0 turns a
# limit off); a scenario's own `realtime` settings come after and may set them again.
LOAD_TEST_LIMITS = {"MAX_CONNECTIONS_PER_USER": 0, "HANDSHAKES_PER_IP_PER_MIN": 0}


def server_environment(
    space: Workspace,
    *,
    database_url: str,
    redis: tuple[str, str] | None = None,
    realtime: dict[str, Any] | None = None,
) -> dict[str, str]:
    env = space.base_environment() | {"DATABASE_URL": database_url}
    # Thousands of connections from one IP as a few users: the per-user connection cap and the
    # per-IP handshake rate are turned off (0) for every benchmark (docs/BENCHMARKS.md).
    env |= {f"REALTIME_{key}": json.dumps(value) for key, value in LOAD_TEST_LIMITS.items()}
    if redis is not None:
        env |= {"REDIS_URL": redis[0], "REDIS_PREFIX": redis[1], "REDIS_GROUP_EXPIRY": "3600"}
    for key, value in (realtime or {}).items():
        env[f"REALTIME_{key}"] = json.dumps(value)
    return env


# --- output -------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table (readable as plain text too)."""
    text_rows = [[fmt(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=False)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False)) + " |"
    rule = "| " + " | ".join("-" * w for w in widths) + " |"
    body = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + " |"
        for row in text_rows
    ]
    return "\n".join([line, rule, *body])


def write_result(name: str, result: dict[str, Any], out_dir: Path | None = None) -> Path:
    directory = out_dir or RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    result = {"scenario": name, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **result}
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    return path


def target(name: str, value: Any, limit: Any, met: bool | None, note: str = "") -> dict[str, Any]:
    return {"target": name, "value": value, "limit": limit, "met": met, "note": note}


def targets_table(targets: list[dict[str, Any]]) -> str:
    return table(
        ["target", "measured", "limit", "met"],
        [
            [
                t["target"],
                f"{t['value']} ({t['min']}-{t['max']})" if "min" in t else t["value"],
                t["limit"],
                t["met"] if "met_in_runs" not in t else f"{t['met']} ({t['met_in_runs']} runs)",
            ]
            for t in targets
        ],
    )
