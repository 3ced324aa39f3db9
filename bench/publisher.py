"""The publisher: HTTP POSTs on a fixed schedule over a small pool of keep-alive connections.

A minimal HTTP/1.1 client on asyncio streams (Content-Length and chunked bodies), so the
publisher costs little CPU next to the server and the load generator. Each request's body is
built at the moment it is written, so a tick's `volume` carries the time it left the publisher.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class ServerClosed(ConnectionError):
    """The server closed the connection without answering the request."""


class HttpConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.answered = 0  # requests answered on this connection

    @classmethod
    async def open(cls, host: str, port: int) -> HttpConnection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def request(
        self, method: str, host: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, bytes]:
        head = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin1") + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ServerClosed("server closed the connection")
        status = int(status_line.split()[1])
        length: int | None = None
        chunked = False
        closing = False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif name == "connection" and "close" in value.lower():
                closing = True
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readline()).split(b";")[0].strip(), 16)
                if size == 0:
                    await self.reader.readline()
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readline()
            data = b"".join(parts)
        elif length is not None:
            data = await self.reader.readexactly(length)
        else:
            data = await self.reader.read()
            closing = True
        if closing:
            self.close()
        self.answered += 1
        return status, data

    @property
    def usable(self) -> bool:
        return not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


@dataclass
class PublishLog:
    scheduled: list[float] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)
    answered: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    bodies: list[Any] = field(default_factory=list)  # what `body_for` returned alongside
    responses: list[tuple[float, int, bytes]] = field(default_factory=list)  # (sent, status, body)
    resent: int = 0  # requests sent again after a keep-alive connection closed under them

    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)


class Publisher:
    """POSTs at a fixed rate; `body_for(i, send_time)` builds request i's body when it is sent."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        *,
        token: str | None = None,
        max_connections: int = 32,
    ) -> None:
        self.host, self.port, self.path = host, port, path
        self.headers = {"Content-Type": "application/json", "Connection": "keep-alive"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.max_connections = max_connections
        self.idle: deque[HttpConnection] = deque()
        self.count = 0
        self.resent = 0  # requests sent again after a keep-alive connection closed under them
        self.available = asyncio.Condition()

    async def _acquire(self) -> HttpConnection:
        while True:
            while self.idle:
                connection = self.idle.pop()
                if connection.usable:
                    return connection
                self.count -= 1
            if self.count < self.max_connections:
                self.count += 1
                try:
                    return await HttpConnection.open(self.host, self.port)
                except Exception:
                    self.count -= 1
                    raise
            async with self.available:
                await self.available.wait()

    async def _release(self, connection: HttpConnection | None) -> None:
        if connection is not None and connection.usable:
            self.idle.append(connection)
        else:
            self.count -= 1
        async with self.available:
            self.available.notify()

    async def _request(
        self, connection: HttpConnection, body: bytes
    ) -> tuple[HttpConnection, int, bytes]:
        """POST `body` on `connection` (from `_acquire`); the connection it was answered on
        (for `_release`), status and body. On failure the connection is closed and released
        here, and the error raised.

        A reused keep-alive connection that the server closed without answering (it closes idle
        ones, and a request can cross the close) is the race every HTTP client meets: the
        request is sent again, once, on a new connection (`resent` counts them), as urllib3 and
        browsers do. A new connection closed unanswered is an error."""
        for attempt in (1, 2):
            try:
                status, data = await connection.request(
                    "POST", f"{self.host}:{self.port}", self.path, self.headers, body
                )
                return connection, status, data
            except Exception as exc:
                connection.close()
                await self._release(None)
                if attempt == 2 or not isinstance(exc, ServerClosed) or not connection.answered:
                    raise
            self.resent += 1
            self.count += 1  # the new connection takes the closed one's place in the pool
            try:
                connection = await HttpConnection.open(self.host, self.port)
            except Exception:
                await self._release(None)
                raise
        raise AssertionError("unreachable")

    async def post(self, body: bytes) -> tuple[int, bytes]:
        connection, status, data = await self._request(await self._acquire(), body)
        await self._release(connection)
        return status, data

    async def run(
        self,
        rate: float,
        count: int,
        body_for: Callable[[int, float], tuple[bytes, Any]],
        *,
        drain_seconds: float = 30.0,
        keep_responses: bool = False,
        stop: Callable[[], bool] | None = None,
    ) -> PublishLog:
        """Send `count` requests, request i at start + i/rate (never earlier; later if behind),
        or fewer if `stop()` turns true first."""
        log = PublishLog()
        tasks: list[asyncio.Task[None]] = []
        start = time.time() + 0.05

        async def one(index: int, scheduled: float) -> None:
            try:
                connection = await self._acquire()
                sent = time.time()
                body, info = body_for(index, sent)
                log.scheduled.append(scheduled)
                log.sent.append(sent)
                log.bodies.append(info)
                # On failure `_request` has closed and released the connection.
                connection, status, data = await self._request(connection, body)
                log.answered.append(time.time() - sent)
                if keep_responses:
                    log.responses.append((sent, status, data))
                log.statuses[status] = log.statuses.get(status, 0) + 1
                await self._release(connection)
            except Exception as exc:
                key = type(exc).__name__
                log.errors[key] = log.errors.get(key, 0) + 1

        for index in range(count):
            scheduled = start + index / rate
            delay = scheduled - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if stop is not None and stop():
                break
            tasks.append(asyncio.create_task(one(index, scheduled)))
        if tasks:
            await asyncio.wait(tasks, timeout=drain_seconds)
        for task in tasks:
            task.cancel()
        log.resent = self.resent
        return log

    def close(self) -> None:
        for connection in self.idle:
            connection.close()
        self.idle.clear()


def tick_body(symbol: str) -> Callable[[int, float], tuple[bytes, Any]]:
    """Tick i: `last` moves a little; `volume` is the send time, microseconds included."""

    def body(index: int, sent: float) -> tuple[bytes, Any]:
        tick = {
            "symbol": symbol,
            "last": f"{100 + (index % 100) / 100:.2f}",
            "volume": f"{sent:.6f}",
        }
        return json.dumps(tick).encode(), None

    return body


async def get_json(host: str, port: int, path: str, token: str | None = None) -> tuple[int, Any]:
    connection = await HttpConnection.open(host, port)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        status, data = await connection.request("GET", f"{host}:{port}", path, headers)
        return status, json.loads(data) if data else None
    finally:
        connection.close()
