"""The outbound side of a connection (realtime.outbound): frames, server adapters, the outbox."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
from collections.abc import Callable

import pytest

from realtime import outbound, stats
from realtime.outbound import Outbox, adapter_for, frame, send_now, text_frame


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


class FutureSend:
    """An ASGI `send` that returns a future rather than a coroutine, as Granian's does (ASGI asks
    only for an awaitable): each message is written when its future is resolved, later."""

    def __init__(self, fail_at: int | None = None):
        self.sent: list[dict] = []
        self.fail_at = fail_at

    def __call__(self, message: dict) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def written() -> None:
            if self.fail_at is not None and len(self.sent) == self.fail_at:
                future.set_exception(ConnectionResetError("gone"))
                return
            self.sent.append(message)
            future.set_result(None)

        loop.call_soon(written)
        return future


async def test_a_send_that_returns_a_future_is_awaited_not_taken_for_a_failure():
    send = FutureSend()
    pending = send_now(send, {"text": "d"})
    assert pending is not None and send.sent == []
    await pending
    assert send.sent == [{"text": "d"}]


async def push_through_futures(send: FutureSend, count: int, until: Callable[[], bool]) -> None:
    """`count` messages pushed to an outbox over `send`; the loop turned until `until()`."""
    box, _ = outbox_for(send)
    for n in range(count):
        box.push(json.dumps({"n": n}))
    for _ in range(200):
        if until():
            return
        await asyncio.sleep(0)


async def test_through_a_send_that_returns_futures_every_message_arrives_in_order(caplog):
    """The outbox queues behind the send's future; nothing is dropped, nothing counted failed."""
    send = FutureSend()
    before = stats.counters["send_failures"]
    with caplog.at_level(logging.WARNING, logger="realtime.outbound"):
        await push_through_futures(send, 30, lambda: len(send.sent) == 30)
    assert [json.loads(m["text"])["n"] for m in send.sent] == list(range(30))
    assert stats.counters["send_failures"] == before
    assert "Send failed" not in caplog.text


async def test_a_future_that_fails_is_a_send_failure_said_at_warning(caplog):
    send = FutureSend(fail_at=2)
    before = stats.counters["send_failures"]
    with caplog.at_level(logging.WARNING, logger="realtime.outbound"):
        await push_through_futures(send, 5, lambda: stats.counters["send_failures"] > before)
    assert len(send.sent) == 2
    assert stats.counters["send_failures"] == before + 1
    assert "Send failed on c (ConnectionResetError('gone'))" in caplog.text


# --- frames ---------------------------------------------------------------------------------


def parse_frames(data: bytes) -> list[tuple[bool, int, bytes]]:
    """(fin, opcode, payload) of each frame in `data`, parsed by the `websockets` library."""
    from websockets.frames import Frame
    from websockets.streams import StreamReader

    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            while True:
                next(parser)
        except StopIteration as done:
            frame = done.value
        frames.append((frame.fin, frame.opcode.value, bytes(frame.data)))
    return frames


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_a_text_frame_is_what_a_websocket_client_reads_at_every_length_encoding(length):
    text = "é" * (length // 2) + "x" * (length % 2)  # multi-byte UTF-8: length in bytes
    assert len(text.encode()) == length
    assert parse_frames(text_frame(text)) == [(True, 1, text.encode())]


def test_a_broadcasts_frame_is_built_once_and_never_served_for_another_text():
    text = json.dumps({"type": "MARKET_DATA", "payload": {"price": "1.5"}})
    assert text_frame(text) is text_frame(text)
    other = "".join(reversed(text))[::-1]  # equal, but a different object
    assert other == text and other is not text
    assert text_frame(other) == text_frame(text)
    assert parse_frames(text_frame("second")) == [(True, 1, b"second")]


def test_a_binary_frame_carries_bytes_with_opcode_2_at_every_length_encoding():
    for length in (0, 125, 126, 65536):
        data = bytes(range(256)) * (length // 256) + bytes(length % 256)
        assert parse_frames(frame(data)) == [(True, 2, data)]
    assert parse_frames(frame("text")) == [(True, 1, b"text")]


# --- the generic adapter and the outbox -------------------------------------------------------


@pytest.fixture
def fresh_process(monkeypatch):
    """As if no connection had yet been served in this process."""
    monkeypatch.setattr(outbound, "_generic_announced", False)


def test_an_unknown_server_gets_the_generic_adapter_said_at_warning_once_per_process(
    fresh_process, caplog
):
    import functools

    queue: asyncio.Queue = asyncio.Queue()  # channels' ApplicationCommunicator passes queue.put

    async def handle_reply(protocol, message): ...

    not_daphne = functools.partial(handle_reply, object())  # Daphne's shape, not its protocol
    before = stats.counters["fallback_connections"]
    with caplog.at_level(logging.DEBUG, logger="realtime.outbound"):
        chosen = [adapter_for(queue.put, "c1"), adapter_for(not_daphne, "c2")]
    assert [adapter.kind for adapter in chosen] == ["generic", "generic"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "generic ASGI adapter" in warnings[0]
    assert stats.counters["fallback_connections"] == before + 2


class StalledClient:
    """An ASGI `send` with backpressure, as a server applies it: after `room` texts it blocks."""

    def __init__(self, room: int):
        self.room = room
        self.sent: list[dict] = []

    async def __call__(self, message: dict) -> None:
        self.sent.append(message)
        if message["type"] == "websocket.send" and len(self.texts()) > self.room:
            await asyncio.Event().wait()  # the client reads nothing more

    def texts(self) -> list[str]:
        return [m["text"] for m in self.sent if m["type"] == "websocket.send"]

    def close(self) -> dict:
        return next(m for m in self.sent if m["type"] == "websocket.close")


def outbox_for(send, **limits) -> tuple[Outbox, list[asyncio.Task]]:
    closing: list[asyncio.Task] = []
    box: Outbox

    def give_up(code: int, reason: str) -> None:  # what the consumer's close_with does
        closing.append(box.close(code, reason))

    limits = {"max_messages": 1000, "max_bytes": 1 << 30} | limits
    box = Outbox(send, name="c", give_up=give_up, **limits)
    return box, closing


@pytest.mark.parametrize("bound", [{"max_messages": 5}, {"max_bytes": 500}])
async def test_through_the_generic_adapter_a_client_that_stops_reading_is_closed_with_4508(
    bound, caplog
):
    client = StalledClient(room=1)
    box, closing = outbox_for(client, **bound)
    assert box.adapter.kind == "generic"
    before = stats.counters["slow_consumer_closes"]
    with caplog.at_level(logging.WARNING, logger="realtime.outbound"):
        for n in range(50):
            box.push(json.dumps({"n": n, "pad": "x" * 40}))
            await asyncio.sleep(0)
        await asyncio.wait_for(closing[0], 2)
    assert len(closing) == 1
    assert client.close()["code"] == 4508
    assert len(client.texts()) == 2  # one sent, one blocked; the rest was queued, then dropped
    assert stats.counters["slow_consumer_closes"] == before + 1
    assert "is not keeping up" in caplog.text and "via generic" in caplog.text


async def test_a_message_over_the_servers_limit_closes_with_1009_after_whats_queued(caplog):
    client = StalledClient(room=100)
    adapter = outbound.GenericAdapter()
    adapter.max_message_bytes = 100
    box, closing = outbox_for(client, adapter=adapter)
    before = stats.counters["messages_too_large"]
    with caplog.at_level(logging.WARNING, logger="realtime.outbound"):
        box.push("a" * 100)  # exactly at the limit: sent
        box.push("é" * 60)  # 60 characters, 120 bytes: over
        box.push("after")  # the connection is closing: nothing more
        await asyncio.wait_for(closing[0], 2)
    assert client.texts() == ["a" * 100]
    close = client.close()
    assert close["code"] == 1009 and "message too big: 120 bytes, limit 100" in close["reason"]
    assert stats.counters["messages_too_large"] == before + 1
    assert "over the server's limit" in caplog.text


async def test_a_close_sends_what_is_queued_first_except_for_4508():
    gate = asyncio.Event()

    async def slow_send(message):
        sent.append(message)
        if message["type"] == "websocket.send" and not gate.is_set():
            await asyncio.sleep(0.05)

    sent: list[dict] = []
    box, _ = outbox_for(slow_send)
    for n in range(3):
        box.push(f"m{n}")
    await asyncio.wait_for(box.close(4000, "operator"), 2)
    assert [m.get("text", m.get("code")) for m in sent] == ["m0", "m1", "m2", 4000]


class FrameWriter(outbound.ServerAdapter):
    """An adapter whose socket takes frames while `room` lasts (then, like Twisted's, holds them
    unsent): what `Outbox.push_frame` sees of a server."""

    kind = "frame-writer"

    def __init__(self, room: int) -> None:
        self.room = room
        self.frames: list[bytes] = []
        self.held: list[bytes] = []

    def unsent_bytes(self) -> int:
        return sum(map(len, self.held))

    def write_frame(self, data: bytes) -> bool:
        if self.held or len(self.frames) >= self.room:
            return False
        self.frames.append(data)
        return True

    def write(self, message: str | bytes, unsent: int) -> bool:
        if not self.write_frame(frame(message)):
            self.held.append(frame(message))
        return True


async def test_a_broadcasts_frame_goes_straight_out_and_behind_whatever_waits_in_order():
    """The fused path writes the given frame while nothing is unsent; once the socket holds
    bytes back, messages take `push` (bound checked, written behind them), in order."""
    adapter = FrameWriter(room=2)
    box, _ = outbox_for(None, adapter=adapter)
    texts = [f'{{"n":{n}}}' for n in range(5)]
    for text in texts:
        assert box.push_frame(text, frame(text))
    assert adapter.frames == [frame(t) for t in texts[:2]]
    assert adapter.held == [frame(t) for t in texts[2:]]


async def test_a_broadcasts_frame_waits_behind_a_send_in_progress_and_a_closing_box_takes_none():
    release = asyncio.Event()
    sent: list[str] = []

    async def blocking_send(message: dict) -> None:
        sent.append(message.get("text", message.get("code")))
        if len(sent) == 1:
            await release.wait()

    class FirstThroughSend(FrameWriter):
        def write(self, message: str | bytes, unsent: int) -> bool:
            return False if message == "first" else super().write(message, unsent)

    adapter = FirstThroughSend(room=10)
    box, _ = outbox_for(blocking_send, adapter=adapter)
    box.push("first")  # the server's send, which blocks
    assert box.push_frame("second", frame("second"))  # the socket would take it: queued
    box.push("third")
    release.set()
    await asyncio.wait_for(box._drain_task, 2)
    assert sent == ["first", "second", "third"] and adapter.frames == []
    box.close(1000)
    assert box.push_frame("late", frame("late")) is False


async def test_a_broadcasts_message_over_the_size_limit_still_closes_with_1009():
    client = StalledClient(room=100)
    adapter = FrameWriter(room=100)
    adapter.max_message_bytes = 100
    box, closing = outbox_for(client, adapter=adapter)
    big = "é" * 60  # 120 bytes
    assert box.push_frame(big, frame(big))
    await asyncio.wait_for(closing[0], 2)
    assert adapter.frames == [] and client.close()["code"] == 1009


async def test_an_adapter_whose_fast_write_breaks_falls_back_to_the_full_path_once(caplog):
    class Broken(FrameWriter):
        calls = 0

        def write_frame(self, data: bytes) -> bool:
            if type(self).calls == 0:
                type(self).calls += 1
                raise AttributeError("'Server' object has no attribute '_tempDataLen'")
            return super().write_frame(data)

    adapter = Broken(room=10)
    box, _ = outbox_for(None, adapter=adapter)
    with caplog.at_level(logging.ERROR, logger="realtime.outbound"):
        for text in ("a", "b"):
            assert box.push_frame(text, frame(text))
    assert caplog.text.count("Direct write failed") == 1
    assert adapter.frames == [frame("a"), frame("b")]  # through `write`, then `write`
    assert box._write_frame("c") is False  # the fast path is the base's: it writes nothing


# --- real servers ----------------------------------------------------------------------------


class WireTap:
    """A TCP proxy to 127.0.0.1:`target` that keeps every byte the server sends."""

    def __init__(self, target: int):
        self.target = target
        self.from_server = bytearray()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> WireTap:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._server is not None
        self._server.close()

    async def _relay(self, client_reader, client_writer) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target)

        async def pipe(reader, writer, keep: bool) -> None:
            try:
                while data := await reader.read(65536):
                    if keep:
                        self.from_server += data
                    writer.write(data)
                    await writer.drain()
            finally:
                writer.close()

        await asyncio.gather(
            pipe(client_reader, server_writer, False),
            pipe(server_reader, client_writer, True),
            return_exceptions=True,
        )


async def _exchange_through(server, trader_token, url=None, **connect):
    """Strategy updates of growing size, one over 64 KiB, to one subscriber: all, in order."""
    from tests.rest import api
    from tests.wsclient import connect as ws_connect
    from tests.wsclient import receive, receive_type, subscribe

    async with api(server, trader_token) as client:
        strategy = (await client.post("/api/strategies/", json={"name": "s"})).json()
        ws = await ws_connect(url or server.ws_url, token=trader_token, max_size=None, **connect)
        await receive_type(ws, "AUTHENTICATION")
        await subscribe(ws, f"strategy:{strategy['id']}")
        big = {"blob": "z" * 70_000}  # a frame with a 64-bit length
        sizes = [{"n": n} for n in range(20)] + [big, {"n": 20}]
        for parameters in sizes:
            response = await client.patch(
                f"/api/strategies/{strategy['id']}/", json={"parameters": parameters}
            )
            assert response.status_code == 200, response.text
    received = [await receive(ws) for _ in sizes]
    assert [m["payload"]["parameters"] for m in received] == sizes
    await ws.close()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_under_daphne_messages_go_straight_to_the_socket_whole_and_in_order(
    trader, trader_token
):
    """A real Daphne: the debug log says which path a connection took; the client checks frames."""
    from tests.live import live_server

    with live_server(env={"DJANGO_LOG_LEVEL": "DEBUG"}) as server:
        await _exchange_through(server, trader_token)
        log = server.log_path.read_text()
        assert "(daphne-tcp): frames go straight to the socket" in log
        assert "Daphne's connections get a lean inbox instead of an asyncio.Queue" in log


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_over_tls_a_wss_client_gets_every_message_and_nothing_crosses_the_wire_in_clear(
    trader, trader_token
):
    """Daphne on `-e ssl:...`: authenticate, subscribe, small and large updates, all encrypted."""
    from tests.live import live_server

    with live_server(tls=True, env={"DJANGO_LOG_LEVEL": "DEBUG"}) as server:
        async with WireTap(server.tls_port) as tap:
            url = f"wss://127.0.0.1:{tap.port}/ws"
            await _exchange_through(server, trader_token, url, ssl=server.client_ssl_context())
        log = server.log_path.read_text()
    assert "(daphne-tls): frames go through the TLS transport" in log
    assert len(tap.from_server) > 70_000
    for clear in (b"AUTHENTICATION", b"connectionId", b"STRATEGY_UPDATE", b"z" * 64):
        assert clear not in tap.from_server


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_under_uvicorn_messages_arrive_whole_and_in_order_with_or_without_deflate(
    trader, trader_token, compression
):
    """uvicorn negotiates permessage-deflate when offered: then its own send compresses."""
    pytest.importorskip("uvicorn")
    from tests.live import live_server

    with live_server(server="uvicorn", env={"DJANGO_LOG_LEVEL": "DEBUG"}) as server:
        await _exchange_through(server, trader_token, compression=compression)
        log = server.log_path.read_text()
        direct = "(uvicorn): frames go straight to the transport" in log
        assert direct is (compression is None)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_under_granian_messages_arrive_whole_and_in_order_and_no_send_counts_as_failed(
    trader, trader_token
):
    """Granian's send returns a future of its own, not a coroutine: the generic adapter awaits
    it (it once took every send for a failure: a WARNING each and the queue dropped)."""
    pytest.importorskip("granian")
    from tests.live import live_server

    with live_server(server="granian") as server:
        await _exchange_through(server, trader_token)
        log = server.log_path.read_text()
    assert "using the generic ASGI adapter" in log
    assert "Send failed" not in log


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("path", "twisted"),
    [
        ("daphne-tcp", "as expected"),
        ("daphne-tls", "as expected"),
        ("uvicorn", "-"),
        ("generic", "-"),  # Granian: the ASGI send's own backpressure
        ("daphne-backpressure", "tcp buffer unknown"),
        ("daphne-backpressure", "tls buffer unknown"),
    ],
)
async def test_a_client_that_stops_reading_is_closed_with_4508_on_every_server_path(
    trader, staff, path, twisted
):
    """Daphne's send never blocks (Twisted's buffers overflow), uvicorn's and Granian's do (the
    queue does).

    With Twisted's private buffer attributes not as expected (a Twisted that renamed them), the
    bound still holds, through Twisted's public producer API.
    """
    import httpx
    import websockets
    from asgiref.sync import sync_to_async

    from tests.conftest import access_token_for
    from tests.live import live_server
    from tests.wsclient import receive_type, subscribe

    token = await sync_to_async(access_token_for)(trader)
    staff_token = await sync_to_async(access_token_for)(staff)
    tls = path == "daphne-tls" or twisted == "tls buffer unknown"
    servers = {"uvicorn": "uvicorn", "generic": "granian"}
    options: dict = {"server": servers[path]} if path in servers else {"tls": tls}
    if path == "generic":
        pytest.importorskip("granian")
    if twisted.endswith("unknown"):  # the real server, meeting internals it does not know
        options["prelude"] = (
            "import realtime.outbound as outbound\n"
            "outbound._tcp_buffer_is_known = lambda tcp: False"
        )
    with live_server(realtime={"SEND_BUFFER_MAX_BYTES": 65536}, **options) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that lags
        sock.connect(("127.0.0.1", server.tls_port if tls else server.port))
        secure: dict = {"ssl": server.client_ssl_context()} if tls else {}
        url = server.wss_url if tls else server.ws_url
        # max_queue: the library stops reading the socket once 4 messages wait unread. No
        # permessage-deflate (uvicorn would accept it): ticks compress too well to fill buffers.
        ws = await websockets.connect(
            f"{url}?token={token}", sock=sock, max_queue=4, compression=None, **secure
        )
        await receive_type(ws, "AUTHENTICATION")
        await subscribe(ws, "market:SLOW")

        given_up = asyncio.Event()

        async def flood():
            ticks = [{"symbol": "SLOW", "last": "1.5", "volume": str(n)} for n in range(200)]
            headers = {"Authorization": f"Bearer {staff_token}"}
            async with httpx.AsyncClient(base_url=server.http_url, headers=headers) as client:
                for _ in range(300):
                    if given_up.is_set():
                        return
                    response = await client.post("/api/market-data/", json=ticks, timeout=30)
                    assert response.status_code == 202

        publisher = asyncio.create_task(flood())
        for _ in range(2000):  # the server logs when it gives up on the client
            if f"via {path}); closing it with 4508" in server.log_path.read_text():
                given_up.set()
                break
            await asyncio.sleep(0.01)
        else:
            publisher.cancel()
            raise AssertionError(f"the server never found the client too slow:\n{server.log()}")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await ws.recv()
        # The close frame comes after all the client left unread; a client that reads it within
        # the server's closing handshake timeout sees 4508, a slower one just loses the socket.
        assert closed.value.rcvd is None or closed.value.rcvd.code == 4508
        await publisher


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_a_message_over_daphnes_size_limit_closes_with_1009_and_a_reason(
    trader, trader_token, tls
):
    """Daphne sets autobahn's outbound limit (--websocket-max-message-size); never a silent drop."""
    import websockets

    from tests.live import live_server
    from tests.rest import api
    from tests.wsclient import connect as ws_connect
    from tests.wsclient import receive, receive_type, subscribe

    limit = ["--websocket-max-message-size", "20000"]
    with live_server(tls=tls, server_args=limit) as server:
        secure: dict = {"ssl": server.client_ssl_context()} if tls else {}
        async with api(server, trader_token) as client:
            strategy = (await client.post("/api/strategies/", json={"name": "s"})).json()
            url = server.wss_url if tls else server.ws_url
            ws = await ws_connect(url, token=trader_token, **secure)
            await receive_type(ws, "AUTHENTICATION")
            await subscribe(ws, f"strategy:{strategy['id']}")
            for blob in ("small", "z" * 30_000):
                response = await client.patch(
                    f"/api/strategies/{strategy['id']}/", json={"parameters": {"blob": blob}}
                )
                assert response.status_code == 200, response.text
        assert (await receive(ws))["payload"]["parameters"] == {"blob": "small"}
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await receive(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        assert "message too big" in closed.value.rcvd.reason
        assert "limit 20000" in closed.value.rcvd.reason
        assert "over the server's limit of 20000 bytes" in server.log()


# Objects of one WebSocket connection, ours and Daphne's (Twisted, autobahn).
CONNECTION_TYPES = (
    "RealtimeConsumer",
    "Outbox",
    "DaphneTCPAdapter",
    "DaphneTLSAdapter",
    "WebSocketProtocol",
    "HTTPChannel",
    "WebRequest",
)
# Those that only a WebSocket connection has (the REST client's requests use the HTTP ones).
WEBSOCKET_TYPES = CONNECTION_TYPES[:5]


def _gc_report(server, tmp_path, kind: str, signum: int) -> dict:
    """What bench/gcwatch in the server writes on a signal: a census of the objects the
    collector tracks (SIGUSR1), or the objects a full collection found in cycles (SIGUSR2)."""
    import os
    import time

    path = tmp_path / f"gc.{kind}.{server.process.pid}"
    path.unlink(missing_ok=True)
    os.kill(server.process.pid, signum)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if path.exists():
            try:
                return json.loads(path.read_text())
            except ValueError:
                pass  # being written
        time.sleep(0.05)
    raise AssertionError(f"the server wrote no {kind} report")


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("tls", [False, True])
async def test_a_closed_connection_is_freed_at_once_not_left_in_cycles_for_the_collector(
    trader, trader_token, tmp_path, tls
):
    """Connection churn must not grow memory until a rare full collection (issue 18): 30
    connections authenticate, subscribe, get an update and close; within seconds none of their
    objects is alive, and a full collection then finds none of them in a reference cycle.
    Without the cycles broken at disconnect (the outbox's give_up, autobahn's is_closed,
    Twisted's HTTPChannel.requests) every one of them waits for a full collection."""
    import signal

    from tests.live import ROOT, live_server
    from tests.rest import api
    from tests.wsclient import connect as ws_connect
    from tests.wsclient import receive_type, subscribe

    env = {
        "PYTHONPATH": str(ROOT / "bench" / "gcwatch"),
        "BENCH_GC_LOG": str(tmp_path / "gc"),
        "BENCH_GC_CYCLES": ",".join(CONNECTION_TYPES),
    }
    # Without the young generations' beat (realtime.collector), which would collect a young
    # cycle within a second and hide it from this test.
    off = {"GC_YOUNG_INTERVAL_SECS": 0}
    with live_server(tls=tls, env=env, realtime=off) as server:
        url = server.wss_url if tls else server.ws_url
        secure = {"ssl": server.client_ssl_context()} if tls else {}
        async with api(server, trader_token) as client:
            strategy = (await client.post("/api/strategies/", json={"name": "s"})).json()
            clients = []
            for _ in range(30):
                ws = await ws_connect(url, token=trader_token, **secure)
                await receive_type(ws, "AUTHENTICATION")
                await subscribe(ws, f"strategy:{strategy['id']}")
                clients.append(ws)
            census = _gc_report(server, tmp_path, "census", signal.SIGUSR1)
            alive = dict(census["types"])
            assert (
                alive.get("RealtimeConsumer", 0) >= 30 and alive.get("WebSocketProtocol", 0) >= 30
            )
            response = await client.patch(
                f"/api/strategies/{strategy['id']}/", json={"parameters": {"n": 1}}
            )
            assert response.status_code == 200
            for ws in clients:
                await receive_type(ws, "STRATEGY_UPDATE")
                await ws.close()
        deadline = asyncio.get_running_loop().time() + 10
        while True:  # the server handles each disconnect on its own loop: give it a moment
            census = _gc_report(server, tmp_path, "census", signal.SIGUSR1)
            alive = {name: n for name, n in census["types"] if name in WEBSOCKET_TYPES}
            if not alive or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.2)
        assert alive == {}, f"still alive after the clients left: {alive}"
        garbage = _gc_report(server, tmp_path, "garbage", signal.SIGUSR2)
    # (Not WebRequest: the REST requests of this test are garbage of their own, for another day.)
    in_cycles = {name: n for name, n in garbage["types"] if name in CONNECTION_TYPES[:-1]}
    assert in_cycles == {}, f"left in cycles: {in_cycles}; {garbage['cycles']}"


def _autobahn_connection() -> tuple[object, object]:
    """A real autobahn server protocol made on a real (in-memory) Twisted transport."""
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.internet.testing import StringTransport

    factory = WebSocketServerFactory("ws://127.0.0.1:9")
    factory.protocol = WebSocketServerProtocol
    protocol = factory.buildProtocol(("127.0.0.1", 9))
    transport = StringTransport()
    return protocol, transport


def test_autobahns_per_connection_debug_lines_cost_no_formatting_unless_logged(monkeypatch):
    """autobahn pformats 29 options on every connection for a debug line (about 230 us, a fifth
    of a connect); with the deferral a connection formats nothing while debug is off, and the
    line reads the same as autobahn's own once debug is on."""
    import pprint

    import autobahn.websocket.protocol as autobahn_protocol
    import txaio
    from twisted.logger import formatEvent, globalLogPublisher

    from realtime import outbound

    monkeypatch.setattr(autobahn_protocol, "pformat", pprint.pformat)
    assert outbound.defer_autobahn_debug_formatting() is True
    assert outbound.defer_autobahn_debug_formatting() is True  # again: already done
    formatted = []
    original = pprint.pformat
    monkeypatch.setattr(pprint, "pformat", lambda value: formatted.append(value) or original(value))

    protocol, transport = _autobahn_connection()
    protocol.makeConnection(transport)
    assert formatted == []  # debug off (txaio's default): nothing formatted

    lines: list[str] = []
    observer = lambda event: lines.append(formatEvent(event))  # noqa: E731
    level = txaio.get_global_log_level()
    globalLogPublisher.addObserver(observer)
    txaio.set_global_log_level("debug")
    try:
        protocol, transport = _autobahn_connection()
        protocol.makeConnection(transport)
    finally:
        txaio.set_global_log_level(level)
        globalLogPublisher.removeObserver(observer)
    options = formatted[0]
    assert [name for name, _, _ in options] == list(protocol.CONFIG_ATTRS)
    assert any(original(options) in line for line in lines), lines


def test_autobahns_formatting_is_left_alone_when_it_is_not_what_we_expect(monkeypatch, caplog):
    import autobahn.websocket.protocol as autobahn_protocol

    from realtime import outbound

    def their_own(value):
        return "theirs"

    monkeypatch.setattr(autobahn_protocol, "pformat", their_own)
    with caplog.at_level("DEBUG", logger="realtime.outbound"):
        assert outbound.defer_autobahn_debug_formatting() is False
    assert autobahn_protocol.pformat is their_own
    assert "left as it is" in caplog.text


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_real_daphne_defers_autobahns_debug_formatting():
    """Daphne loads autobahn before the application: the deferral applies in a real server."""
    from tests.live import live_server

    with live_server(env={"DJANGO_LOG_LEVEL": "DEBUG"}) as server:
        assert "debug lines are formatted only when logged" in server.log()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("tls", [False, True])
async def test_an_open_connection_does_not_keep_its_upgrade_request(trader_token, tmp_path, tls):
    """Daphne leaves the HTTP request that carried the upgrade in its channel for the life of
    the connection (about 2 KiB each, docs/BENCHMARKS.md); 20 open, subscribed connections on
    a real Daphne keep none of theirs, and still get their updates and close cleanly."""
    import signal

    from tests.live import ROOT, live_server
    from tests.wsclient import connect as ws_connect
    from tests.wsclient import receive_type, subscribe

    env = {"PYTHONPATH": str(ROOT / "bench" / "gcwatch"), "BENCH_GC_LOG": str(tmp_path / "gc")}
    with live_server(tls=tls, env=env) as server:
        url = server.wss_url if tls else server.ws_url
        secure = {"ssl": server.client_ssl_context()} if tls else {}
        clients = []
        for _ in range(20):
            ws = await ws_connect(url, token=trader_token, **secure)
            await receive_type(ws, "AUTHENTICATION")
            await subscribe(ws, "market:UPG")
            clients.append(ws)
        deadline = asyncio.get_running_loop().time() + 10
        while True:  # Daphne itself drops its reference within a second or two (its checker)
            alive = dict(_gc_report(server, tmp_path, "census", signal.SIGUSR1)["types"])
            requests = alive.get("WebRequest", 0)
            if not requests or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.5)
        assert alive.get("WebSocketProtocol", 0) >= 20
        assert requests == 0, f"{requests} upgrade requests alive"
        assert alive.get("HTTPChannel", 0) >= 20  # the channel itself stays: the producer
        for ws in clients:  # and the connections work on
            await subscribe(ws, "market:UPG2")
        for ws in clients:
            await ws.close()


BOUNDS = {"max_messages": 1000, "max_bytes": 1 << 30}


def _open_daphne_adapter():
    """A real autobahn server protocol, handshake done, on an in-memory Twisted transport, and
    the Daphne adapter over it."""
    from realtime.outbound import DaphneTCPAdapter

    protocol, transport = _autobahn_connection()
    # What the adapter reads of Twisted's tcp.Server to count unsent bytes (none here).
    transport.dataBuffer, transport.offset, transport._tempDataLen = b"", 0, 0
    protocol.makeConnection(transport)
    protocol.dataReceived(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert protocol.state == protocol.STATE_OPEN
    return protocol, DaphneTCPAdapter(protocol, transport, "c")


async def test_a_send_racing_the_clients_close_is_counted_apart_and_not_a_warning(caplog):
    """Under churn a broadcast often reaches a connection whose client has just closed it,
    before its disconnect is handled: autobahn raises Disconnected. That is counted as
    `sends_after_client_close` and said at DEBUG (it was 4,366 WARNINGs in a 10-minute soak);
    any other failure of the server's send stays a WARNING and a `send_failures`."""
    from autobahn.exception import Disconnected
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    protocol, adapter = _open_daphne_adapter()
    assert adapter.client_closed(RuntimeError("anything")) is False  # open: not that race

    def daphne_send(message):  # Daphne's reply path: autobahn's sendMessage
        protocol.sendMessage(message.get("text", "").encode())

    box = Outbox(
        daphne_send, name="c", give_up=lambda code, reason: None, adapter=adapter, **BOUNDS
    )
    protocol.connectionLost(Failure(ConnectionDone()))
    with pytest.raises(Disconnected):
        protocol.sendMessage(b"x")
    closed_before = stats.counters["sends_after_client_close"]
    failures_before = stats.counters["send_failures"]
    with caplog.at_level(logging.DEBUG, logger="realtime.outbound"):
        box.push('{"n":1}')
    assert stats.counters["sends_after_client_close"] == closed_before + 1
    assert stats.counters["send_failures"] == failures_before
    assert "after the client closed it" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    protocol, adapter = _open_daphne_adapter()  # open, and the send fails for another reason

    def broken_send(message):
        raise RuntimeError("the server's send broke")

    box = Outbox(
        broken_send, name="c", give_up=lambda code, reason: None, adapter=adapter, **BOUNDS
    )
    protocol.state = protocol.STATE_CLOSING  # not writable directly: the server's send is used
    with caplog.at_level(logging.WARNING, logger="realtime.outbound"):
        box.push('{"n":2}')
    assert stats.counters["send_failures"] == failures_before + 1
    assert "Send failed on c" in caplog.text


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_daphnes_timeout_sweep_is_spread_over_its_two_seconds_and_still_times_out(
    trader_token,
):
    """A real Daphne whose connections time out after 5 s (`--websocket_timeout 5`): 120
    connections are swept in two slices a second apart, and the spread sweep is what closes them
    (installed at the first connection; Daphne's own sweep, scheduled before, runs at most once
    more, within 2 s of it, before any connection is 5 s old)."""
    import websockets

    from tests.live import live_server
    from tests.wsclient import connect, receive_type

    count = 120
    with live_server(
        env={"DJANGO_LOG_LEVEL": "DEBUG"},
        server_args=["--websocket_timeout", "5"],
    ) as server:
        opened = asyncio.get_running_loop().time()
        clients = await asyncio.gather(
            *(connect(server.ws_url, token=trader_token) for _ in range(count))
        )
        for ws in clients:
            await receive_type(ws, "AUTHENTICATION")

        async def closed(ws) -> float:
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    await ws.recv()
            return asyncio.get_running_loop().time() - opened

        lived = await asyncio.wait_for(asyncio.gather(*(closed(ws) for ws in clients)), 20)
        assert {ws.close_code for ws in clients} == {1000}
        assert min(lived) > 4.5  # not before their time
        log = server.log_path.read_text()
        assert "Daphne's timeout sweep is spread over its 2 s" in log
        sweep = rf"Daphne's timeout sweep \d+: {count} connections in 2 slices of up to 60, 1.00 s"
        assert re.search(sweep, log), log[-3000:]


def test_a_server_that_is_not_daphnes_keeps_its_sweep(caplog):
    """Internals not as expected (here: no `connections` dict): nothing is installed."""

    class Elsewhere:
        connections = ()

        def timeout_checker(self):
            pass

    server = Elsewhere()
    with caplog.at_level(logging.DEBUG, logger="realtime.outbound"):
        assert outbound.spread_daphne_timeout_sweep(server) is False
    assert "timeout_checker" not in vars(server)
    assert "its sweep left as it is" in caplog.text
    assert outbound.spread_daphne_timeout_sweep(None) is False


def test_a_connection_lost_before_its_adapter_is_chosen_is_no_warning(fresh_process, caplog):
    """Under a storm a client may be gone before its connection's adapter is chosen: Twisted's
    connectionLost has then deleted the tcp.Server's socket, which looked like unknown Twisted
    internals (a WARNING and a fallback counted, once per storm run). Real Twisted objects: a
    tcp.Server on a real socket, lost as Twisted loses it."""
    import functools

    from daphne.ws_protocol import WebSocketProtocol
    from twisted.internet import reactor, tcp
    from twisted.internet.error import ConnectionDone
    from twisted.internet.protocol import Protocol
    from twisted.python.failure import Failure

    ours, theirs = socket.socketpair()
    # Under Daphne the tcp.Server's protocol is the HTTP channel that upgraded; the WebSocket
    # protocol (Daphne's class, no server needed here) is given its transport.
    transport = tcp.Server(ours, Protocol(), ("127.0.0.1", 1), None, 1, reactor)
    protocol = WebSocketProtocol.__new__(WebSocketProtocol)
    protocol.transport = transport

    async def handle_reply(protocol, message): ...

    send = functools.partial(handle_reply, protocol)  # Daphne's send, as its server makes it
    try:
        assert outbound._tcp_buffer_is_known(transport)  # open: what the TCP adapter reads
        transport.connectionLost(Failure(ConnectionDone()))
        assert transport.disconnected and not hasattr(transport, "socket")
        before = stats.counters["fallback_connections"]
        with caplog.at_level(logging.DEBUG, logger="realtime.outbound"):
            adapter = adapter_for(send, "c1")
        assert adapter.kind == "generic"
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
        assert "closed before its adapter was chosen" in caplog.text
        assert stats.counters["fallback_connections"] == before
    finally:
        theirs.close()
        with contextlib.suppress(OSError):
            ours.close()


# --- Daphne's per-connection inbox ------------------------------------------------------------

ENDPOINTS = ["tcp:port=0:interface=127.0.0.1"]  # Daphne's Server wants one; never listened on


async def test_the_lean_inbox_hands_messages_in_order_and_wakes_a_waiting_get():
    inbox = outbound.DaphneInbox()
    assert inbox  # Daphne tests `if self.application_queue:`
    inbox.put_nowait({"n": 1})
    inbox.put_nowait({"n": 2})
    assert [await inbox.get(), await inbox.get()] == [{"n": 1}, {"n": 2}]
    waiting = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    inbox.put_nowait({"n": 3})
    assert await asyncio.wait_for(waiting, 1) == {"n": 3}
    assert inbox.qsize() == 0


async def test_a_cancelled_get_takes_nothing_and_passes_its_wake_up_on():
    inbox = outbound.DaphneInbox()
    first = asyncio.ensure_future(inbox.get())
    second = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait("m1")  # wakes `first`...
    first.cancel()  # ...which is cancelled before it runs
    assert await asyncio.wait_for(second, 1) == "m1"
    with pytest.raises(asyncio.CancelledError):
        await first
    inbox.put_nowait("m2")
    assert await inbox.get() == "m2"


async def test_several_waiting_gets_each_take_one_message():
    inbox = outbound.DaphneInbox()
    gets = [asyncio.ensure_future(inbox.get()) for _ in range(3)]
    await asyncio.sleep(0)
    for n in range(3):
        inbox.put_nowait(n)
    assert sorted(await asyncio.wait_for(asyncio.gather(*gets), 1)) == [0, 1, 2]


async def test_a_real_daphne_server_gives_its_applications_the_lean_inbox(caplog):
    """daphne.server.Server itself (not started): after `lighten_daphne_inboxes`, a connection's
    application gets its messages through a DaphneInbox, and its replies reach handle_reply."""
    from daphne.server import Server

    received: list[dict] = []

    async def application(scope, receive, send):
        received.append(await receive())
        await send({"type": "websocket.accept"})

    server = Server(application=application, endpoints=ENDPOINTS)
    replies: list[tuple[object, dict]] = []

    async def handle_reply(protocol, message):
        replies.append((protocol, message))

    server.handle_reply = handle_reply
    server.connections = {}  # as Server.run() starts it
    protocol = object()
    server.connections[protocol] = {"connected": 0}
    with caplog.at_level(logging.DEBUG, logger="realtime.outbound"):
        assert outbound.lighten_daphne_inboxes(server) is True
        assert outbound.lighten_daphne_inboxes(server) is True  # once
    assert caplog.text.count("lean inbox") == 1
    inbox = server.create_application(protocol, {"type": "websocket"})
    assert isinstance(inbox, outbound.DaphneInbox)
    inbox.put_nowait({"type": "websocket.connect"})
    await asyncio.wait_for(server.connections[protocol]["application_instance"], 1)
    assert received == [{"type": "websocket.connect"}]
    assert replies == [(protocol, {"type": "websocket.accept"})]


def test_a_server_that_is_not_daphnes_keeps_its_queues(caplog):
    from daphne.server import Server

    class Elsewhere:
        connections: dict = {}
        application = handle_reply = staticmethod(lambda *a: None)

    class Changed(Server):  # a Daphne whose create_application is no longer the one we copy
        def create_application(self, protocol, scope):
            return None

    Changed.__module__ = "daphne.server"
    with caplog.at_level(logging.DEBUG, logger="realtime.outbound"):
        changed = Changed(application=lambda *a: None, endpoints=ENDPOINTS)
        for server in (Elsewhere(), changed):
            assert outbound.lighten_daphne_inboxes(server) is False
            assert "create_application" not in vars(server)
        assert outbound.lighten_daphne_inboxes(None) is False
    assert "its queues left as they are" in caplog.text
