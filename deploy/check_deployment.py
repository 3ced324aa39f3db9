#!/usr/bin/env python3
"""Post-deploy check: token, WebSockets spread over every server, cross-process updates, status.

Run it with the project's virtualenv (it needs httpx and websockets) against the public base
URL, i.e. through the reverse proxy, never against one Daphne process:

    .venv/bin/python deploy/check_deployment.py https://trading.example.com \
        --username checker --password-env CHECK_PASSWORD \
        --monitor-username monitor --monitor-password-env MONITOR_PASSWORD --expect-servers 4

What it does (docs/DEPLOYMENT.md, "Checking a deployment"):

1. GET /admin/login/ and one static file answer 200 (Django and the static files location).
2. POST /api/auth/token/ gives an access token (and one for the monitoring account).
3. GET /ws/status answers for the monitoring account.
4. `--sockets` WebSockets open through the proxy, authenticate and subscribe to
   user:<id>:orders; /ws/status then counts them, spread over more than one server process
   (`--expect-servers N` insists on N live ones; a process is listed from its first socket).
5. A far-from-market LIMIT order placed through the REST API reaches every socket as an
   ORDER_UPDATE, wherever it was served; the order is then canceled (a second update each).
6. With `--kill-one` (staging only: it SIGKILLs a server process): one server holding some of
   the sockets is killed, its sockets drop, they reconnect through the proxy and land on the
   survivors, a new order reaches them all, and /ws/status stops counting the dead process.

Exit status 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

try:
    import httpx
    import websockets
    from websockets.asyncio.client import ClientConnection
except ImportError as exc:  # pragma: no cover - depends on the interpreter used
    sys.exit(
        f"{exc.name} is missing: run this script with the project's virtualenv "
        "(.venv/bin/python deploy/check_deployment.py ...)."
    )

USER_AGENT = "tradingrt-check-deployment/1"
STATIC_PROBE = "/static/admin/css/base.css"


class CheckFailed(Exception):
    """One check did not hold; the message says what was expected and what came."""


@dataclass
class Socket:
    """One WebSocket opened by the check, and what the server told it."""

    number: int
    ws: ClientConnection
    connection_id: str
    user_id: int


@dataclass
class Report:
    """Counts the checks that passed and failed, printing each as it goes."""

    passed: int = 0
    failed: list[str] = field(default_factory=list)

    def ok(self, text: str) -> None:
        self.passed += 1
        print(f"ok    {text}", flush=True)

    def fail(self, text: str) -> None:
        self.failed.append(text)
        print(f"FAIL  {text}", flush=True)

    def info(self, text: str) -> None:
        print(f"      {text}", flush=True)


class Deployment:
    """The deployment under check, reached at one public base URL."""

    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.base = options.base_url.rstrip("/")
        parts = urlsplit(self.base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SystemExit(
                f"BASE_URL must look like https://trading.example.com, not {self.base!r}"
            )
        self.ws_url = urlunsplit(
            ("wss" if parts.scheme == "https" else "ws", parts.netloc, parts.path + "/ws", "", "")
        )
        self.ssl_context: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self.ssl_context = ssl.create_default_context(cafile=options.cafile)
            if options.insecure:
                self.ssl_context.check_hostname = False
                self.ssl_context.verify_mode = ssl.CERT_NONE
        self.http = httpx.AsyncClient(
            base_url=self.base,
            timeout=options.timeout,
            verify=self.ssl_context if self.ssl_context is not None else True,
            headers={"User-Agent": USER_AGENT},
        )

    async def close(self) -> None:
        await self.http.aclose()

    # --- HTTP ------------------------------------------------------------------------------

    async def token(self, username: str, password: str) -> str:
        response = await self.http.post(
            "/api/auth/token/", json={"username": username, "password": password}
        )
        if response.status_code != 200:
            raise CheckFailed(
                f"POST /api/auth/token/ for {username!r} answered {response.status_code}: "
                f"{response.text[:300]}"
            )
        return str(response.json()["access"])

    async def status(self, token: str) -> dict[str, Any]:
        response = await self.http.get("/ws/status", headers=_bearer(token))
        if response.status_code != 200:
            raise CheckFailed(
                f"GET /ws/status answered {response.status_code}: {response.text[:300]} "
                "(the monitoring account, --monitor-username, needs is_staff or the "
                "realtime.view_connection permission)"
            )
        return dict(response.json())

    async def place_order(self, token: str) -> dict[str, Any]:
        order = {
            "symbol": self.options.symbol,
            "side": "BUY",
            "orderType": "LIMIT",
            "quantity": "1",
            "price": self.options.price,
        }
        response = await self.http.post("/api/orders/", json=order, headers=_bearer(token))
        if response.status_code != 201:
            raise CheckFailed(
                f"POST /api/orders/ answered {response.status_code}: {response.text[:300]}"
            )
        return dict(response.json())

    async def cancel_order(self, token: str, order_id: int) -> None:
        response = await self.http.post(f"/api/orders/{order_id}/cancel/", headers=_bearer(token))
        if response.status_code != 200:
            raise CheckFailed(
                f"POST /api/orders/{order_id}/cancel/ answered {response.status_code}: "
                f"{response.text[:300]}"
            )

    # --- WebSocket -------------------------------------------------------------------------

    async def open_socket(self, number: int, token: str) -> Socket:
        ws = await websockets.connect(
            self.ws_url,
            additional_headers=_bearer(token),  # not ?token=: that would land in access logs
            ssl=self.ssl_context,
            open_timeout=self.options.timeout,
            user_agent_header=USER_AGENT,
        )
        hello = await _next_of_type(ws, "AUTHENTICATION", self.options.timeout)
        payload = hello["payload"]
        return Socket(number, ws, str(payload["connectionId"]), int(payload["userId"]))

    async def subscribe(self, sock: Socket, topic: str) -> None:
        await sock.ws.send(
            json.dumps(
                {"type": "SUBSCRIPTION", "id": "check-sub",
                 "payload": {"action": "subscribe", "topics": [topic]}}
            )
        )  # fmt: skip
        reply = await _reply(sock.ws, "check-sub", self.options.timeout)
        if reply["type"] != "SUBSCRIPTION" or topic not in reply["payload"].get("topics", []):
            raise CheckFailed(f"socket {sock.number}: subscribing to {topic} answered {reply}")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _next_message(ws: ClientConnection, deadline: float) -> dict[str, Any]:
    """The next message other than the server's unsolicited HEARTBEATs."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        message = json.loads(await asyncio.wait_for(ws.recv(), remaining))
        if message.get("type") != "HEARTBEAT" or "id" in message:
            return dict(message)


async def _next_of_type(ws: ClientConnection, kind: str, wait_secs: float) -> dict[str, Any]:
    message = await _next_message(ws, time.monotonic() + wait_secs)
    if message.get("type") != kind:
        raise CheckFailed(f"expected {kind}, got {json.dumps(message)[:300]}")
    return message


async def _reply(ws: ClientConnection, message_id: str, wait_secs: float) -> dict[str, Any]:
    deadline = time.monotonic() + wait_secs
    while True:
        message = await _next_message(ws, deadline)
        if message.get("id") == message_id:
            return message


async def _order_update(sock: Socket, order_id: int, event: str, wait_secs: float) -> None:
    """Wait for the ORDER_UPDATE of `order_id` with `event` (other updates may come first)."""
    deadline = time.monotonic() + wait_secs
    while True:
        try:
            message = await _next_message(sock.ws, deadline)
        except TimeoutError:
            raise CheckFailed(
                f"socket {sock.number} got no ORDER_UPDATE {event} for order {order_id} "
                f"within {wait_secs:g} s"
            ) from None
        payload = message.get("payload") or {}
        if (
            message.get("type") == "ORDER_UPDATE"
            and payload.get("id") == order_id
            and payload.get("event") == event
        ):
            return


async def _closed(sock: Socket, wait_secs: float) -> bool:
    """True when the server side of `sock` goes away within `wait_secs` seconds."""
    try:
        await asyncio.wait_for(sock.ws.wait_closed(), wait_secs)
    except TimeoutError:
        return False
    return True


async def _eventually(
    check: Callable[[], Awaitable[Any]], wait_secs: float, every: float = 0.5
) -> Any:
    """The first truthy value of `check()`, or its last value after `wait_secs` seconds."""
    deadline = time.monotonic() + wait_secs
    while True:
        value = await check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(every)


def _per_server(status: dict[str, Any]) -> dict[str, int]:
    return {server["id"]: int(server["connections"]) for server in status["servers"]}


def _gains(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {
        server: count - before.get(server, 0)
        for server, count in after.items()
        if count - before.get(server, 0) > 0
    }


def _kill(server: dict[str, Any], command: str | None) -> str:
    """SIGKILL one server process: by `command` (a template) or, when it is local, directly."""
    if command:
        rendered = command.format(pid=server["pid"], hostname=server["hostname"], id=server["id"])
        subprocess.run(shlex.split(rendered), check=True)
        return rendered
    if server["hostname"] != socket.gethostname():
        raise CheckFailed(
            f"server {server['id']} runs on {server['hostname']}, not here: give "
            "--kill-command, e.g. 'ssh {hostname} sudo kill -KILL {pid}'"
        )
    os.kill(int(server["pid"]), signal.SIGKILL)
    return f"kill -KILL {server['pid']}"


async def run(options: argparse.Namespace) -> Report:
    report = Report()
    deployment = Deployment(options)
    sockets: list[Socket] = []
    try:
        await _run_checks(deployment, options, report, sockets)
    except CheckFailed as exc:
        report.fail(str(exc))
    except (OSError, httpx.HTTPError, websockets.exceptions.WebSocketException) as exc:
        report.fail(f"{type(exc).__name__}: {exc}")
    finally:
        for sock in sockets:
            await sock.ws.close()
        await deployment.close()
    return report


async def _run_checks(
    deployment: Deployment, options: argparse.Namespace, report: Report, sockets: list[Socket]
) -> None:
    timeout = options.timeout

    # 1. Plain HTTP: Django answers, and static files are served.
    login = await deployment.http.get("/admin/login/")
    if login.status_code != 200:
        raise CheckFailed(f"GET /admin/login/ answered {login.status_code}")
    report.ok(f"GET /admin/login/ answered 200 ({deployment.base})")
    static = await deployment.http.get(STATIC_PROBE)
    if static.status_code == 200 and "css" in static.headers.get("content-type", ""):
        report.ok(f"GET {STATIC_PROBE} answered 200 ({static.headers.get('server', '?')})")
    else:
        report.fail(f"GET {STATIC_PROBE} answered {static.status_code}: static files not served")

    # 2. Tokens.
    password = options.password or os.environ.get(options.password_env or "", "")
    if not password:
        raise CheckFailed("no password: give --password or --password-env NAME")
    token = await deployment.token(options.username, password)
    report.ok(f"POST /api/auth/token/ gave an access token for {options.username}")
    monitor_token = token
    if options.monitor_username:
        monitor_password = options.monitor_password or os.environ.get(
            options.monitor_password_env or "", ""
        )
        monitor_token = await deployment.token(options.monitor_username, monitor_password)
        report.ok(f"POST /api/auth/token/ gave an access token for {options.monitor_username}")

    async def status() -> dict[str, Any]:
        return await deployment.status(monitor_token)

    # 3. Live servers.
    before = await status()
    servers = before["servers"]
    report.ok(
        f"GET /ws/status: {len(servers)} live server process(es) with "
        f"{before['activeConnections']} connection(s) before the check"
    )
    for server in servers:
        report.info(f"{server['id']}  pid {server['pid']}  {server['connections']} connection(s)")

    # 4. Sockets through the proxy, spread over the servers.
    for number in range(1, options.sockets + 1):
        sockets.append(await deployment.open_socket(number, token))
    user_id = sockets[0].user_id
    topic = f"user:{user_id}:orders"
    for sock in sockets:
        await deployment.subscribe(sock, topic)
    report.ok(f"{len(sockets)} WebSockets opened at {deployment.ws_url}, subscribed to {topic}")

    wanted = before["activeConnections"] + len(sockets)
    after = await _eventually(lambda: _at_least(status, wanted), wait_secs=max(timeout, 10.0))
    if not after:
        raise CheckFailed(f"/ws/status never counted the {len(sockets)} new connections")
    gains = _gains(_per_server(before), _per_server(after))
    report.ok(
        f"/ws/status counts them: activeConnections {after['activeConnections']}, "
        f"topicSubscriptions[{topic}] {after['topicSubscriptions'].get(topic, 0)}"
    )
    for server, gained in sorted(gains.items()):
        report.info(f"+{gained} on {server}")
    if options.expect_servers is not None:
        await _expected_servers(status, options, report, after)
    if len(after["servers"]) > 1 and len(sockets) > 1:
        if len(gains) > 1:
            report.ok(f"the sockets landed on {len(gains)} different server processes")
        else:
            report.fail(
                "every socket landed on one server process: is the proxy pinning clients "
                "(ip_hash, sticky cookies) or listing only one upstream?"
            )

    # 5. An order placed through the REST API reaches every socket, whichever server holds it.
    await _order_round(deployment, report, sockets, token, timeout)

    # 6. Optional: kill one server; its clients reconnect through the proxy to the others.
    if options.kill_one:
        await _failover(deployment, options, report, sockets, token, status, gains)


async def _expected_servers(
    status: Callable[[], Awaitable[dict[str, Any]]],
    options: argparse.Namespace,
    report: Report,
    document: dict[str, Any],
) -> None:
    """/ws/status lists the expected number of live server processes.

    A process registers with its first WebSocket, so one that served none is not listed yet;
    and one stopped moments ago (a restart) stays listed, with no connections, until three
    heartbeat intervals pass: wait for those to expire.
    """
    expected = options.expect_servers
    if len(document["servers"]) > expected:
        report.info(
            f"/ws/status lists {len(document['servers'])} processes; waiting up to "
            f"{options.dead_timeout:g} s for stopped ones to expire"
        )

        async def settled() -> Any:
            current = await status()
            return current if len(current["servers"]) <= expected else None

        document = await _eventually(settled, wait_secs=options.dead_timeout, every=2.0) or document
    if len(document["servers"]) == expected:
        report.ok(f"/ws/status lists the {expected} expected server processes")
    else:
        report.fail(
            f"expected {expected} live server processes, /ws/status lists "
            f"{len(document['servers'])} (a process is listed from its first WebSocket: open "
            "at least as many --sockets as there are processes)"
        )


async def _at_least(status: Callable[[], Awaitable[dict[str, Any]]], wanted: int) -> Any:
    document = await status()
    return document if document["activeConnections"] >= wanted else None


async def _order_round(
    deployment: Deployment, report: Report, sockets: list[Socket], token: str, wait_secs: float
) -> None:
    order = await deployment.place_order(token)
    order_id = int(order["id"])
    await asyncio.gather(*(_order_update(s, order_id, "created", wait_secs) for s in sockets))
    report.ok(
        f"order {order_id} placed via REST: all {len(sockets)} sockets got ORDER_UPDATE created"
    )
    await deployment.cancel_order(token, order_id)
    await asyncio.gather(*(_order_update(s, order_id, "canceled", wait_secs) for s in sockets))
    report.ok(
        f"order {order_id} canceled via REST: all {len(sockets)} sockets got ORDER_UPDATE canceled"
    )


async def _failover(
    deployment: Deployment,
    options: argparse.Namespace,
    report: Report,
    sockets: list[Socket],
    token: str,
    status: Callable[[], Awaitable[dict[str, Any]]],
    gains: dict[str, int],
) -> None:
    timeout = options.timeout
    current = await status()
    if len(current["servers"]) < 2:
        raise CheckFailed("--kill-one needs at least two live server processes")
    holding = [s for s in current["servers"] if gains.get(s["id"])]
    victim = (holding or current["servers"])[-1]
    how = _kill(victim, options.kill_command)
    report.ok(f"killed {victim['id']} ({how}); it held {gains.get(victim['id'], 0)} of our sockets")

    closed = await asyncio.gather(*(_closed(s, timeout) for s in sockets))
    dropped = [s for s, gone in zip(sockets, closed, strict=True) if gone]
    if len(dropped) != gains.get(victim["id"], 0):
        report.fail(f"{len(dropped)} socket(s) dropped, expected {gains.get(victim['id'], 0)}")
    else:
        codes = sorted({int(s.ws.close_code or 1006) for s in dropped})
        report.ok(
            f"its {len(dropped)} socket(s) dropped (close code {codes}); the others stayed open"
        )

    before = _per_server(await status())
    for sock in dropped:
        sockets[sockets.index(sock)] = replacement = await deployment.open_socket(
            sock.number, token
        )
        await deployment.subscribe(replacement, f"user:{replacement.user_id}:orders")
    report.ok(f"{len(dropped)} socket(s) reconnected through the proxy and subscribed again")

    async def landed() -> Any:
        document = await status()
        counts = _per_server(document)
        if sum(_gains(before, counts).values()) >= len(dropped):
            return document
        return None

    document = await _eventually(landed, wait_secs=max(timeout, 10.0))
    if not document:
        raise CheckFailed("/ws/status never counted the reconnected sockets")
    reconnected = _gains(before, _per_server(document))
    if victim["id"] in reconnected:
        report.fail(f"reconnected sockets counted on the killed process {victim['id']}")
    else:
        where = ", ".join(f"+{n} on {server}" for server, n in sorted(reconnected.items()))
        report.ok(f"the reconnected sockets landed on the survivors ({where or 'none needed'})")

    await _order_round(deployment, report, sockets, token, timeout)

    async def forgotten() -> Any:
        document = await status()
        return document if victim["id"] not in _per_server(document) else None

    started = time.monotonic()
    document = await _eventually(forgotten, wait_secs=options.dead_timeout, every=2.0)
    if not document:
        report.fail(
            f"/ws/status still lists {victim['id']} after {options.dead_timeout:g} s "
            "(it should expire after three heartbeat intervals)"
        )
    else:
        report.ok(
            f"/ws/status stopped counting the killed process after "
            f"{time.monotonic() - started:.0f} s: {len(document['servers'])} live server(s), "
            f"{document['activeConnections']} connection(s)"
        )


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="See docs/DEPLOYMENT.md, 'Checking a deployment'.",
    )
    parser.add_argument("base_url", metavar="BASE_URL", help="e.g. https://trading.example.com")
    parser.add_argument("--username", default="alice", help="a trading account (default: alice)")
    parser.add_argument("--password", help="its password (prefer --password-env)")
    parser.add_argument(
        "--password-env", metavar="NAME", help="read the password from this environment variable"
    )
    parser.add_argument(
        "--monitor-username",
        help="account for /ws/status (staff or realtime.view_connection); default: --username",
    )
    parser.add_argument("--monitor-password", help="its password (prefer --monitor-password-env)")
    parser.add_argument("--monitor-password-env", metavar="NAME")
    parser.add_argument("--sockets", type=int, default=6, help="WebSockets to open (default 6)")
    parser.add_argument(
        "--expect-servers", type=int, metavar="N", help="fail unless N server processes are live"
    )
    parser.add_argument("--symbol", default="AAPL", help="symbol of the check's order")
    parser.add_argument(
        "--price", default="0.01", help="LIMIT price of the check's BUY order (far from market)"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per step")
    parser.add_argument("--cafile", help="CA bundle that signed the proxy's certificate")
    parser.add_argument("--insecure", action="store_true", help="skip TLS verification")
    parser.add_argument(
        "--kill-one",
        action="store_true",
        help="STAGING ONLY: SIGKILL one server process and check its clients fail over",
    )
    parser.add_argument(
        "--kill-command",
        metavar="TEMPLATE",
        help="how to kill a remote process, e.g. 'ssh {hostname} sudo kill -KILL {pid}'",
    )
    parser.add_argument(
        "--dead-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for /ws/status to drop a killed process (3 heartbeats + margin)",
    )
    options = parser.parse_args(argv)
    if options.sockets < 1:
        parser.error("--sockets must be at least 1")
    if options.password is None and options.password_env is None and options.username == "alice":
        options.password = "alice-demo-pass"  # the demo data's (manage.py demo)
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_arguments(argv)
    started = time.monotonic()
    report = asyncio.run(run(options))
    elapsed = time.monotonic() - started
    if report.failed:
        print(f"\n{len(report.failed)} check(s) FAILED, {report.passed} passed ({elapsed:.0f} s)")
        return 1
    print(f"\nAll {report.passed} checks passed ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
