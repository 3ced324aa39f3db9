"""docs/PROTOCOL.md's Python client (section 13.5), run as written against real servers.

The example is what a client author copies; it must resume correctly by itself: snapshot first,
every update once, a disconnect repaired with `since` (recovered, no reset), nothing twice.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async

from tests.conftest import access_token_for
from tests.factories import UserFactory
from tests.test_delivery import place

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

PROTOCOL = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"


def python_example(heading: str = "### 13.5 Python") -> str:
    text = PROTOCOL.read_text()
    section = text[text.index(heading) :]
    return section[section.index("```python\n") + 10 : section.index("\n```\n")]


class Running:
    """The example in a subprocess, its output collected line by line by a reader thread."""

    def __init__(self, source: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-u", "-c", source],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    async def wait_for(self, pattern: str, *, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if re.search(pattern, line):
                    return line
            await asyncio.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines))

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)
        self._reader.join(5)


async def test_the_documented_python_client_resumes_exactly_after_a_disconnect(
    cluster, redis_layer
):
    a, _ = cluster
    user = await sync_to_async(UserFactory)(username="example-bot", password="example-pass")
    before = await sync_to_async(place)(user, 2)
    source = (
        python_example()
        .replace('"http://127.0.0.1:8000"', repr(a.http_url))
        .replace('"ws://127.0.0.1:8000/ws"', repr(a.ws_url))
        .replace('"alice", "alice-demo-pass"', '"example-bot", "example-pass"')
        .replace('"user:2:orders", "user:2:positions"', f'"user:{user.pk}:orders"')
    )
    assert f"user:{user.pk}:orders" in source and a.ws_url in source
    bot = Running(source)
    try:
        for order_id in before:  # the snapshot: the state, before anything live
            await bot.wait_for(rf"orders state {order_id} NEW")
        [live] = await sync_to_async(place)(user, 1)
        await bot.wait_for(rf"orders created {live} NEW")
        result = await asyncio.to_thread(a.manage, "ws_disconnect", "--user", user.username)
        assert result.returncode == 0, result.stderr
        missed = await sync_to_async(place)(user, 3)  # while it reconnects
        for order_id in missed:
            await bot.wait_for(rf"orders created {order_id} NEW")
        [after] = await sync_to_async(place)(user, 1)
        await bot.wait_for(rf"orders created {after} NEW")
    finally:
        bot.stop()
    output = "\n".join(bot.lines)
    assert "disconnected: 4000" in output
    assert "reset:" not in output  # the disconnect was recovered, not reloaded
    for order_id in [live, *missed, after]:
        assert len(re.findall(rf"orders created {order_id} NEW", output)) == 1, output


@pytest.mark.django_db(transaction=True)
async def test_the_documented_msgpack_client_works_as_written(live):
    from tests.test_delivery import post_order

    user = await sync_to_async(UserFactory)(username="msgpack-bot", password="example-pass")
    source = (
        python_example("### 13.6 Python on MessagePack")
        .replace('"http://127.0.0.1:8000"', repr(live.http_url))
        .replace('"ws://127.0.0.1:8000/ws"', repr(live.ws_url))
        .replace('"alice", "alice-demo-pass"', '"msgpack-bot", "example-pass"')
    )
    bot = Running(source)
    try:
        await bot.wait_for(r"state: 0 items at seq 0")
        token = await sync_to_async(access_token_for)(user)
        order = await post_order(live, token)
        line = await bot.wait_for(rf"user:{user.pk}:orders 1 ")
        assert f"'id': {order['id']}" in line and "'price': '100'" in line  # decimals: strings
    finally:
        bot.stop()
