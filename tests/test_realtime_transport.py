"""Sending without a task per message when the server's send never blocks (realtime.transport)."""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import socket
from types import SimpleNamespace

import pytest

from realtime.transport import direct_text_writer, send_now, text_frame


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


# --- frames written straight to the socket under Daphne (direct_text_writer) -----------------


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


class FakeTwistedTransport:
    """The attributes of twisted.internet.tcp.Server that the writer reads, over a real socket."""

    TLS = False

    def __init__(self, sock: socket.socket):
        self.socket = sock
        self.connected = 1
        self.disconnecting = False
        self._writeDisconnected = False
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataBuffer: list[bytes] = []
        self._tempDataLen = 0

    def write(self, data: bytes) -> None:
        assert isinstance(data, bytes)  # Twisted refuses anything else
        self._tempDataBuffer.append(data)
        self._tempDataLen += len(data)


class FakeAutobahnProtocol:
    STATE_OPEN = 3
    SEND_STATE_GROUND = 0

    def __init__(self, transport: FakeTwistedTransport):
        self.transport = transport
        self.factory = SimpleNamespace(isServer=True)
        self.state = self.STATE_OPEN
        self.send_state = self.SEND_STATE_GROUND
        self.send_queue: collections.deque = collections.deque()
        self._perMessageCompress = None
        self.maskServerFrames = False
        self.autoFragmentSize = 0
        self.maxMessagePayloadSize = 1 << 20  # Daphne's default --websocket_max_message_size
        self.logFrames = False
        self.logOctets = False
        self.trackedTimings = None


@pytest.fixture
def daphne_like():
    """(write, protocol, transport, peer): a writer built from a Daphne-shaped `send`."""
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.settimeout(2)
    transport = FakeTwistedTransport(ours)
    protocol = FakeAutobahnProtocol(transport)

    async def handle_reply(protocol, message):
        raise AssertionError("the writer must not go through Daphne's send")

    write = direct_text_writer(functools.partial(handle_reply, protocol), "c1")
    assert write is not None
    yield write, protocol, transport, peer
    ours.close()
    peer.close()


def test_with_nothing_unsent_the_frame_goes_to_the_socket_at_once(daphne_like):
    write, _, transport, peer = daphne_like
    assert write("one") and write("two")
    assert transport._tempDataBuffer == []
    assert parse_frames(peer.recv(100)) == [(True, 1, b"one"), (True, 1, b"two")]


def test_behind_unsent_bytes_the_frame_queues_in_twisted_in_order(daphne_like):
    write, _, transport, peer = daphne_like
    transport.write(b"earlier")
    assert write("later")
    assert transport._tempDataBuffer == [b"earlier", text_frame("later")]
    transport.dataBuffer, transport.offset = b"partly sent", 6  # doWrite's half-sent buffer
    transport._tempDataBuffer, transport._tempDataLen = [], 0
    assert write("after that")
    assert transport._tempDataBuffer == [text_frame("after that")]
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(100)  # nothing overtook what Twisted holds


def test_what_a_full_socket_buffer_does_not_take_is_left_to_twisted(daphne_like):
    write, _, transport, _peer = daphne_like
    filler = b"\0" * 65536
    while True:  # fill the kernel's buffers until the socket takes nothing more
        try:
            transport.socket.send(filler)
        except BlockingIOError:
            break
    big = "y" * 200_000
    assert write(big)
    frame = text_frame(big)
    queued = b"".join(transport._tempDataBuffer)
    assert 0 < len(queued) <= len(frame) and frame.endswith(queued)
    assert transport._tempDataLen == len(queued)


def test_a_socket_error_is_left_to_twisteds_write_which_closes(daphne_like):
    write, _, transport, peer = daphne_like
    peer.close()
    transport.socket.shutdown(socket.SHUT_WR)
    assert write("into the void")
    assert b"".join(transport._tempDataBuffer) == text_frame("into the void")


@pytest.mark.parametrize(
    "change",
    [
        {"state": 1},  # connecting: not accepted yet
        {"state": 2},  # closing
        {"state": 0},  # closed
        {"send_state": 2},  # a fragmented message in progress
        {"send_queue": collections.deque([(b"ping", True)])},  # autobahn's own queue
    ],
)
def test_a_connection_not_simply_open_keeps_daphnes_path(daphne_like, change):
    write, protocol, transport, _peer = daphne_like
    vars(protocol).update(change)
    assert write("x") is False
    assert transport._tempDataBuffer == []


@pytest.mark.parametrize(
    "change",
    [
        {"_perMessageCompress": object()},
        {"maskServerFrames": True},
        {"autoFragmentSize": 1024},
        {"logFrames": True},
        {"trackedTimings": object()},
    ],
)
def test_a_connection_autobahn_frames_differently_keeps_daphnes_path(daphne_like, change):
    write, protocol, transport, _peer = daphne_like
    vars(protocol).update(change)
    assert write("x") is False
    vars(protocol).update(FakeAutobahnProtocol(transport).__dict__)
    assert write("x") is False, "decided once, when the connection is first open"


def test_a_message_near_or_over_autobahns_size_limit_keeps_daphnes_path(daphne_like):
    write, protocol, _transport, _peer = daphne_like
    protocol.maxMessagePayloadSize = 100
    assert write("x" * 90) is True
    assert write("x" * 99) is False  # payload within the limit, frame not: autobahn decides
    assert write("x" * 101) is False  # over: autobahn raises PayloadExceededError, as before
    protocol.maxMessagePayloadSize = 0  # no limit
    assert write("x" * 100_000) is True


def test_a_transport_lost_or_closing_keeps_daphnes_path(daphne_like):
    write, _, transport, _ = daphne_like
    transport.disconnecting = True
    assert write("x") is False
    transport.disconnecting, transport.connected = False, 0
    assert write("x") is False


def test_no_writer_for_tls_or_another_server():
    transport = FakeTwistedTransport(socket.socket())
    try:
        transport.TLS = True

        async def handle_reply(protocol, message): ...

        tls = functools.partial(handle_reply, FakeAutobahnProtocol(transport))
        assert direct_text_writer(tls) is None

        async def uvicorn_send(message): ...

        assert direct_text_writer(uvicorn_send) is None
    finally:
        transport.socket.close()


# --- uvicorn (websockets-sansio) ------------------------------------------------------------


class FakeAsyncioTransport:
    def __init__(self):
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing


class FakeUvicornProtocol:
    """The attributes of uvicorn's WebSocketsSansIOProtocol that the writer reads."""

    def __init__(self):
        from websockets.protocol import State

        self.conn = SimpleNamespace(
            state=State.CONNECTING, extensions=[], expect_continuation_frame=False
        )
        self.transport = FakeAsyncioTransport()
        self.writable = asyncio.Event()
        self.writable.set()
        self.close_sent = False
        self.initial_response = None

    async def send(self, message):
        raise AssertionError("the writer must not go through uvicorn's send")


@pytest.fixture
def uvicorn_like():
    from websockets.protocol import State

    protocol = FakeUvicornProtocol()
    write = direct_text_writer(protocol.send, "c2")
    assert write is not None
    assert write("before accept") is False
    protocol.conn.state = State.OPEN
    return write, protocol


def test_under_uvicorn_an_open_connections_frame_goes_to_the_transport(uvicorn_like):
    write, protocol = uvicorn_like
    assert write("one") and write("two")
    assert parse_frames(b"".join(protocol.transport.written)) == [
        (True, 1, b"one"),
        (True, 1, b"two"),
    ]


@pytest.mark.parametrize(
    "change",
    [
        lambda p: setattr(p.conn, "extensions", [object()]),  # permessage-deflate negotiated
        lambda p: p.writable.clear(),  # paused by flow control: uvicorn's send waits
        lambda p: setattr(p.transport, "closing", True),
        lambda p: setattr(p, "close_sent", True),
        lambda p: setattr(p.conn, "expect_continuation_frame", True),
        lambda p: setattr(p.conn, "state", type(p.conn.state).CLOSING),
    ],
)
def test_under_uvicorn_anything_but_simply_open_keeps_uvicorns_send(uvicorn_like, change):
    write, protocol = uvicorn_like
    change(protocol)
    assert write("x") is False
    assert protocol.transport.written == []


def test_no_writer_for_a_send_that_is_a_plain_method_of_something_else():
    queue: asyncio.Queue = asyncio.Queue()  # channels' test communicator passes queue.put
    assert direct_text_writer(queue.put) is None


async def _exchange_through(server, trader_token, **connect):
    """Strategy updates of growing size, one over 64 KiB, to one subscriber: all, in order."""
    from tests.rest import api
    from tests.wsclient import connect as ws_connect
    from tests.wsclient import receive, receive_type, subscribe

    async with api(server, trader_token) as client:
        strategy = (await client.post("/api/strategies/", json={"name": "s"})).json()
        ws = await ws_connect(server.ws_url, token=trader_token, max_size=None, **connect)
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
        assert "text frames go straight to the socket" in server.log_path.read_text()


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
        direct = "text frames go straight to the transport" in server.log_path.read_text()
        assert direct is (compression is None)
