"""Real servers for end-to-end tests: Daphne processes on free ports, sharing the test database."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


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


class LiveServer:
    """A Daphne process serving tradingrt.asgi on 127.0.0.1, stopped by `stop()`."""

    def __init__(
        self,
        *,
        realtime: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ):
        self.port = port or free_port()
        self.realtime = realtime or {}
        self.extra_env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(settings.BASE_DIR) / "var" / f"daphne-{self.port}.log"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def environment(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("REALTIME_", "PYTEST_", "DATABASE_URL", "REDIS_URL"))
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
        for key, value in self.realtime.items():
            env[f"REALTIME_{key}"] = json.dumps(value)
        env.update(self.extra_env)
        return env

    def start(self) -> LiveServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(self.port),
                "tradingrt.asgi:application",
            ],
            cwd=ROOT,
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Daphne exited at start:\n{self.log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"Daphne did not listen within 30 s:\n{self.log()}")

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
            with contextlib.suppress(OSError):
                self.log_path.unlink()


@contextlib.contextmanager
def live_server(**kwargs: Any) -> Iterator[LiveServer]:
    server = LiveServer(**kwargs).start()
    try:
        yield server
    finally:
        server.stop()
