"""Sending without a task per message when the server's send never blocks (realtime.transport)."""

from __future__ import annotations

import asyncio

from realtime.transport import send_now


async def test_a_send_that_never_suspends_completes_on_the_spot():
    sent = []

    async def send(message):
        sent.append(message)

    assert send_now(send, {"text": "a"}) is None
    assert sent == [{"text": "a"}]


async def test_a_send_that_suspends_is_carried_on_by_a_task():
    sent = []

    async def send(message):
        await asyncio.sleep(0.01)  # backpressure
        sent.append(message)
        await asyncio.sleep(0)
        return "done"

    task = send_now(send, {"text": "b"})
    assert sent == []
    assert await task == "done"
    assert sent == [{"text": "b"}]


async def test_an_error_in_a_suspended_send_reaches_whoever_awaits_it():
    async def send(message):
        await asyncio.sleep(0)
        raise ConnectionResetError("gone")

    task = send_now(send, {"text": "c"})
    try:
        await task
    except ConnectionResetError as exc:
        assert str(exc) == "gone"
    else:
        raise AssertionError("the error was lost")
