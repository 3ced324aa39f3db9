"""The outbound side of a connection: one bounded outbox per connection, behind one server adapter.

ASGI gives an application no view of the socket: Daphne's `send` never blocks (Twisted buffers
without bound) and uvicorn's blocks on flow control. So each connection's `Outbox` is given, once,
the `ServerAdapter` for the server and transport it runs on, and asks it two things per message:
how many bytes the server holds unsent (the 4508 bound), and whether it can write the message as
one pre-built frame (a broadcast's frame is built once, not once per socket: docs/BENCHMARKS.md).

- `DaphneTCPAdapter`: Daphne over plain TCP (`twisted.internet.tcp.Server`): frames go straight
  to the socket with `socket.send` when Twisted holds nothing unsent, else behind its buffer.
- `DaphneTLSAdapter`: Daphne over TLS (`twisted.protocols.tls.TLSMemoryBIOProtocol` wrapping a
  `tcp.Server`): frames are written through the TLS protocol, so they are encrypted; the unsent
  bytes are the TLS layer's buffers plus the TCP transport's.
- `UvicornAdapter`: uvicorn's websockets-sansio protocol: frames to the asyncio transport while
  it is not paused; unsent bytes from `transport.get_write_buffer_size()`.
- `TwistedBackpressureAdapter`: Daphne whose Twisted internals are not what this module expects:
  Twisted's public producer API pauses the outbox's `send` while the transport's buffer is full,
  so the outbox queues and its bounds hold; Daphne frames every message. Said once at WARNING.
- `GenericAdapter`: any other ASGI server, or uvicorn with unexpected internals: the outbox
  counts what it queues itself, and the bound holds as far as the server's `send` applies
  backpressure (ASGI offers nothing else; uvicorn's does). Said once per process at WARNING.

The Daphne adapters also spread Daphne's 2-second timeout sweep over its 2 s
(`SpreadTimeoutSweep`), so that its keep-alive pings do not leave all at once.

Private attributes of Twisted, autobahn, Daphne and uvicorn are read only here, each checked
when its adapter is chosen; anything unexpected falls back to `GenericAdapter` (or, for the
sweep, leaves Daphne's as it is). What could not be delivered is logged and counted in
`realtime.stats`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import pprint
import struct
import sys
from collections.abc import Awaitable, Callable
from types import CoroutineType
from typing import Any, ClassVar

from realtime import stats
from realtime.protocol import CloseCode

logger = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]  # an ASGI `send`

OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
# RFC 6455 7.4.1: "a message that is too big for it to process". Not in CloseCode: it is the
# WebSocket standard's, and autobahn's `sendClose` refuses it (only 1000 and 3000-4999).
MESSAGE_TOO_BIG = 1009
# Seconds a large reply in parts (a snapshot) waits for the client to read before sending on.
ROOM_WAIT_SECS = 30.0
# RFC 6455 5.5: a close frame's payload is at most 125 bytes, two of them the code.
_MAX_CLOSE_REASON_BYTES = 123
# Seconds a close waits for the text queued before it to be sent (not for 4508).
CLOSE_DRAIN_TIMEOUT_SECS = 1.0

_LENGTH_16 = struct.Struct("!BBH")
_LENGTH_64 = struct.Struct("!BBQ")


# Per-process counts kept in realtime.stats (one place for every drop the module counts):
# messages_too_large (closed with 1009), slow_consumer_closes (4508), fallback_connections (not
# served by a direct adapter), send_failures (the server's send raised), sends_after_client_close
# (a send to a connection the client had just closed, before its disconnect was handled: the
# client resumes with `since` when it comes back), dropped_at_close (queued messages never sent
# because the connection closed).


# --- frames -------------------------------------------------------------------------------

# The last message framed and its frame, as one tuple so a reader never sees half an update. The
# hub hands the same object to every subscriber of a broadcast, so an identity check finds it;
# holding the message keeps its id from being reused.
_last_frame: tuple[str | bytes | None, bytes, int] = (None, b"", 0)


def frame(message: str | bytes) -> bytes:
    """The unmasked, unfragmented, uncompressed WebSocket frame carrying `message` (RFC 6455 5.2).

    A `str` goes in a text frame (opcode 0x1), `bytes` in a binary frame (0x2).
    """
    global _last_frame
    if message is _last_frame[0]:
        return _last_frame[1]
    if isinstance(message, str):
        payload, first = message.encode(), 0x80 | OPCODE_TEXT  # FIN bit + opcode
    else:
        payload, first = bytes(message), 0x80 | OPCODE_BINARY
    length = len(payload)
    if length < 126:
        built = bytes((first, length)) + payload
    elif length < 65536:
        built = _LENGTH_16.pack(first, 126, length) + payload
    else:
        built = _LENGTH_64.pack(first, 127, length) + payload
    _last_frame = (message, built, length)
    return built


def text_frame(text: str) -> bytes:
    """The text frame carrying `text` (`frame` for a `str`)."""
    return frame(text)


def payload_size(message: str | bytes) -> int:
    """The message's size on the wire, in bytes (UTF-8 for text); framed once, as `frame`."""
    if message is not _last_frame[0]:
        frame(message)
    return _last_frame[2]


# --- server adapters ------------------------------------------------------------------------


class ServerAdapter:
    """What the outbox needs of the server under one connection; this base is the ASGI-only one."""

    kind: ClassVar[str] = "generic"
    # The largest message the server will send, in bytes; 0 when it sets no limit.
    max_message_bytes: int = 0

    def unsent_bytes(self) -> int:
        """Bytes the server holds unsent for this connection (0: it cannot be known)."""
        return 0

    def write(self, message: str | bytes, unsent: int) -> bool:
        """Write `message` as one pre-built frame; False, having written nothing, if it cannot."""
        return False

    def write_frame(self, data: bytes) -> bool:
        """Write the frame `data` if the server holds nothing unsent and the connection is simply
        open; False, having written nothing, otherwise (the outbox then takes its full path).

        A broadcast's fast path: one call per subscriber, the frame built once for all of them,
        no bound to check (nothing is queued or unsent). The base writes nothing."""
        return False

    def wrap_send(self, send: Send) -> Send:
        """The `send` the outbox uses for messages (an adapter may make it wait)."""
        return send

    def release(self) -> None:
        """The client is gone: let go of what would keep the connection's objects alive."""

    def client_closed(self, exc: BaseException) -> bool:
        """Whether `exc`, raised by the server's send, means the client had already closed the
        connection (its disconnect not yet handled here): the usual race under churn, not a
        fault. False when it cannot be told."""
        return False

    async def close(self, send: Send, code: int, reason: str) -> None:
        closing: dict[str, Any] = {"type": "websocket.close", "code": int(code)}
        if reason:
            closing["reason"] = reason
        await send(closing)


class GenericAdapter(ServerAdapter):
    """Any ASGI server: the outbox bounds what it queues itself, as the server's `send` blocks."""


class TwistedBackpressureAdapter(ServerAdapter):
    """Daphne whose Twisted internals are not what the direct adapters expect: Twisted's public
    producer API (`registerProducer`, streaming) turned into backpressure.

    Twisted pauses a registered producer when the transport holds more than its buffer size
    unsent and resumes it when the buffer drains. While paused, the send this adapter hands the
    outbox waits, exactly as uvicorn's does, so further messages queue in the outbox and its
    message and byte bounds (4508) hold: the bound stands even when no private attribute can be
    read. Messages are framed by Daphne.
    """

    kind = "daphne-backpressure"

    def __init__(self, transport: Any, name: str) -> None:
        self.name = name
        self.paused = False
        self._resumed = asyncio.Event()
        self._resumed.set()
        # The TCP transport's producer slot (under TLS too: the TLS layer registers its own
        # producer with the TCP transport, whose buffer holds what is unsent). Daphne's
        # HTTPChannel already holds it, streaming; both are told of every pause and resume.
        tcp = (
            getattr(transport, "transport", None) if hasattr(transport, "wrappedProtocol") else None
        )
        consumer = tcp if tcp is not None else transport
        held = consumer.producer
        if held is not None and not consumer.streamingProducer:
            raise RuntimeError("a pull producer holds the transport")
        if held is not None:
            consumer.unregisterProducer()
        consumer.registerProducer(_BothProducers(held, self), True)

    # IPushProducer, called by Twisted on the event loop's thread
    def pauseProducing(self) -> None:
        self.paused = True
        self._resumed.clear()

    def resumeProducing(self) -> None:
        self.paused = False
        self._resumed.set()

    def stopProducing(self) -> None:  # the connection is gone: let waiting sends fail
        self.resumeProducing()

    def wrap_send(self, send: Send) -> Send:
        async def send_when_drained(message: dict[str, Any]) -> None:
            if self.paused:
                await self._resumed.wait()
            await send(message)

        return send_when_drained


class _BothProducers:
    """A streaming producer that passes Twisted's pause, resume and stop on to two."""

    def __init__(self, first: Any, second: Any) -> None:
        self.producers = [p for p in (first, second) if p is not None]

    def pauseProducing(self) -> None:
        for producer in self.producers:
            producer.pauseProducing()

    def resumeProducing(self) -> None:
        for producer in self.producers:
            producer.resumeProducing()

    def stopProducing(self) -> None:
        for producer in self.producers:
            producer.stopProducing()


_generic_announced = False


def _use_backpressure(transport: Any, name: str, why: str) -> ServerAdapter:
    """Daphne with unexpected internals: Twisted's producer API, else the generic adapter."""
    try:
        adapter = TwistedBackpressureAdapter(transport, name)
    except Exception as exc:  # no producer API, or a producer already registered
        return _use_generic(name, f"{why}, and Twisted's producer API is not usable ({exc!r})")
    stats.count("fallback_connections")
    global _generic_announced
    if not _generic_announced:
        _generic_announced = True
        logger.warning(
            "Outbound: %s; using Twisted's producer API for backpressure (first connection %s). "
            "The send buffer bound (4508) holds; every message is framed by Daphne. Said once "
            "per process.",
            why,
            name,
        )
    return adapter


def _use_generic(name: str, why: str) -> ServerAdapter:
    global _generic_announced
    stats.count("fallback_connections")
    if not _generic_announced:
        _generic_announced = True
        logger.warning(
            "Outbound: %s; using the generic ASGI adapter (first connection %s). The send buffer "
            "bound (4508) then holds only as far as the server's send applies backpressure, and "
            "every message is framed by the server. Said once per process.",
            why,
            name,
        )
    else:
        logger.debug("Connection %s: generic ASGI adapter (%s)", name, why)
    return GenericAdapter()


@functools.cache
def _twisted_types() -> tuple[type, type, type] | None:
    """(Daphne's WebSocketProtocol, tcp.Server, TLSMemoryBIOProtocol), imported once; or None."""
    try:
        from daphne.ws_protocol import WebSocketProtocol
        from twisted.internet.tcp import Server
        from twisted.protocols.tls import TLSMemoryBIOProtocol
    except ImportError:
        return None
    return WebSocketProtocol, Server, TLSMemoryBIOProtocol


@functools.cache
def _uvicorn_type() -> type | None:
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    except ImportError:
        return None
    return WebSocketsSansIOProtocol


@functools.cache
def _http_channel_type() -> type | None:
    try:
        from twisted.web.http import HTTPChannel
    except ImportError:
        return None
    return HTTPChannel


def _http_channel_of(transport: Any) -> Any:
    """The HTTP channel that carried the connection's upgrade request, or None.

    Twisted's HTTPChannel registers itself as its transport's producer (over TLS, wrapped in
    the TLS layer's producer membrane) and stays so while the connection lives; nothing else
    of the connection refers to it once Daphne has handed the transport to the WebSocket
    protocol, so this is the one place to find it.
    """
    channel_type = _http_channel_type()
    if channel_type is None:
        return None
    candidate = getattr(transport, "producer", None) or getattr(transport, "_producer", None)
    for _ in range(3):
        if candidate is None or isinstance(candidate, channel_type):
            return candidate
        candidate = getattr(candidate, "_producer", None)
    return None


def release_upgrade_request(http_channel: Any, name: str) -> None:
    """Free the HTTP request that carried the upgrade, once the WebSocket protocol has it.

    Daphne hands the transport to the WebSocket protocol without finishing the upgrade request,
    so Twisted's HTTPChannel (which stays the transport's producer) keeps it in `requests` for
    the connection's life, with its headers, body buffer and response headers: about 2 KiB of
    each idle connection (docs/BENCHMARKS.md, memory per connection). Nothing reads it again:
    the channel no longer receives data (the transport's protocol is the WebSocket one), and
    its producer methods do not touch `requests`. At close the list is cleared anyway (the
    request-channel cycle, `release_daphne_cycles`); this does it at once.
    """
    try:
        requests = getattr(http_channel, "requests", None)
        if isinstance(requests, list):
            requests.clear()
    except Exception:  # internals not as expected: the request lives as long as the channel
        logger.debug("Connection %s: the upgrade request kept", name, exc_info=True)


def release_daphne_cycles(protocol: Any, http_channel: Any, name: str) -> None:
    """Break the two reference cycles Daphne leaves behind each closed WebSocket connection.

    Reference counting cannot free them, so each closed connection (its autobahn protocol with
    its buffers, validators and queue; the upgrade request and its HTTP channel) would wait for
    a full collection of the garbage collector, which tradingrt.asgi's tuning makes rare: memory
    grows under connection churn (bench churn, docs/BENCHMARKS.md). The cycles:

    - autobahn resolves the protocol's `is_closed` Deferred with the protocol itself;
    - Twisted's HTTPChannel lists its requests, each request refers to its channel, and Daphne
      hands the transport over at the upgrade without finishing the request.

    Only once the connection is closed, and only when each object is what this expects;
    otherwise nothing is touched (the collector still frees them, later).
    """
    release_upgrade_request(http_channel, name)  # done at open; again, in case it came back
    try:
        closed = getattr(protocol, "is_closed", None)
        if (
            closed is not None
            and getattr(closed, "called", False)
            and getattr(closed, "result", None) is protocol
            and getattr(protocol, "state", None) == getattr(protocol, "STATE_CLOSED", object())
        ):
            closed.result = None  # what a late callback gets; nothing in Daphne adds one
    except Exception:  # internals not as expected: leave them to the collector
        logger.debug("Connection %s: Daphne's cycles left to the collector", name, exc_info=True)


def _lost_already(transport: Any, tls_protocol: type) -> bool:
    """Whether Twisted has already lost this connection (its `connectionLost` ran).

    `FileDescriptor.connectionLost` sets `disconnected`, and `tcp.Connection`'s deletes its
    `socket`, so a closed `tcp.Server` would otherwise look like an unknown one.
    """
    if isinstance(transport, tls_protocol):
        transport = getattr(transport, "transport", None)
    return bool(getattr(transport, "disconnected", False))


def _tcp_buffer_is_known(tcp: Any) -> bool:
    """Whether Twisted's tcp.Server keeps its unsent bytes where `_tcp_unsent` reads them."""
    return (
        isinstance(getattr(tcp, "dataBuffer", None), bytes | memoryview)
        and isinstance(getattr(tcp, "offset", None), int)
        and isinstance(getattr(tcp, "_tempDataLen", None), int)
        and isinstance(getattr(tcp, "_writeDisconnected", None), bool)
        and hasattr(getattr(tcp, "socket", None), "send")
    )


def _autobahn_is_known(protocol: Any) -> bool:
    return all(
        hasattr(protocol, attribute)
        for attribute in (
            "STATE_OPEN",
            "SEND_STATE_GROUND",
            "state",
            "send_state",
            "send_queue",
            "maxMessagePayloadSize",
            "sendCloseFrame",
        )
    )


def _frames_as_autobahn_would(protocol: Any) -> bool:
    """Whether autobahn would send a message as exactly `frame(message)`.

    It would not with compression negotiated, server frames masked, automatic fragmentation,
    frame or octet logging, or timing tracked: then its path is kept.
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


class DaphneTCPAdapter(ServerAdapter):
    """Daphne over plain TCP: a frame to the socket at once, or behind what Twisted holds unsent.

    A frame is written only while the connection is simply open (accepted, not closing, autobahn
    has nothing of its own queued and no fragmented message in progress) and autobahn would frame
    the message the same way (checked once, when first open). With nothing unsent, `socket.send`
    at once and whatever the kernel does not take to `transport.write`; with bytes unsent
    already, all of it to `transport.write`, behind them, so order is kept and the unsent bytes
    still show a slow consumer. A socket error is left to Twisted's next write, which closes.
    """

    kind = "daphne-tcp"
    direct_path = "straight to the socket"

    def __init__(self, protocol: Any, tcp: Any, name: str, carrier: Any = None) -> None:
        """`carrier`: the transport the HTTP upgrade arrived on, when not `tcp` (TLS)."""
        self.protocol = protocol
        self.tcp = tcp
        self.name = name
        # Daphne configures autobahn with --websocket_max_message_size (default 1 MiB); autobahn
        # raises PayloadExceededError on a larger outbound message.
        self.max_message_bytes = int(protocol.maxMessagePayloadSize or 0)
        self._state_open = protocol.STATE_OPEN
        self._send_ground = protocol.SEND_STATE_GROUND
        self._framed_alike: bool | None = None
        self._http_channel = _http_channel_of(carrier if carrier is not None else tcp)
        release_upgrade_request(self._http_channel, name)
        server = getattr(protocol, "server", None)
        spread_daphne_timeout_sweep(server)
        lighten_daphne_inboxes(server)

    def release(self) -> None:
        release_daphne_cycles(self.protocol, self._http_channel, self.name)
        self._http_channel = None

    def client_closed(self, exc: BaseException) -> bool:
        # autobahn raises Disconnected("Attempt to send on a closed protocol") in this state.
        return bool(self.protocol.state == self.protocol.STATE_CLOSED)

    def unsent_bytes(self) -> int:
        tcp = self.tcp
        return len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen

    def _writable(self) -> bool:
        protocol = self.protocol
        if protocol.state != self._state_open or protocol.send_state != self._send_ground:
            return False
        if protocol.send_queue:
            return False
        if self._framed_alike is None:
            self._framed_alike = _frames_as_autobahn_would(protocol)
            logger.debug(
                "Connection %s (%s): frames go %s",
                self.name,
                self.kind,
                self.direct_path if self._framed_alike else "through autobahn",
            )
        if not self._framed_alike:
            return False
        tcp = self.tcp
        return bool(tcp.connected) and not tcp.disconnecting and not tcp._writeDisconnected

    def write(self, message: str | bytes, unsent: int) -> bool:
        if unsent:
            if not self._writable():
                return False
            self.tcp.write(frame(message))  # behind what is already waiting
            return True
        # `write_frame` makes every check `_writable` does; `_writable` once, to check autobahn.
        if self._framed_alike is None and not self._writable():
            return False
        return self.write_frame(frame(message))

    def write_frame(self, data: bytes) -> bool:
        # `_writable` and `unsent_bytes` in one: this runs once per subscriber of a broadcast.
        # `_framed_alike` is None until the first `write` has checked autobahn: False till then.
        protocol = self.protocol
        if (
            protocol.state != self._state_open
            or protocol.send_state != self._send_ground
            or protocol.send_queue
            or not self._framed_alike
        ):
            return False
        tcp = self.tcp
        if (
            not tcp.connected
            or tcp.disconnecting
            or tcp._writeDisconnected
            or len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen
        ):
            return False
        try:
            sent = tcp.socket.send(data)
        except OSError:  # BlockingIOError: a full buffer; others: Twisted's write will close
            sent = 0
        if sent < len(data):
            tcp.write(data[sent:])
        return True

    async def close(self, send: Send, code: int, reason: str) -> None:
        # Daphne's `websocket.close` drops the reason, and autobahn's `sendClose` refuses 1009;
        # `sendCloseFrame` (which Daphne itself uses for 1011) sends both, behind queued frames.
        protocol = self.protocol
        if protocol.state != self._state_open:
            await super().close(send, code, reason)
            return
        reason_bytes = reason.encode()[:_MAX_CLOSE_REASON_BYTES].decode(errors="ignore").encode()
        protocol.sendCloseFrame(code=int(code), reasonUtf8=reason_bytes or None, isReply=False)


class DaphneTLSAdapter(DaphneTCPAdapter):
    """Daphne over TLS: frames written through the TLS protocol, so that they are encrypted.

    Twisted's TLS wrapper forwards unknown attributes (`socket`, `dataBuffer`, `TLS`) to the TCP
    transport beneath it, so only its type tells the two apart. The unsent bytes are the TLS
    layer's (cleartext waiting for OpenSSL, small writes aggregated for the next loop turn) plus
    the TCP transport's (ciphertext).
    """

    kind = "daphne-tls"
    direct_path = "through the TLS transport"

    def __init__(self, protocol: Any, tls: Any, tcp: Any, name: str) -> None:
        super().__init__(protocol, tcp, name, carrier=tls)
        self.tls = tls
        aggregator = getattr(tls, "_aggregator", None)
        self._aggregated: Callable[[], int] = (
            (lambda: aggregator.MAX_BUFFER_SIZE - aggregator._bufferLeft)
            if aggregator is not None
            else (lambda: 0)
        )

    @staticmethod
    def is_known(tls: Any) -> bool:
        aggregator = getattr(tls, "_aggregator", None)
        return isinstance(getattr(tls, "_appSendBuffer", None), list) and (
            aggregator is None
            or (
                isinstance(getattr(aggregator, "MAX_BUFFER_SIZE", None), int)
                and isinstance(getattr(aggregator, "_bufferLeft", None), int)
            )
        )

    def unsent_bytes(self) -> int:
        tcp = self.tcp
        pending = self.tls._appSendBuffer
        return (
            len(tcp.dataBuffer)
            - tcp.offset
            + tcp._tempDataLen
            + self._aggregated()
            + (sum(map(len, pending)) if pending else 0)
        )

    def write(self, message: str | bytes, unsent: int) -> bool:
        if not self._writable() or self.tls.disconnecting:
            return False
        self.tls.write(frame(message))  # encrypted, in order behind whatever TLS holds
        return True

    def write_frame(self, data: bytes) -> bool:
        # Never the TCP adapter's: that one writes to the socket beneath TLS, in clear. A
        # broadcast's frame takes `write`, through the TLS transport, after the 4508 bound.
        return False


class UvicornAdapter(ServerAdapter):
    """uvicorn (`--ws websockets-sansio`, its default): the frame to the asyncio transport.

    Written while the connection is open, not paused by flow control and with no extension
    negotiated (permessage-deflate compresses per connection: uvicorn's send is kept). When the
    transport is paused, uvicorn's `send` waits and the outbox queues what follows.
    """

    kind = "uvicorn"

    def __init__(self, protocol: Any, name: str) -> None:
        self.protocol = protocol
        self.conn = protocol.conn
        self.name = name
        self._open = type(self.conn.state).OPEN  # websockets.protocol.State.OPEN
        self._announced = False

    def client_closed(self, exc: BaseException) -> bool:
        try:
            from uvicorn.protocols.utils import ClientDisconnected
        except ImportError:  # an older uvicorn: cannot be told
            return False
        return isinstance(exc, ClientDisconnected)

    @staticmethod
    def is_known(protocol: Any) -> bool:
        conn = getattr(protocol, "conn", None)
        return (
            getattr(type(getattr(conn, "state", None)), "OPEN", None) is not None
            and hasattr(conn, "extensions")
            and hasattr(conn, "expect_continuation_frame")
            and all(
                hasattr(protocol, attribute)
                for attribute in ("transport", "writable", "close_sent", "initial_response")
            )
        )

    def unsent_bytes(self) -> int:
        transport = self.protocol.transport
        return int(transport.get_write_buffer_size()) if transport is not None else 0

    def write(self, message: str | bytes, unsent: int) -> bool:
        protocol, conn = self.protocol, self.conn
        if conn.state is not self._open or protocol.close_sent or conn.extensions:
            return False
        if conn.expect_continuation_frame or protocol.initial_response is not None:
            return False
        transport = protocol.transport
        if not protocol.writable.is_set() or transport.is_closing():
            return False
        if not self._announced:
            self._announced = True
            logger.debug("Connection %s (uvicorn): frames go straight to the transport", self.name)
        transport.write(frame(message))
        return True


def _daphne_protocol(send: Any) -> Any:
    """Daphne's protocol object behind an ASGI `send` (`partial(handle_reply, protocol)`)."""
    if not isinstance(send, functools.partial) or not send.args:
        return None
    return send.args[0]


def adapter_for(send: Any, name: str = "") -> ServerAdapter:
    """The adapter for the server behind this ASGI `send`; chosen once per connection."""
    protocol = _daphne_protocol(send)
    if protocol is not None:
        types = _twisted_types()
        if types is None or not isinstance(protocol, types[0]):
            return _use_generic(name, "the server's send is a partial but not Daphne's")
        _, tcp_server, tls_protocol = types
        transport = getattr(protocol, "transport", None)
        if _lost_already(transport, tls_protocol):
            # Closed before its first message (Twisted has let go of the socket): nothing will
            # be written to it, so no adapter is needed and no internals were found wanting.
            logger.debug("Connection %s was closed before its adapter was chosen", name)
            return GenericAdapter()
        if not _autobahn_is_known(protocol):
            why = "autobahn's protocol is not what this module expects"
        elif isinstance(transport, tcp_server):
            if _tcp_buffer_is_known(transport):
                return DaphneTCPAdapter(protocol, transport, name)
            why = "Twisted's tcp.Server is not what this module expects"
        elif isinstance(transport, tls_protocol):
            tcp = getattr(transport, "transport", None)
            if (
                isinstance(tcp, tcp_server)
                and _tcp_buffer_is_known(tcp)
                and DaphneTLSAdapter.is_known(transport)
            ):
                return DaphneTLSAdapter(protocol, transport, tcp, name)
            why = "Twisted's TLS transport is not what this module expects"
        else:
            why = f"Daphne over an unknown transport {type(transport).__name__}"
        return _use_backpressure(transport, name, why)
    owner = getattr(send, "__self__", None)
    uvicorn = _uvicorn_type()
    if owner is not None and uvicorn is not None and isinstance(owner, uvicorn):
        if UvicornAdapter.is_known(owner):
            return UvicornAdapter(owner, name)
        return _use_generic(name, "uvicorn's protocol is not what this module expects")
    return _use_generic(name, "the ASGI server is not one this module knows")


# --- Daphne's timeout sweep ---------------------------------------------------------------

# Daphne sweeps its connections every 2 s (`reactor.callLater(2, self.timeout_checker)`).
DAPHNE_SWEEP_EVERY_SECS = 2.0
# A spread sweep checks this many connections at least per step, in at most SWEEP_STEPS steps.
SWEEP_MIN_SLICE = 50
SWEEP_STEPS = 20


class SpreadTimeoutSweep:
    """Daphne's timeout sweep, spread over its 2 seconds instead of run in one go.

    `daphne.server.Server.timeout_checker` calls `check_timeouts()` on every connection at once
    every 2 s, and that is where Daphne's keep-alive pings go out (each connection every
    `--ping-interval`, 20 s): with 10,000 connections about 1,000 pings left in one loop turn
    and their 1,000 pongs came back together, holding the loop 100-230 ms every 2.07 s
    (docs/BENCHMARKS.md, what stalls the loop). This makes the same `check_timeouts()` calls in
    up to SWEEP_STEPS slices spaced evenly over the 2 s, so the pings and their pongs come a
    slice at a time; each connection is still checked every 2 s and the next sweep starts 2 s
    after this one. A connection gone before its slice is skipped; an error in one
    connection's check is logged and the sweep goes on (in Daphne's, it ends the sweeping).
    """

    def __init__(self, server: Any, reactor: Any) -> None:
        self.server = server
        self.reactor = reactor
        self.sweeps = 0

    def __call__(self) -> None:
        protocols = list(self.server.connections)
        steps = max(1, min(SWEEP_STEPS, len(protocols) // SWEEP_MIN_SLICE))
        size = -(-len(protocols) // steps)  # ceil
        every = DAPHNE_SWEEP_EVERY_SECS / steps
        self.sweeps += 1
        self._slice(protocols[:size])
        for step in range(1, steps):
            chunk = protocols[step * size : (step + 1) * size]
            if chunk:
                self.reactor.callLater(step * every, self._slice, chunk)
        self.reactor.callLater(DAPHNE_SWEEP_EVERY_SECS, self.server.timeout_checker)
        logger.debug(
            "Daphne's timeout sweep %d: %d connections in %d slices of up to %d, %.2f s apart",
            self.sweeps,
            len(protocols),
            steps,
            size,
            every,
        )

    def _slice(self, protocols: list[Any]) -> None:
        connections = self.server.connections
        for protocol in protocols:
            if protocol not in connections:
                continue
            try:
                protocol.check_timeouts()
            except Exception:
                logger.exception("Daphne's timeout check failed for %r", protocol)


def spread_daphne_timeout_sweep(server: Any) -> bool:
    """Install `SpreadTimeoutSweep` on this Daphne server, once; whether it is in place.

    Set on the instance, so Daphne's own reschedule (`callLater(2, self.timeout_checker)`)
    picks it from its next sweep on. Only when the server is Daphne's, with the `connections`
    dict and the `timeout_checker` this expects; otherwise Daphne's sweep stays as it is (said
    at DEBUG).
    """
    current = vars(server).get("timeout_checker") if hasattr(server, "__dict__") else None
    if isinstance(current, SpreadTimeoutSweep):
        return True
    if not (
        type(server).__module__ == "daphne.server"
        and isinstance(getattr(server, "connections", None), dict)
        and callable(getattr(type(server), "timeout_checker", None))
    ):
        logger.debug("Daphne's server is not what this module expects: its sweep left as it is")
        return False
    from twisted.internet import reactor

    server.timeout_checker = SpreadTimeoutSweep(server, reactor)
    logger.debug("Daphne's timeout sweep is spread over its %g s", DAPHNE_SWEEP_EVERY_SECS)
    return True


# --- Daphne's per-connection inbox ------------------------------------------------------------


class DaphneInbox:
    """What Daphne uses its per-connection `asyncio.Queue` for, in 0.1 KiB instead of 3.2.

    Daphne makes one unbounded `asyncio.Queue` per connection (HTTP request or WebSocket) and
    uses only `put_nowait` (from Twisted's callbacks) and `get` (the application's `receive`).
    Once used, such a queue holds three deques and an Event with a fourth: 3.2 KiB of every idle
    connection (tracemalloc), a tenth of what one costs. This keeps the messages in a list and
    the waiting `get`s in another, both made when first needed; the semantics are the queue's:
    messages in order, `get` waits for one, a cancelled `get` takes nothing and passes a wake-up
    it had been given to the next waiter.
    """

    __slots__ = ("_getters", "_items")

    def __init__(self) -> None:
        self._items: list[Any] | None = None
        self._getters: list[asyncio.Future[None]] | None = None

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = [item]
        else:
            self._items.append(item)
        self._wake_one()

    def _wake_one(self) -> None:
        getters = self._getters
        while getters:
            getter = getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                return

    async def get(self) -> Any:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                with contextlib.suppress(ValueError):
                    self._getters.remove(getter)
                if self._items:
                    self._wake_one()  # the wake-up it may have been given goes to the next
                raise
        items = self._items
        item = items.pop(0)
        if items and self._getters:
            self._wake_one()
        return item

    def qsize(self) -> int:
        return len(self._items) if self._items else 0


def _expects_daphnes_queue(server_type: type) -> bool:
    """Whether Daphne's `create_application` is the one `_create_application` stands in for:
    it makes an `asyncio.Queue`, and hands its `get` and `handle_reply` to the application."""
    code = getattr(getattr(server_type, "create_application", None), "__code__", None)
    names = set(getattr(code, "co_names", ()))
    return {"Queue", "application", "handle_reply", "connections", "ensure_future"} <= names


def _create_application(server: Any, protocol: Any, scope: dict[str, Any]) -> Any:
    """`daphne.server.Server.create_application` (daphne 4), with a `DaphneInbox` for its queue."""
    assert "application_instance" not in server.connections[protocol]
    inbox = DaphneInbox()
    scope.setdefault("asgi", {"version": "3.0"})
    application_instance = server.application(
        scope=scope,
        receive=inbox.get,
        send=functools.partial(server.handle_reply, protocol),
    )
    if protocol not in server.connections:
        return None
    server.connections[protocol]["application_instance"] = asyncio.ensure_future(
        application_instance
    )
    return inbox


def lighten_daphne_inboxes(server: Any) -> bool:
    """Have this Daphne server give each new connection a `DaphneInbox`, once; whether it does.

    Set on the instance (Daphne's protocols call `self.server.create_application`), so from the
    next connection on; only when the server is Daphne's and its `create_application` is the one
    this stands in for (otherwise left as it is, said at DEBUG).
    """
    current = vars(server).get("create_application") if hasattr(server, "__dict__") else None
    if isinstance(current, functools.partial) and current.func is _create_application:
        return True
    if not (
        type(server).__module__ == "daphne.server"
        and isinstance(getattr(server, "connections", None), dict)
        and callable(getattr(server, "application", None))
        and callable(getattr(server, "handle_reply", None))
        and _expects_daphnes_queue(type(server))
    ):
        logger.debug("Daphne's server is not what this module expects: its queues left as they are")
        return False
    server.create_application = functools.partial(_create_application, server)
    logger.debug("Daphne's connections get a lean inbox instead of an asyncio.Queue")
    return True


# --- autobahn's debug formatting ------------------------------------------------------------


class _Pformatted:
    """`pprint.pformat(value)`, computed only if a log line is actually formatted."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        return pprint.pformat(self.value)

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def defer_autobahn_debug_formatting() -> bool:
    """Make autobahn's two per-connection debug lines cost nothing while debug logging is off.

    autobahn's `WebSocketProtocol._connectionMade` and `startHandshake` call `pformat` on the
    connection's 29 options and its transport details for `log.debug` lines, eagerly, for every
    connection, whether or not debug is logged: about 230 us per connect on this machine, a
    fifth of what a whole authenticated connect costs (docs/BENCHMARKS.md, connections). The
    module-level `pformat` those lines call becomes `_Pformatted`, which formats only when a
    line is written, to the same text. Done only when autobahn is loaded (Daphne) and the name
    is still `pprint.pformat`; otherwise nothing changes (said at DEBUG). Whether it applied.
    """
    module = sys.modules.get("autobahn.websocket.protocol")
    if module is None:
        return False
    current = getattr(module, "pformat", None)
    if current is _Pformatted:
        return True
    if current is not pprint.pformat:
        logger.debug("autobahn's pformat is %r, not pprint's: left as it is", current)
        return False
    module.pformat = _Pformatted  # type: ignore[attr-defined]
    logger.debug("autobahn's per-connection debug lines are formatted only when logged")
    return True


# --- the outbox -----------------------------------------------------------------------------


class Outbox:
    """One connection's outbound messages: written at once when nothing is ahead, else queued.

    The queue is bounded by `max_messages`, and the bytes queued plus those the server holds
    unsent by `max_bytes`: past either the client is too slow and `give_up(4508, ...)` is called.
    A message over the server's size limit calls `give_up(1009, ...)`. `give_up` is the
    connection's close (it stops deliveries and calls `close` here).
    """

    def __init__(
        self,
        send: Send,
        *,
        name: str,
        give_up: Callable[[int, str], None],
        max_messages: int,
        max_bytes: int,
        adapter: ServerAdapter | None = None,
    ) -> None:
        self.name = name
        self.give_up = give_up
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.adapter = adapter if adapter is not None else adapter_for(send, name)
        self.send = self.adapter.wrap_send(send)  # messages: it may wait (backpressure)
        self._close_send = send  # a close never waits behind a client that stopped reading
        self.max_message_bytes = self.adapter.max_message_bytes
        # Messages of at most this many characters fit the limit whatever their encoding.
        self._fits_unchecked = self.max_message_bytes // 4 if self.max_message_bytes else 1 << 62
        self._unsent = self.adapter.unsent_bytes
        self._write = self.adapter.write
        self._write_frame = self.adapter.write_frame
        self.closing = False
        # What waits behind a send in progress; none most of the time, so no deque until then
        # (an empty deque is 760 bytes of each idle connection).
        self._queue: collections.deque[str | bytes] | tuple[()] = ()
        self._queued_bytes = 0
        self._draining = False
        self._drain_task: asyncio.Task[None] | None = None

    def push(self, message: str | bytes) -> None:
        """Send `message` (a `str` as a text frame, `bytes` as binary) after what is queued."""
        if self.closing:
            return
        if len(message) > self._fits_unchecked and self._too_large(message):
            return
        unsent = self._unsent()
        if len(self._queue) >= self.max_messages or unsent + self._queued_bytes > self.max_bytes:
            self._overflow(unsent)
            return
        if self._draining:
            queue = self._queue
            if not isinstance(queue, collections.deque):
                queue = self._queue = collections.deque()
            queue.append(message)
            self._queued_bytes += len(message)
            return
        # Nothing is queued ahead: write the pre-built frame, or send without a task per
        # message. A send that completes at once costs no task; one that blocks (backpressure)
        # is carried on by a drain task, and what follows queues.
        try:
            if self._write(message, unsent):
                return
        except Exception:  # the server's internals changed under us: keep its own path
            logger.exception("Direct write failed on %s; using the server's send", self.name)
            self._write = ServerAdapter.write.__get__(self.adapter)
        event = (
            {"type": "websocket.send", "text": message}
            if isinstance(message, str)
            else {"type": "websocket.send", "bytes": message}
        )
        try:
            carried_on = send_now(self.send, event)
        except Exception as exc:
            self._send_failed(exc)
            return
        if carried_on is not None:
            self._draining = True
            self._drain_task = asyncio.get_running_loop().create_task(self._drain(carried_on))

    def push_frame(self, message: str | bytes, data: bytes) -> bool:
        """`push(message)`, given `data`, its frame (a broadcast builds one for every subscriber):
        straight to the socket when nothing is queued or unsent; False if closing (not sent)."""
        if self.closing:
            return False
        if self._draining or len(message) > self._fits_unchecked:
            self.push(message)
            return True
        try:
            if self._write_frame(data):
                return True
        except Exception:  # the server's internals changed under us: `push` decides
            logger.exception("Direct write failed on %s; using the full path", self.name)
            self._write_frame = ServerAdapter.write_frame.__get__(self.adapter)
        self.push(message)
        return True

    def _too_large(self, message: str | bytes) -> bool:
        size = payload_size(message)
        if size <= self.max_message_bytes:
            return False
        stats.count("messages_too_large")
        logger.warning(
            "Connection %s: a %d-byte message is over the server's limit of %d bytes; closing "
            "with 1009 so that the client reconnects and reloads",
            self.name,
            size,
            self.max_message_bytes,
        )
        limit = self.max_message_bytes
        self.give_up(MESSAGE_TOO_BIG, f"message too big: {size} bytes, limit {limit}")
        return True

    def _overflow(self, unsent: int) -> None:
        stats.count("slow_consumer_closes")
        logger.warning(
            "Connection %s is not keeping up (%d messages queued, %d bytes queued or unsent, "
            "via %s); closing it with 4508",
            self.name,
            len(self._queue),
            unsent + self._queued_bytes,
            self.adapter.kind,
        )
        self._discard_queue()
        self.give_up(CloseCode.SLOW_CONSUMER, "send buffer overflow")

    def _discard_queue(self) -> None:
        self._queue = ()
        self._queued_bytes = 0

    def _send_failed(self, exc: BaseException) -> None:
        if self.closing:
            logger.debug("Send failed on %s while closing: %r", self.name, exc)
            return
        if self.adapter.client_closed(exc):  # counted, and said at DEBUG: churn does it often
            stats.count("sends_after_client_close")
            logger.debug(
                "Send to %s after the client closed it (%r); %d queued messages dropped",
                self.name,
                exc,
                len(self._queue),
            )
            self._discard_queue()
            return
        stats.count("send_failures")
        logger.warning(
            "Send failed on %s (%r); %d queued messages dropped, the connection is closing",
            self.name,
            exc,
            len(self._queue),
        )
        self._discard_queue()

    async def _drain(self, in_flight: Any = None) -> None:
        send = self.send
        try:
            if in_flight is not None:
                await in_flight
            while isinstance(queue := self._queue, collections.deque) and queue:
                message = queue.popleft()
                self._queued_bytes -= len(message)
                if isinstance(message, str):
                    await send({"type": "websocket.send", "text": message})
                else:
                    await send({"type": "websocket.send", "bytes": message})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._send_failed(exc)
        finally:
            self._draining = False
            self._drain_task = None

    def close(
        self, code: int, reason: str = "", *, first: Callable[[], Awaitable[None]] | None = None
    ) -> asyncio.Task[None]:
        """Close with `code` after what is queued (except for 4508); `first` runs before."""
        self.closing = True
        return asyncio.get_running_loop().create_task(self._close(code, reason, first))

    async def _close(
        self, code: int, reason: str, first: Callable[[], Awaitable[None]] | None
    ) -> None:
        if first is not None:
            await first()
        drain = self._drain_task
        if code == CloseCode.SLOW_CONSUMER:
            self._discard_queue()
        elif drain is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(drain), timeout=CLOSE_DRAIN_TIMEOUT_SECS)
            self._drop_queue("the close could not wait longer")
        try:
            await self.adapter.close(self._close_send, code, reason)
        except Exception as exc:
            logger.debug("Close failed on %s (%r); already gone", self.name, exc)

    async def wait_for_room(self, size: int) -> None:
        """Wait until `size` more bytes fit in half the send buffer, or ROOM_WAIT_SECS pass.

        For large replies sent in parts (snapshots): each part goes out as the client reads, so
        one state does not fill the buffer that live updates need. A client that reads nothing
        for that long gets the rest anyway, and overflows like any slow client (4508). Polled:
        the server's transport offers no event for its buffer draining below a mark.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ROOM_WAIT_SECS
        budget = max(self.max_bytes // 2, size)
        while True:
            if self.closing or loop.time() >= deadline:
                return
            if self._unsent() + self._queued_bytes + size <= budget:
                return
            await asyncio.sleep(0.01)

    def disconnected(self) -> None:
        """The client is gone: stop sending; what was queued is counted as dropped.

        `give_up` is the connection's own method, so the outbox and its connection refer to
        each other: that link goes now, so that reference counting frees a closed connection
        at once instead of leaving a cycle for the collector's rare full collections."""
        self.closing = True
        self.give_up = _gone
        if self._drain_task is not None:
            self._drain_task.cancel()
        self._drop_queue("the client disconnected")
        self.adapter.release()

    def _drop_queue(self, why: str) -> None:
        if not self._queue:
            return
        stats.count("dropped_at_close", len(self._queue))
        logger.warning(
            "Connection %s: %d queued messages not sent: %s", self.name, len(self._queue), why
        )
        self._discard_queue()


def _gone(code: int, reason: str) -> None:
    """An outbox's `give_up` once its client is gone: nothing is left to close."""


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
    A `send` that returns an awaitable other than a coroutine (ASGI asks only for an awaitable:
    Granian's returns a future of its own, not yet done) is returned to be awaited as it is.
    """
    coroutine = send(message)
    if type(coroutine) is not CoroutineType:
        return asyncio.ensure_future(coroutine)
    try:
        suspended_on = coroutine.send(None)
    except StopIteration:
        return None

    async def carry_on() -> Any:
        return await _Resume(coroutine, suspended_on)

    return asyncio.get_running_loop().create_task(carry_on())
