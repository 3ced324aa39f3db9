"""Real servers for end-to-end tests: Daphne processes on free ports, sharing the test database."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent

# The abuse limits a test server runs with unless its test sets them (CONTRACT section 13): the
# suite opens many connections per user and hundreds of handshakes a minute from 127.0.0.1, and
# refuses bad tokens on purpose, so the contract's defaults would block its own tests. These are
# limits, not switched off: tests of the limits start servers with the values they test.
SUITE_LIMITS = {
    "MAX_CONNECTIONS_PER_USER": 1000,
    "HANDSHAKES_PER_IP_PER_MIN": 100_000,
    "AUTH_FAILURES_PER_IP": 100_000,
    "LOGINS_PER_MIN": 10_000,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_url() -> str:
    """A DATABASE_URL naming the test database this process uses (created by pytest-django)."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    if db["ENGINE"] == "django.db.backends.postgresql":
        user = db.get("USER") or ""
        password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
        auth = f"{user}{password}@" if user else ""
        host = db.get("HOST") or "127.0.0.1"
        port = db.get("PORT") or 5432
        return f"postgres://{auth}{host}:{port}/{db['NAME']}"
    raise RuntimeError(f"No live-server support for {db['ENGINE']}")


def redis_environment(redis: dict[str, str]) -> dict[str, str]:
    """Settings environment for the Redis channel layer under this test run's key prefix."""
    return {"REDIS_URL": redis["url"], "REDIS_PREFIX": redis["prefix"], "REDIS_GROUP_EXPIRY": "600"}


def server_environment(*, realtime: dict[str, Any], extra: dict[str, str]) -> dict[str, str]:
    """The environment of a server or command process sharing this test run's database."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("REALTIME_", "PYTEST_", "DATABASE_URL", "REDIS_"))
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "tradingrt.settings",
            "DJANGO_SECRET_KEY": settings.SECRET_KEY,
            "DATABASE_URL": database_url(),
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for key, value in realtime.items():
        env[f"REALTIME_{key}"] = json.dumps(value)
    env.update(extra)
    return env


def run_manage(
    *args: str, env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class LiveServer:
    """A Daphne (or uvicorn, or Granian) process serving tradingrt.asgi on 127.0.0.1, stopped by
    `stop()`."""

    def __init__(
        self,
        *,
        realtime: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        redis: dict[str, str] | None = None,
        port: int | None = None,
        server: str = "daphne",
        tls: bool = False,
        server_args: list[str] | None = None,
        prelude: str = "",
    ):
        self.server = server
        # Python run in the server process before Daphne starts (to make it meet a Twisted
        # whose internals differ from what realtime.outbound expects, say).
        self.prelude = prelude
        self.port = port or free_port()
        # With `tls`, Daphne also listens with TLS on `tls_port` (`-e ssl:...`), with a
        # certificate for 127.0.0.1 and localhost from a CA made for this server (trustme).
        self.tls_port = free_port() if tls else None
        self.server_args = list(server_args or [])
        self._ca: Any = None
        self.realtime = {**SUITE_LIMITS, **(realtime or {})}
        self.extra_env = dict(env or {})
        if redis is not None:
            self.extra_env |= redis_environment(redis)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(settings.BASE_DIR) / "var" / f"daphne-{self.port}.log"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def wss_url(self) -> str:
        assert self.tls_port is not None, "start the server with tls=True"
        return f"wss://127.0.0.1:{self.tls_port}/ws"

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context trusting this server's CA (and nothing else)."""
        assert self._ca is not None, "start the server with tls=True"
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self._ca.configure_trust(context)
        return context

    def _tls_endpoint(self) -> str:
        import trustme

        self._ca = trustme.CA()
        certificate = self._ca.issue_cert("127.0.0.1", "localhost")
        key_path = self.log_path.with_suffix(".key.pem")
        cert_path = self.log_path.with_suffix(".cert.pem")
        certificate.private_key_pem.write_to_path(str(key_path))
        certificate.cert_chain_pems[0].write_to_path(str(cert_path))
        for blob in certificate.cert_chain_pems[1:]:
            blob.write_to_path(str(cert_path), append=True)
        return (
            f"ssl:port={self.tls_port}:interface=127.0.0.1"
            f":privateKey={key_path}:certKey={cert_path}"
        )

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def environment(self) -> dict[str, str]:
        return server_environment(realtime=self.realtime, extra=self.extra_env)

    def manage(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a management command as an operator would, configured like this server."""
        return run_manage(*args, env=self.environment(), stdin=stdin)

    def command(self) -> list[str]:
        """Daphne as dev.py starts it, uvicorn as docs/DEPLOYMENT.md does (deflate left on), or
        Granian (one worker process under its supervisor, asyncio's loop)."""
        if self.server == "granian":
            return [
                sys.executable,
                "-m",
                "granian",
                "--interface",
                "asgi",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--loop",
                "asyncio",
                *self.server_args,
                "tradingrt.asgi:application",
            ]
        if self.server == "uvicorn":
            return [
                sys.executable,
                "-m",
                "uvicorn",
                "tradingrt.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--lifespan",
                "on",
                *self.server_args,
            ]
        if self.tls_port is not None:
            listen = ["-e", f"tcp:port={self.port}:interface=127.0.0.1"]
            listen += ["-e", self._tls_endpoint()]
        else:
            listen = ["-b", "127.0.0.1", "-p", str(self.port)]
        start = ["-m", "daphne"]
        if self.prelude:
            start = [
                "-c",
                f"{self.prelude}\nimport sys\nfrom daphne.cli import CommandLineInterface\n"
                "sys.argv[0] = 'daphne'\nCommandLineInterface.entrypoint()",
            ]
        return [sys.executable, *start, *listen, *self.server_args, "tradingrt.asgi:application"]

    def start(self) -> LiveServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.server} exited at start:\n{self.log()}")
            with contextlib.suppress(OSError):
                for port in (self.port, self.tls_port):
                    if port is not None:
                        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.server} did not listen within 30 s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: the process dies without running any cleanup."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if not os.environ.get("KEEP_SERVER_LOGS"):
            for path in (
                self.log_path,
                self.log_path.with_suffix(".key.pem"),
                self.log_path.with_suffix(".cert.pem"),
            ):
                with contextlib.suppress(OSError):
                    path.unlink()


@contextlib.contextmanager
def live_server(**kwargs: Any) -> Iterator[LiveServer]:
    server = LiveServer(**kwargs).start()
    try:
        yield server
    finally:
        server.stop()


def connections_of(status: dict[str, Any], *servers: LiveServer) -> list[int | None]:
    """What a status document says each of `servers` holds (None: not listed).

    Every live process on the test database is listed, the session's `live` server among them
    once a test has used it (its heartbeat writes its row again after each flush), so a test
    reads its own servers' entries by pid rather than the whole list.
    """
    held = {entry["pid"]: entry["connections"] for entry in status["servers"]}
    return [held.get(server.pid) for server in servers]


async def eventually(check: Any, *, timeout: float = 10.0) -> Any:
    """Poll the blocking `check` (in a thread) until it returns something true, or `timeout`
    seconds pass; its last value."""
    import asyncio

    from asgiref.sync import sync_to_async

    deadline = time.monotonic() + timeout
    while True:
        value = await sync_to_async(check)()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)
