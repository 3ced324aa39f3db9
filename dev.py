#!/usr/bin/env python3
"""One-command setup: `python3 dev.py start` runs the platform, `python3 dev.py test` the suite.

Both create ./.venv and install the project into it when it is missing or pyproject.toml
changed, so a fresh clone needs nothing but Python 3.11+.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".tradingrt-installed"
LOCK = ROOT / "requirements" / "dev.lock"
PIP_TOOLS = "7.6.2"  # what `dev.py lock` resolves with


def ensure_environment(extras: str = "dev") -> None:
    """Create the virtual environment and install the project, unless already up to date.

    Dependencies come from requirements/dev.lock (exact versions, checked by hash), so every
    machine installs what CI tested; the project itself is installed editable on top. A Python
    for which the lock has no wheels falls back to the ranges in pyproject.toml, saying so.
    """
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be run by an older python3
        sys.exit(f"Python 3.11 or newer is needed; this is {sys.version.split()[0]}.")
    pinned = LOCK.read_bytes() if LOCK.exists() else b""
    wanted = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + pinned + extras.encode()
    ).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and PYTHON.exists():
        return
    if not PYTHON.exists():
        print(f"Creating the virtual environment in {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    print("Installing the project and its dependencies (first run only) ...", flush=True)
    pip = [str(PYTHON), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
    locked = False
    if lock and extras == "dev":
        locked = (
            subprocess.run([*pip, "install", "--require-hashes", "-r", str(LOCK)]).returncode == 0
        )
        if not locked:
            print(
                f"Installing from {LOCK.relative_to(ROOT)} failed on this Python "
                f"({sys.version.split()[0]}); installing from the ranges in pyproject.toml.",
                flush=True,
            )
    if locked:
        subprocess.run([*pip, "install", "--no-deps", "-e", "."], check=True, cwd=ROOT)
    else:
        subprocess.run([*pip, "install", "-e", f".[{extras}]"], check=True, cwd=ROOT)
    STAMP.write_text(wanted)


def lock(options: argparse.Namespace) -> int:
    """Re-resolve requirements/dev.lock from pyproject.toml: exact versions, with hashes."""
    ensure_environment()
    pip = [str(PYTHON), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", f"pip-tools=={PIP_TOOLS}"], check=True)
    LOCK.parent.mkdir(exist_ok=True)
    command = [
        str(BIN / "pip-compile"), "--quiet", "--generate-hashes", "--allow-unsafe",
        "--extra", "dev", "--strip-extras", "--no-emit-index-url", "--no-emit-find-links",
        *(["--upgrade"] if options.upgrade else []),
        "--output-file", str(LOCK.relative_to(ROOT)), "pyproject.toml",
    ]  # fmt: skip
    return subprocess.call(command, cwd=ROOT)


def manage(*args: str) -> None:
    subprocess.run([str(PYTHON), "manage.py", *args], check=True, cwd=ROOT)


def start(options: argparse.Namespace) -> int:
    """Migrate, load the demo data, print how to log in, and serve HTTP and WebSockets."""
    ensure_environment()
    manage("migrate", "--noinput", "-v", "0")
    manage("demo", "--host", f"http://{options.host}:{options.port}")
    command = [
        str(BIN / "daphne"),
        "-b", options.host,
        "-p", str(options.port),
        "--ping-interval", "20",
        "--ping-timeout", "30",
        "tradingrt.asgi:application",
    ]  # fmt: skip
    print(f"Serving on http://{options.host}:{options.port}/ (Ctrl-C stops it)", flush=True)
    server = subprocess.Popen(command, cwd=ROOT)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the children too
    market = None
    if options.market:
        # A live market for the demo: random-walk ticks through the market-data API, filling
        # LIMIT orders the price crosses (a simulation; --no-market turns it off).
        market = subprocess.Popen(
            [str(PYTHON), "manage.py", "simulate_market", "--fill-orders",
             "--url", f"http://{options.host}:{options.port}"],
            cwd=ROOT,
        )  # fmt: skip
    try:
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for process in (market, server):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()


def test(options: argparse.Namespace) -> int:
    """Run the whole test suite; extra arguments go to pytest."""
    ensure_environment()
    code = subprocess.call([str(PYTHON), "-m", "pytest", *options.pytest_args], cwd=ROOT)
    return code


def check(options: argparse.Namespace) -> int:
    """Static checks: ruff, mypy, migrations in step with the models, the OpenAPI schema."""
    ensure_environment()
    steps = [
        [str(BIN / "ruff"), "check", "."],
        [str(BIN / "ruff"), "format", "--check", "realtime", "tradingrt", "market"],
        [str(BIN / "mypy"), "realtime", "tradingrt", "orders", "positions", "strategies", "market"],
        [str(PYTHON), "manage.py", "makemigrations", "--check", "--dry-run"],
        [str(PYTHON), "manage.py", "spectacular", "--validate", "--fail-on-warn", "--file",
         os.devnull],
    ]  # fmt: skip
    for step in steps:
        print("$", " ".join(step).replace(f"{ROOT}/", ""), flush=True)
        if subprocess.call(step, cwd=ROOT) != 0:
            return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start_parser = commands.add_parser("start", help="set up and run the platform with demo data")
    start_parser.add_argument("--host", default="127.0.0.1")
    start_parser.add_argument("--port", type=int, default=8000)
    start_parser.add_argument(
        "--no-market",
        dest="market",
        action="store_false",
        help="do not run the market simulator (manage.py simulate_market) beside the server",
    )
    test_parser = commands.add_parser("test", help="set up and run the whole test suite")
    test_parser.add_argument("pytest_args", nargs=argparse.REMAINDER)
    commands.add_parser("check", help="lint, type-check, and check migrations and the schema")
    lock_parser = commands.add_parser(
        "lock", help="re-resolve requirements/dev.lock (exact, hashed versions) from pyproject"
    )
    lock_parser.add_argument(
        "--upgrade", action="store_true", help="take the newest versions the ranges allow"
    )
    options, unknown = parser.parse_known_args()
    if options.command == "test":
        options.pytest_args = unknown + options.pytest_args  # `dev.py test -x -k name`
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return {"start": start, "test": test, "check": check, "lock": lock}[options.command](options)


if __name__ == "__main__":
    sys.exit(main())
