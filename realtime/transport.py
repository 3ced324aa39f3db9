"""The server's side of a connection, where ASGI does not reach: unsent bytes and direct writes.

ASGI gives an application no view of the socket. Daphne's `send` never blocks: it hands the
frame to Twisted, which buffers without bound. Daphne passes `partial(handle_reply, protocol)`
as `send`, so the protocol (autobahn's), its Twisted transport and the transport's write
buffer can be reached from it. uvicorn passes its protocol's bound `send`, which applies
backpressure itself (the per-connection queue fills instead).

- `unsent_bytes_probe`: how many bytes Twisted holds unsent for one connection (slow-consumer
  detection under Daphne; None elsewhere).
- `direct_text_writer`: write a text message as one pre-built WebSocket frame. Both servers
  frame every message again for every socket, and Daphne's Twisted registers the socket for
  writability and writes on the next loop turn: two `epoll_ctl` calls and two selector
  updates per message and socket, about half the CPU of a broadcast (docs/BENCHMARKS.md).
  Server frames are unmasked and, with no extension negotiated, a broadcast's frame is the
  same bytes for every socket: it is built once and written as the server itself would.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import struct
from collections.abc import Callable
from typing import Any, Protocol

logger = logging.getLogger(__name__)

_LENGTH_16 = struct.Struct("!BBH")
_LENGTH_64 = struct.Struct("!BBQ")
_FIN_TEXT = 0x81  # FIN bit + opcode 1 (text)

# The last text framed and its frame, as one tuple so a reader never sees half an update. The
# hub hands the same `str` object to every subscriber of a broadcast, so an identity check
# finds it; holding the text keeps its id from being reused.
_last_frame: tuple[str | None, bytes] = (None, b"")


def text_frame(text: str) -> bytes:
    """The unmasked, unfragmented, uncompressed WebSocket frame carrying `text` (RFC 6455 5.2)."""
    global _last_frame
    last_text, frame = _last_frame
    if text is last_text:
        return frame
    payload = text.encode()
    length = len(payload)
    if length < 126:
        frame = bytes((_FIN_TEXT, length)) + payload
    elif length < 65536:
        frame = _LENGTH_16.pack(_FIN_TEXT, 126, length) + payload
    else:
        frame = _LENGTH_64.pack(_FIN_TEXT, 127, length) + payload
    _last_frame = (text, frame)
    return frame


def _daphne_protocol(send: Any) -> Any:
    """Daphne's protocol object behind an ASGI `send`, or None under any other server."""
    if not isinstance(send, functools.partial) or not send.args:
        return None
    return send.args[0]


def _twisted_tcp_transport(protocol: Any) -> Any:
    """The protocol's plain-TCP Twisted transport (with its write buffer), or None."""
    transport = getattr(protocol, "transport", None)
    if transport is None or not all(
        hasattr(transport, name) for name in ("dataBuffer", "offset", "_tempDataLen")
    ):
        return None
    return transport


def unsent_bytes_probe(send: Any) -> Callable[[], int] | None:
    """A function returning the transport's unsent bytes, or None when it cannot be known."""
    transport = _twisted_tcp_transport(_daphne_protocol(send))
    if transport is None:
        return None

    def unsent_bytes() -> int:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen

    return unsent_bytes


def _frames_as_autobahn_would(protocol: Any) -> bool:
    """Whether autobahn would send a text message as exactly `text_frame(text)`.

    It would not with compression negotiated, server frames masked, automatic fragmentation,
    frame or octet logging, or timing tracked: then its path is kept. (Its payload size limit,
    which Daphne sets, is checked per message.)
    """
    factory = getattr(protocol, "factory", None)
    return (
        getattr(factory, "isServer", False) is True
        and getattr(protocol, "_perMessageCompress", True) is None
        and getattr(protocol, "maskServerFrames", True) is False
        and getattr(protocol, "autoFragmentSize", 1) == 0
        and getattr(protocol, "logFrames", True) is False
        and getattr(protocol, "logOctets", True) is False
        and getattr(protocol, "trackedTimings", True) is None
    )


class TextWriter(Protocol):
    def __call__(self, text: str, unsent: int | None = None) -> bool: ...


def direct_text_writer(send: Any, name: str = "") -> TextWriter | None:
    """A function writing a text message as one pre-built frame, or None when it cannot.

    The function returns False, having written nothing, when the message must take the ASGI
    `send` instead (the connection is not simply open, or the server would frame the message
    differently); otherwise it writes and returns True. A caller that has just read the
    unsent-bytes probe passes its value as `unsent`, so that it is not read twice per message
    (Daphne; uvicorn has no probe and ignores it). Under Daphne (plain TCP) the frame goes
    straight to the socket; under uvicorn's default WebSocket implementation, to the asyncio
    transport. Other servers, and Daphne over TLS, get None.
    """
    protocol = _daphne_protocol(send)
    if protocol is not None:
        return _daphne_writer(protocol, name)
    protocol = getattr(send, "__self__", None)
    if protocol is not None:
        return _uvicorn_writer(protocol, name)
    return None


def _daphne_writer(protocol: Any, name: str) -> TextWriter | None:
    """Daphne: `socket.send` the frame when Twisted holds nothing unsent for the connection.

    False when the connection is not open (not yet accepted, closing, closed), autobahn has
    frames of its own queued or a fragmented message in progress, or it would frame the message
    differently (checked once, when the connection is first open). With nothing unsent in
    Twisted's buffer, `socket.send` at once and whatever the kernel does not take (a full
    socket buffer) to `transport.write`; with bytes unsent already, all of it to
    `transport.write`, behind them, so the order of messages is kept and the unsent-bytes probe
    still sees a slow consumer. Errors are left to Twisted: a frame the socket refuses goes to
    `transport.write`, whose next write finds the error and closes. TLS transports (Twisted
    wraps those in another protocol) get None.
    """
    transport = _twisted_tcp_transport(protocol)
    if transport is None or getattr(transport, "TLS", None) is not False:
        return None
    sock = getattr(transport, "socket", None)
    state_open = getattr(protocol, "STATE_OPEN", None)  # autobahn's constants, read off it
    send_ground = getattr(protocol, "SEND_STATE_GROUND", None)
    if sock is None or not hasattr(sock, "send") or state_open is None or send_ground is None:
        return None
    checked: bool | None = None  # whether autobahn frames as text_frame does, once open

    def write(text: str, unsent: int | None = None) -> bool:
        nonlocal checked
        if protocol.state != state_open or protocol.send_state != send_ground:
            return False
        if protocol.send_queue:
            return False
        if checked is None:
            checked = _frames_as_autobahn_would(protocol)
            if checked:
                logger.debug("Connection %s: text frames go straight to the socket", name)
            else:
                logger.debug("Connection %s: text frames go through autobahn", name)
        if not checked:
            return False
        if not transport.connected or transport.disconnecting or transport._writeDisconnected:
            return False
        frame = text_frame(text)
        if 0 < protocol.maxMessagePayloadSize < len(frame):
            return False  # at or near autobahn's limit: its path, and its error, decide
        if unsent is None:
            unsent = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
        if unsent:
            transport.write(frame)  # behind what is already waiting
            return True
        try:
            sent = sock.send(frame)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0  # Twisted's own write will meet the error and close the connection
        if sent < len(frame):
            transport.write(frame[sent:])
        return True

    return write


def _uvicorn_writer(protocol: Any, name: str) -> TextWriter | None:
    """uvicorn (`--ws websockets-sansio`, its default): the frame to the asyncio transport.

    uvicorn's `send` has the `websockets` sans-I/O connection build the frame for each socket
    and awaits flow control on every message. Here the frame is built once per broadcast and
    written to the transport while the connection is open, not paused by flow control and has
    no extension negotiated (permessage-deflate compresses per connection: its path is kept).
    When the transport is paused, False: the message takes uvicorn's `send`, which waits, and
    the consumer queues what follows (realtime.consumers), as before.
    """
    conn: Any = getattr(protocol, "conn", None)
    state = getattr(conn, "state", None)
    open_state = getattr(type(state), "OPEN", None)  # websockets.protocol.State.OPEN
    if open_state is None or not all(
        hasattr(protocol, attribute)
        for attribute in ("transport", "writable", "close_sent", "initial_response")
    ):
        return None
    if not hasattr(conn, "extensions") or not hasattr(conn, "expect_continuation_frame"):
        return None
    checked = False

    def write(text: str, unsent: int | None = None) -> bool:
        nonlocal checked
        if conn.state is not open_state or protocol.close_sent or conn.extensions:
            return False
        if conn.expect_continuation_frame or protocol.initial_response is not None:
            return False
        transport = protocol.transport
        if not protocol.writable.is_set() or transport.is_closing():
            return False
        if not checked:
            checked = True
            logger.debug("Connection %s: text frames go straight to the transport", name)
        transport.write(text_frame(text))
        return True

    return write


class _Resume:
    """Awaitable that carries on a coroutine which suspended outside any task."""

    def __init__(self, coroutine: Any, suspended_on: Any) -> None:
        self.coroutine = coroutine
        self.suspended_on = suspended_on

    def __await__(self) -> Any:
        value = yield self.suspended_on
        while True:
            try:
                pending = self.coroutine.send(value)
            except StopIteration as done:
                return done.value
            value = yield pending


def send_now(send: Callable[[dict[str, Any]], Any], message: dict[str, Any]) -> Any:
    """Run `await send(message)` to completion here if it never suspends; else a Task to await.

    Daphne's `send` never suspends (it hands the frame to Twisted and returns), so a broadcast
    can write to each of its sockets without creating a task per socket and message. A `send`
    that does suspend (backpressure, another server) is carried on by a task, which is returned.
    """
    coroutine = send(message)
    try:
        suspended_on = coroutine.send(None)
    except StopIteration:
        return None

    async def carry_on() -> Any:
        return await _Resume(coroutine, suspended_on)

    return asyncio.get_running_loop().create_task(carry_on())
