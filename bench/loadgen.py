"""The load generator: WebSocket clients spread over worker processes, one asyncio loop each.

Each worker process runs many clients on one event loop (uvloop when installed). A client is a
minimal RFC 6455 client on `asyncio.Protocol`: it does the opening handshake (optionally
offering permessage-deflate, as browsers do), answers pings, and parses frames itself, so the
receive path costs a few microseconds a message. Every receipt is stamped with `time.time()`
once per read; the machine's one clock is shared by the publisher, the server and the workers.

Modes of a client:
  tick   MARKET_DATA messages carry the publisher's send time in `payload.volume`
         (seconds since the epoch with microseconds); the worker keeps (sent, received) pairs,
         the bytes on the wire while recording, and with `latest` the last tick each client
         got of each symbol (throttled subscriptions must end on the last tick published).
  order  ORDER_UPDATE messages are decoded; the worker keeps ((order id, filledQuantity), received).
  stream each client is a `Track` of one topic's stream across reconnects: every MARKET_DATA's
         seq, epoch, send time and receipt, and per connection (`Leg`) when it connected, its
         subscription reply (position, recovered, reset) and when it was lost. A track can be
         armed to reconnect on loss, after a delay with jitter, resuming with `since`.

A client may negotiate the MessagePack subprotocol (`tradingrt.msgpack`, CONTRACT section 12):
its requests go as binary frames and its messages are decoded with msgspec, with the same
fast path for a tick's `volume` (the map key and a str header in place of the JSON text).

The parent talks to the workers over pipes (`LoadGenerator`): connect, record, collect, close.
"""

from __future__ import annotations

import array
import asyncio
import base64
import contextlib
import itertools
import json
import multiprocessing
import os
import random
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from typing import Any

import msgspec

_time = time.time
VOLUME_KEY = b'"volume":"'
STREAM_PREFIX = b'{"type":"MARKET_DATA",'
SEQ_KEY = b'"seq":'
EPOCH_KEY = b'"epoch":"'
DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"
INFLATE_TAIL = b"\x00\x00\xff\xff"
MSGPACK = "tradingrt.msgpack"
MSGPACK_VOLUME_KEY = b"\xa6volume"  # fixstr "volume"
MSGPACK_SYMBOL_KEY = b"\xa6symbol"
SYMBOL_KEY = b'"symbol":"'


def msgpack_str_after(payload: bytes, key: bytes) -> bytes | None:
    """The str value that follows `key` in a MessagePack map (fixstr or str8), or None."""
    index = payload.find(key)
    if index < 0:
        return None
    index += len(key)
    if index >= len(payload):
        return None
    head = payload[index]
    if 0xA0 <= head <= 0xBF:
        return payload[index + 1 : index + 1 + (head & 0x1F)]
    if head == 0xD9 and index + 1 < len(payload):
        return payload[index + 2 : index + 2 + payload[index + 1]]
    return None


def json_str_after(payload: bytes, key: bytes) -> bytes | None:
    """The string value that follows `key` (which ends with the opening quote) in JSON text."""
    index = payload.find(key)
    if index < 0:
        return None
    index += len(key)
    return payload[index : payload.index(b'"', index)]


def encode_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked client frame (FIN set)."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    if length:
        key = (mask * (length // 4 + 1))[:length]
        masked = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
            length, "little"
        )
    else:
        masked = b""
    return header + mask + masked


class Client(asyncio.Protocol):
    """One WebSocket connection of the load generator."""

    def __init__(
        self,
        worker: Worker,
        host: str,
        port: int,
        target: str,
        deflate: bool,
        track: Track | None = None,
        subprotocol: str | None = None,
    ) -> None:
        self.worker = worker
        self.subprotocol = subprotocol
        self.binary = False  # MessagePack negotiated
        self.track = track
        self.host, self.port, self.target = host, port, target
        self.offer_deflate = deflate
        self.transport: asyncio.Transport | None = None
        self.pending = b""
        self.handshaking = True
        self.inflater: Any = None
        self.reset_inflater = False
        self.inflate_bits = 15
        self.fragments: list[bytes] | None = None
        self.fragment_compressed = False
        loop = asyncio.get_running_loop()
        self.hello: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.reply: asyncio.Future[dict[str, Any]] | None = None
        self.closed: asyncio.Future[int | None] = loop.create_future()
        self.close_code: int | None = None

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {self.target} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            "User-Agent: tradingrt-bench",
        ]
        if self.offer_deflate:
            lines.append(f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}")
        if self.subprotocol:
            lines.append(f"Sec-WebSocket-Protocol: {self.subprotocol}")
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.open_clients.discard(self)
        if self.track is not None:
            self.worker.track_lost(self.track, self)
        if not self.hello.done():
            self.hello.set_exception(ConnectionError(f"connection lost before hello: {exc}"))
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(ConnectionError("connection lost"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)
        self.worker.closes[str(self.close_code)] += 1

    def data_received(self, data: bytes) -> None:
        now = _time()
        if self.worker.recording:
            self.worker.wire_bytes += len(data)
        if self.pending:
            data = self.pending + data
            self.pending = b""
        if self.handshaking:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.pending = data
                return
            self._handshake_response(data[:end])
            data = data[end + 4 :]
            if self.transport is None or self.transport.is_closing():
                return
        size = len(data)
        position = 0
        while size - position >= 2:
            first = data[position]
            length = data[position + 1] & 0x7F
            start = position + 2
            if length == 126:
                if size - position < 4:
                    break
                length = int.from_bytes(data[start : start + 2], "big")
                start += 2
            elif length == 127:
                if size - position < 10:
                    break
                length = int.from_bytes(data[start : start + 8], "big")
                start += 8
            end = start + length
            if end > size:
                break
            payload = data[start:end]
            position = end
            opcode = first & 0x0F
            if opcode == 0x1 or opcode == 0x2:
                if first & 0x80:
                    self.message(self.inflate(payload) if first & 0x40 else payload, now)
                else:
                    self.fragments = [payload]
                    self.fragment_compressed = bool(first & 0x40)
            elif opcode == 0x0 and self.fragments is not None:
                self.fragments.append(payload)
                if first & 0x80:
                    whole = b"".join(self.fragments)
                    self.fragments = None
                    self.message(self.inflate(whole) if self.fragment_compressed else whole, now)
            elif opcode == 0x9:
                self.send_frame(payload, 0xA)
            elif opcode == 0x8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.send_frame(payload[:2], 0x8)
                if self.transport is not None:
                    self.transport.close()
                return
        if position < size:
            self.pending = data[position:]

    # --- protocol ------------------------------------------------------------------------

    def _handshake_response(self, head: bytes) -> None:
        self.handshaking = False
        lines = head.decode("latin1").split("\r\n")
        if " 101 " not in lines[0] + " ":
            self.hello.set_exception(ConnectionError(f"handshake refused: {lines[0]}"))
            self.worker.errors[lines[0][:40]] += 1
            assert self.transport is not None
            self.transport.close()
            return
        selected = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-protocol":
                selected = value.strip()
            if name.strip().lower() == "sec-websocket-extensions" and "permessage-deflate" in value:
                params = [p.strip() for p in value.split(";")]
                self.reset_inflater = "server_no_context_takeover" in params
                for param in params:
                    if param.startswith("server_max_window_bits="):
                        self.inflate_bits = int(param.split("=", 1)[1])
                self.inflater = zlib.decompressobj(-self.inflate_bits)
        if self.subprotocol and selected != self.subprotocol:
            self.hello.set_exception(
                ConnectionError(f"offered {self.subprotocol}, the server selected {selected}")
            )
            self.worker.errors["subprotocol refused"] += 1
            assert self.transport is not None
            self.transport.close()
            return
        self.binary = selected == MSGPACK

    def inflate(self, payload: bytes) -> bytes:
        if self.inflater is None:
            return payload
        if self.reset_inflater:
            self.inflater = zlib.decompressobj(-self.inflate_bits)
        return self.inflater.decompress(payload + INFLATE_TAIL)

    def message(self, payload: bytes, now: float) -> None:
        worker = self.worker
        worker.received += 1
        if worker.mode == "tick":
            if self.binary:
                volume = msgpack_str_after(payload, MSGPACK_VOLUME_KEY)
            else:
                volume = json_str_after(payload, VOLUME_KEY)
            if volume is not None:
                if worker.recording:
                    sent = float(volume)
                    worker.sent.append(sent)
                    worker.recv.append(now)
                    worker.messages += 1
                    if worker.latest is not None:
                        symbol = (
                            msgpack_str_after(payload, MSGPACK_SYMBOL_KEY)
                            if self.binary
                            else json_str_after(payload, SYMBOL_KEY)
                        )
                        worker.latest[(id(self), symbol or b"")] = sent
                return
        elif (
            worker.mode == "stream" and self.track is not None and payload.startswith(STREAM_PREFIX)
        ):
            self.track.received(payload, now)
            return
        try:
            message = msgspec.msgpack.decode(payload) if self.binary else json.loads(payload)
        except (ValueError, msgspec.DecodeError):
            worker.errors["bad msgpack" if self.binary else "bad json"] += 1
            return
        kind = message.get("type")
        if not self.hello.done():
            if kind == "AUTHENTICATION":
                self.hello.set_result(message)
            else:
                self.hello.set_exception(ConnectionError(f"first message was {kind}"))
            return
        if kind == "ORDER_UPDATE":
            if worker.recording:
                body = message["payload"]
                worker.keys.append((body["id"], body["filledQuantity"], now))
        elif kind == "MARKET_DATA" and worker.recording and worker.mode == "order":
            volume = message["payload"].get("volume")
            if volume is not None:
                worker.sent.append(float(volume))
                worker.recv.append(now)
        elif kind in ("SUBSCRIPTION", "ERROR") and self.reply is not None:
            if kind == "SUBSCRIPTION" and self.track is not None:
                self.track.replied(message.get("payload") or {}, now)
            if not self.reply.done():
                self.reply.set_result(message)
        elif kind == "ERROR":
            worker.errors[str(message.get("payload", {}).get("code"))] += 1

    def send_frame(self, payload: bytes, opcode: int = 0x1) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(payload, opcode))

    async def request(self, message: dict[str, Any], seconds: float) -> dict[str, Any]:
        self.reply = asyncio.get_running_loop().create_future()
        if self.binary:
            self.send_frame(msgspec.msgpack.encode(message), 0x2)
        else:
            self.send_frame(json.dumps(message).encode())
        try:
            return await asyncio.wait_for(self.reply, seconds)
        finally:
            self.reply = None

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.send_frame((1000).to_bytes(2, "big"), 0x8)
            self.transport.close()


@dataclass
class ConnectSpec:
    host: str
    ports: list[int]  # clients are spread over these round-robin (several server processes)
    path: str
    tokens: list[str | None]  # one per client; None: no token in the URL
    topics: list[list[Any]]  # per client: subscribe entries, topics or objects (possibly empty)
    concurrency: int
    deflate: bool = False
    timeout: float = 60.0
    subprotocols: list[str | None] | None = None  # per client (None: offer none)


@dataclass
class StreamSpec:
    """Open every track's connection to `port`, each at `at` + uniform(0, `jitter`) seconds,
    subscribing to the topic (with `since` = the last seq it got when `resume`)."""

    host: str
    port: int
    path: str
    at: float
    jitter: float
    resume: bool = False
    timeout: float = 60.0


@dataclass
class RejoinSpec:
    """Reconnect a track whose subscribed connection is lost: to `port`, `delay` + uniform(0,
    `jitter`) seconds after the loss, resuming with `since`."""

    host: str
    port: int
    path: str
    delay: float
    jitter: float
    timeout: float = 60.0


# A failed (re)connect is retried as the JavaScript client does: full jitter below a ceiling
# of 0.5 s doubling per attempt (realtime/static/realtime/client.js, backoffDelay).
RETRY_BASE_S = 0.5
RETRY_CAP_S = 30.0
RETRY_ATTEMPTS = 8


class Leg:
    """One subscribed connection of a track: how it was opened and what its reply said."""

    __slots__ = (
        "attempts", "connected_at", "epoch", "failures", "gave_up", "index", "index_at_loss",
        "lost_at", "position", "recovered", "rejected", "reply_at", "reset", "since",
        "started_at",
    )  # fmt: skip

    def __init__(self, since: int | None) -> None:
        self.since = since  # the seq resumed from (None: a fresh subscription)
        self.started_at: float | None = None  # first connect attempt
        self.attempts = 0
        self.failures: list[str] = []
        self.connected_at: float | None = None  # AUTHENTICATION received
        self.reply_at: float | None = None  # the subscription's reply received
        self.position: int | None = None  # the reply's positions[topic].seq
        self.epoch: str | None = None
        self.recovered = False
        self.reset: str | None = None
        self.rejected: list[Any] = []
        self.index = 0  # len(track.seqs) when the reply arrived: what follows is this leg's
        self.lost_at: float | None = None
        self.index_at_loss: int | None = None
        self.gave_up = False


class Track:
    """One client's view of one topic across its connections: every MARKET_DATA's seq, send
    time (the publisher's, in `volume`) and receipt, and one `Leg` per subscribed connection."""

    __slots__ = (
        "bad_epochs", "client", "epoch", "last", "legs", "number", "recv", "sent", "seqs",
        "token", "topic",
    )  # fmt: skip

    def __init__(self, number: int, token: str | None, topic: str) -> None:
        self.number, self.token, self.topic = number, token, topic
        self.seqs = array.array("q")
        self.sent = array.array("d")
        self.recv = array.array("d")
        self.legs: list[Leg] = []
        self.client: Client | None = None
        self.epoch: bytes | None = None  # the stream's epoch, from the first reply
        self.bad_epochs = 0  # messages of another epoch
        self.last = 0  # the last seq received

    def received(self, payload: bytes, now: float) -> None:
        start = payload.find(SEQ_KEY, 20) + 6
        end = payload.find(b",", start)
        seq = int(payload[start:end])
        start = payload.find(EPOCH_KEY, end) + 9
        end = payload.find(b'"', start)
        if payload[start:end] != self.epoch:
            self.bad_epochs += 1
        start = payload.find(VOLUME_KEY, end) + 10
        self.sent.append(float(payload[start : payload.find(b'"', start)]))
        self.seqs.append(seq)
        self.recv.append(now)
        self.last = seq

    def replied(self, payload: dict[str, Any], now: float) -> None:
        leg = self.legs[-1]
        leg.reply_at = now
        leg.index = len(self.seqs)
        leg.rejected = list(payload.get("rejected") or [])
        position = (payload.get("positions") or {}).get(self.topic)
        if position is not None:
            leg.position = int(position["seq"])
            leg.epoch = str(position["epoch"])
            if self.epoch is None:
                self.epoch = leg.epoch.encode()
        leg.recovered = self.topic in (payload.get("recovered") or [])
        for reset in payload.get("reset") or []:
            if reset.get("topic") == self.topic:
                leg.reset = str(reset.get("reason"))

    def resumed(self) -> bool:
        """Its latest leg has its reply, no reset, and every message up to the reply's position
        (after which everything follows live)."""
        leg = self.legs[-1] if self.legs else None
        return (
            leg is not None
            and leg.reply_at is not None
            and leg.position is not None
            and leg.reset is None
            and (leg.since is None or self.last >= leg.position)
        )

    def settled(self) -> bool:
        """Resumed, or told to reset (it would reload; nothing more to wait for)."""
        leg = self.legs[-1] if self.legs else None
        return self.resumed() or (leg is not None and leg.reset is not None)

    def summary(self, final: int) -> dict[str, Any]:
        """What each leg got, checked: its seqs are exactly position+1 .. (loss or `final`);
        a resumed leg's are exactly since+1 .. `final` (nothing lost, nothing twice)."""
        seqs = self.seqs
        legs = []
        for number, leg in enumerate(self.legs):
            end = leg.index_at_loss if leg.index_at_loss is not None else len(seqs)
            got = seqs[leg.index : end]
            first = leg.since if leg.since is not None else leg.position
            row: dict[str, Any] = {
                "since": leg.since,
                "position": leg.position,
                "recovered": leg.recovered,
                "reset": leg.reset,
                "rejected": leg.rejected,
                "attempts": leg.attempts,
                "failures": leg.failures,
                "gave_up": leg.gave_up,
                "started_at": leg.started_at,
                "connected_at": leg.connected_at,
                "reply_at": leg.reply_at,
                "lost_at": leg.lost_at,
                "received": len(got),
            }
            if first is not None and leg.position is not None:
                last = seqs[end - 1] if end > leg.index else first
                # The last leg must reach the end; an earlier one ends where it was lost.
                until = final if number == len(self.legs) - 1 else max(last, first)
                expected = range(first + 1, until + 1)
                unique = set(got)
                row["missing"] = sum(1 for seq in expected if seq not in unique)
                row["duplicates"] = len(got) - len(unique)
                row["out_of_order"] = sum(1 for a, b in itertools.pairwise(got) if b <= a)
                row["exact"] = list(got) == list(expected)
                row["last_seq"] = last
                row["missed"] = leg.position - first if leg.since is not None else 0
                row["replayed"] = sum(1 for seq in got if seq <= leg.position)
                # Caught up: the reply, and (after a resume) the replayed message `position`.
                caught_up = leg.reply_at if leg.position <= first else None
                first_live = None
                for index in range(leg.index, end):
                    seq = seqs[index]
                    if seq == leg.position and caught_up is None:
                        caught_up = self.recv[index]
                    elif seq > leg.position:
                        first_live = self.recv[index]
                        break
                row["caught_up_at"] = caught_up
                row["first_live_at"] = first_live
            legs.append(row)
        return {"number": self.number, "bad_epochs": self.bad_epochs, "legs": legs}


class Worker:
    """The clients of one worker process and what they recorded."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.mode = "tick"
        self.recording = False
        self.sent = array.array("d")
        self.recv = array.array("d")
        self.keys: list[tuple[int, str, float]] = []
        self.clients: list[Client] = []
        self.open_clients: set[Client] = set()
        self.errors: Counter[str] = Counter()
        self.closes: Counter[str] = Counter()
        self.received = 0  # messages, whether recorded or not
        self.wire_bytes = 0  # bytes read from the sockets while recording (frames, headers)
        self.messages = 0  # ticks recorded
        self.latest: dict[tuple[int, bytes], float] | None = None  # (client, symbol) -> sent
        self.tracks: list[Track] = []  # stream mode
        self.rejoin: RejoinSpec | None = None  # stream mode: reconnect tracks that lose theirs
        self.stream_tasks: set[asyncio.Task[None]] = set()
        self.stream_timers: list[asyncio.TimerHandle] = []

    async def connect(self, spec: ConnectSpec) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(spec.concurrency)
        durations = array.array("d")
        finished = array.array("d")
        failures: Counter[str] = Counter()
        first = _time()

        async def one(number: int) -> None:
            token = spec.tokens[number]
            target = spec.path + (f"?token={token}" if token else "")
            port = spec.ports[number % len(spec.ports)]
            async with gate:
                started = _time()
                client: Client | None = None
                try:
                    async with asyncio.timeout(spec.timeout):
                        _, client = await loop.create_connection(
                            lambda: Client(
                                self,
                                spec.host,
                                port,
                                target,
                                spec.deflate,
                                subprotocol=spec.subprotocols[number]
                                if spec.subprotocols
                                else None,
                            ),
                            spec.host,
                            port,
                        )
                        self.open_clients.add(client)
                        await client.hello
                        if spec.topics[number]:
                            reply = await client.request(
                                {
                                    "type": "SUBSCRIPTION",
                                    "id": number,
                                    "payload": {
                                        "action": "subscribe",
                                        "topics": spec.topics[number],
                                    },
                                },
                                spec.timeout,
                            )
                            if reply.get("type") != "SUBSCRIPTION" or reply["payload"].get(
                                "rejected"
                            ):
                                raise ConnectionError(f"subscription refused: {reply}")
                except Exception as exc:
                    failures[type(exc).__name__ + ": " + str(exc)[:80]] += 1
                    if client is not None:
                        client.close()
                    return
                done = _time()
                durations.append(done - started)
                finished.append(done)
                self.clients.append(client)

        await asyncio.gather(*(one(i) for i in range(len(spec.tokens))))
        return {
            "requested": len(spec.tokens),
            "opened": len(durations),
            "failures": dict(failures),
            "started_at": first,
            "durations": durations.tobytes(),
            "finished": finished.tobytes(),
        }

    def record(self, on: bool, mode: str, latest: bool = False) -> dict[str, Any]:
        self.mode = mode
        self.sent = array.array("d")
        self.recv = array.array("d")
        self.keys = []
        self.wire_bytes = self.messages = 0
        self.latest = {} if latest else None
        self.recording = on
        return {"ok": True}

    def collect(self) -> dict[str, Any]:
        self.recording = False
        result = {
            "sent": self.sent.tobytes(),
            "recv": self.recv.tobytes(),
            "keys": self.keys,
            "open": len(self.open_clients),
            "errors": dict(self.errors),
            "closes": dict(self.closes),
            "pid": os.getpid(),
            "wire_bytes": self.wire_bytes,
            "messages": self.messages,
        }
        if self.latest is not None:  # per symbol: the last tick each client got of it
            by_symbol: defaultdict[str, list[float]] = defaultdict(list)
            for (_, symbol), sent in self.latest.items():
                by_symbol[symbol.decode()].append(sent)
            result["latest"] = dict(by_symbol)
        self.sent, self.recv, self.keys = array.array("d"), array.array("d"), []
        self.latest = None
        return result

    async def close_all(self) -> dict[str, Any]:
        self.rejoin = None  # closed on purpose: no track reconnects
        for timer in self.stream_timers:
            timer.cancel()
        self.stream_timers.clear()
        for task in list(self.stream_tasks):
            task.cancel()
        clients, self.clients = self.clients, []
        clients += [
            t.client for t in self.tracks if t.client is not None and t.client not in clients
        ]
        for client in clients:
            client.close()
        waiting = [c.closed for c in clients if not c.closed.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=10)
        return {"closed": len(clients), "open": len(self.open_clients)}

    # --- stream mode: one topic's stream per client, across reconnects (storm, soak) ------

    def stream_setup(self, tracks: list[tuple[int, str | None, str]]) -> dict[str, Any]:
        self.mode = "stream"
        self.rejoin = None
        self.tracks = [Track(number, token, topic) for number, token, topic in tracks]
        return {"tracks": len(self.tracks)}

    def stream_drop(self, fraction: float) -> dict[str, Any]:
        """Close, from the client's side, the connection of each resumed track with probability
        `fraction`: an armed rejoin then brings it back with `since` (bench soak's resumers).
        Only resumed tracks: a drop mid-replay would test the replay's cut, not the resume."""
        dropped = 0
        for track in self.tracks:
            if track.client is not None and track.resumed() and random.random() < fraction:
                track.client.close()
                dropped += 1
        return {"dropped": dropped}

    def stream_start(self, spec: StreamSpec) -> dict[str, Any]:
        for track in self.tracks:
            delay = spec.at + random.random() * spec.jitter - _time()
            self._open_later(delay, track, spec, resume=spec.resume)
        return {"ok": True}

    def stream_arm(self, spec: RejoinSpec | None) -> dict[str, Any]:
        self.rejoin = spec
        return {"ok": True}

    def _open_later(
        self, delay: float, track: Track, spec: StreamSpec | RejoinSpec, *, resume: bool
    ) -> None:
        loop = asyncio.get_running_loop()

        def go() -> None:
            task = loop.create_task(self._open(track, spec, resume=resume))
            self.stream_tasks.add(task)
            task.add_done_callback(self.stream_tasks.discard)

        self.stream_timers.append(loop.call_later(max(0.0, delay), go))

    async def _open(self, track: Track, spec: StreamSpec | RejoinSpec, *, resume: bool) -> None:
        """Connect, authenticate and subscribe (resuming from the last seq received when
        `resume`); a failure is retried with the JavaScript client's backoff."""
        loop = asyncio.get_running_loop()
        host, port, seconds = spec.host, spec.port, spec.timeout
        leg = Leg(track.last if resume else None)
        track.legs.append(leg)
        target = spec.path + (f"?token={track.token}" if track.token else "")
        entry: Any = track.topic
        if leg.since is not None:
            assert track.epoch is not None
            since = {"epoch": track.epoch.decode(), "seq": leg.since}
            entry = {"topic": track.topic, "since": since}
        while True:
            leg.attempts += 1
            if leg.started_at is None:
                leg.started_at = _time()
            client: Client | None = None
            try:
                async with asyncio.timeout(seconds):
                    _, client = await loop.create_connection(
                        lambda: Client(self, host, port, target, False, track), host, port
                    )
                    track.client = client
                    self.open_clients.add(client)
                    await client.hello
                    leg.connected_at = _time()
                    reply = await client.request(
                        {
                            "type": "SUBSCRIPTION",
                            "id": track.number,
                            "payload": {"action": "subscribe", "topics": [entry]},
                        },
                        seconds,
                    )
                if reply.get("type") != "SUBSCRIPTION" or leg.position is None:
                    raise ConnectionError(f"subscription refused: {str(reply)[:200]}")
                self.clients.append(client)
                return
            except Exception as exc:
                leg.failures.append(f"{type(exc).__name__}: {str(exc)[:80]}")
                if client is not None:
                    if track.client is client:
                        track.client = None
                    client.close()
                if leg.attempts >= RETRY_ATTEMPTS:
                    leg.gave_up = True
                    return
                ceiling = min(RETRY_CAP_S, RETRY_BASE_S * 2 ** (leg.attempts - 1))
                await asyncio.sleep(random.random() * ceiling)

    def track_lost(self, track: Track, client: Client) -> None:
        """A track's connection closed: note where its stream stopped, and reconnect if armed
        (a connection lost before its subscription's reply is retried by `_open`)."""
        if track.client is not client:
            return
        track.client = None
        leg = track.legs[-1] if track.legs else None
        if leg is None or leg.reply_at is None or leg.lost_at is not None:
            return
        leg.lost_at = _time()
        leg.index_at_loss = len(track.seqs)
        spec = self.rejoin
        if spec is not None:
            self._open_later(spec.delay + random.random() * spec.jitter, track, spec, resume=True)

    def stream_status(self) -> dict[str, Any]:
        tracks = self.tracks
        resumed: Counter[str] = Counter()
        settled: Counter[str] = Counter()
        legs: Counter[str] = Counter()
        for track in tracks:
            legs[str(len(track.legs))] += 1
            if track.resumed():
                resumed[str(len(track.legs))] += 1
            if track.settled():
                settled[str(len(track.legs))] += 1
        return {
            "tracks": len(tracks),
            "legs": dict(legs),
            "resumed": dict(resumed),
            "settled": dict(settled),
            "lost": sum(1 for t in tracks if t.legs and t.legs[-1].lost_at is not None),
            "gave_up": sum(1 for t in tracks if t.legs and t.legs[-1].gave_up),
            "min_last": min((t.last for t in tracks), default=0),
            "max_last": max((t.last for t in tracks), default=0),
            "received": self.received,
        }

    def stream_collect(self, final: int | dict[str, int]) -> dict[str, Any]:
        """Every track's legs, checked against `final` (the topic's last seq, or each topic's
        when the tracks follow several), and the send and receipt times of the messages that
        came live after each track's last reply."""
        live_sent = array.array("d")
        live_recv = array.array("d")
        for track in self.tracks:
            leg = track.legs[-1] if track.legs else None
            if leg is None or leg.position is None:
                continue
            for index in range(leg.index, len(track.seqs)):
                if track.seqs[index] > leg.position:
                    live_sent.append(track.sent[index])
                    live_recv.append(track.recv[index])
        return {
            "tracks": [
                track.summary(final if isinstance(final, int) else final[track.topic])
                for track in self.tracks
            ],
            "live_sent": live_sent.tobytes(),
            "live_recv": live_recv.tobytes(),
            "errors": dict(self.errors),
            "closes": dict(self.closes),
        }

    async def stream_close(self) -> dict[str, Any]:
        reply = await self.close_all()
        self.tracks = []
        self.mode = "tick"
        return reply

    def status(self) -> dict[str, Any]:
        return {
            "open": len(self.open_clients),
            "received": self.received,
            "recorded": len(self.sent) + len(self.keys),
            "errors": dict(self.errors),
            "closes": dict(self.closes),
        }

    async def serve(self, pipe: Pipe) -> None:
        loop = asyncio.get_running_loop()
        while True:
            command, argument = await loop.run_in_executor(None, pipe.recv)
            try:
                if command == "connect":
                    reply = await self.connect(argument)
                elif command == "record":
                    reply = self.record(*argument)
                elif command == "collect":
                    reply = self.collect()
                elif command == "close":
                    reply = await self.close_all()
                elif command == "status":
                    reply = self.status()
                elif command == "stream_setup":
                    reply = self.stream_setup(argument)
                elif command == "stream_start":
                    reply = self.stream_start(argument)
                elif command == "stream_arm":
                    reply = self.stream_arm(argument)
                elif command == "stream_drop":
                    reply = self.stream_drop(argument)
                elif command == "stream_status":
                    reply = self.stream_status()
                elif command == "stream_collect":
                    reply = self.stream_collect(argument)
                elif command == "stream_close":
                    reply = await self.stream_close()
                elif command == "exit":
                    await self.close_all()
                    pipe.send({"ok": True})
                    return
                else:
                    reply = {"error": f"unknown command {command}"}
            except Exception as exc:  # report, keep serving
                reply = {"error": repr(exc)}
            pipe.send(reply)


def _worker_main(pipe: Pipe, index: int) -> None:
    from bench.common import raise_nofile

    raise_nofile()
    runner: Any = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    runner(Worker(index).serve(pipe))


class LoadGenerator:
    """The parent's handle on the worker processes (started at once, stopped by `stop`)."""

    def __init__(self, workers: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Pipe] = []
        self.processes: list[Any] = []
        for index in range(workers):
            parent, child = context.Pipe()
            process = context.Process(target=_worker_main, args=(child, index), daemon=True)
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def _all(self, command: str, arguments: Sequence[Any], timeout: float = 600) -> list[Any]:
        for pipe, argument in zip(self.pipes, arguments, strict=True):
            pipe.send((command, argument))
        replies = []
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                raise TimeoutError(f"load generator worker did not answer {command}")
            reply = pipe.recv()
            if isinstance(reply, dict) and "error" in reply:
                raise RuntimeError(f"worker failed {command}: {reply['error']}")
            replies.append(reply)
        return replies

    def connect(
        self,
        *,
        host: str,
        ports: list[int],
        path: str,
        tokens: Sequence[str | None],
        topics: Sequence[list[Any]],
        concurrency: int,
        deflate: bool = False,
        timeout: float = 60.0,
        subprotocols: Sequence[str | None] | None = None,
    ) -> dict[str, Any]:
        """Open len(tokens) clients spread over the workers; returns timings and failures.

        `subprotocols`: per client, the subprotocol it offers (None: none, JSON)."""
        count = len(self.pipes)
        per_worker_concurrency = max(1, concurrency // count)
        specs = []
        for index in range(count):
            specs.append(
                ConnectSpec(
                    host=host,
                    ports=ports[index % len(ports) :] + ports[: index % len(ports)],
                    path=path,
                    tokens=list(tokens[index::count]),
                    topics=list(topics[index::count]),
                    concurrency=per_worker_concurrency,
                    deflate=deflate,
                    timeout=timeout,
                    subprotocols=list(subprotocols[index::count]) if subprotocols else None,
                )
            )
        started = time.time()
        replies = self._all("connect", specs)
        durations = array.array("d")
        finished = array.array("d")
        failures: Counter[str] = Counter()
        for reply in replies:
            durations.frombytes(reply["durations"])
            finished.frombytes(reply["finished"])
            failures.update(reply["failures"])
        return {
            "requested": len(tokens),
            "opened": sum(r["opened"] for r in replies),
            "failures": dict(failures),
            "started_at": started,
            "durations": list(durations),
            "finished": list(finished),
        }

    def record(self, mode: str = "tick", latest: bool = False) -> None:
        """Start recording; with `latest`, also the last tick each client gets of each symbol."""
        self._all("record", [(True, mode, latest)] * len(self.pipes))

    def collect(self) -> dict[str, Any]:
        sent = array.array("d")
        recv = array.array("d")
        keys: list[tuple[int, str, float]] = []
        errors: Counter[str] = Counter()
        closes: Counter[str] = Counter()
        open_clients = wire_bytes = messages = 0
        latest: defaultdict[str, list[float]] = defaultdict(list)
        for reply in self._all("collect", [None] * len(self.pipes)):
            wire_bytes += reply["wire_bytes"]
            messages += reply["messages"]
            for symbol, values in reply.get("latest", {}).items():
                latest[symbol] += values
            sent.frombytes(reply["sent"])
            recv.frombytes(reply["recv"])
            keys.extend(reply["keys"])
            errors.update(reply["errors"])
            closes.update(reply["closes"])
            open_clients += reply["open"]
        return {
            "sent": sent,
            "recv": recv,
            "keys": keys,
            "errors": dict(errors),
            "closes": dict(closes),
            "open": open_clients,
            "wire_bytes": wire_bytes,
            "messages": messages,
            "latest": dict(latest),
        }

    def status(self) -> dict[str, Any]:
        replies = self._all("status", [None] * len(self.pipes))
        closes: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        for reply in replies:
            closes.update(reply["closes"])
            errors.update(reply["errors"])
        return {
            "open": sum(r["open"] for r in replies),
            "received": sum(r["received"] for r in replies),
            "recorded": sum(r["recorded"] for r in replies),
            "closes": dict(closes),
            "errors": dict(errors),
        }

    def wait_recorded(self, expected: int, quiet: float, limit: float = 60.0) -> int:
        """Wait until `expected` receipts were recorded, or none arrived for `quiet` s."""
        deadline = time.monotonic() + limit
        previous, quiet_since = -1, time.monotonic()
        recorded = 0
        while time.monotonic() < deadline:
            recorded = self.status()["recorded"]
            if recorded >= expected:
                break
            now = time.monotonic()
            if recorded != previous:
                previous, quiet_since = recorded, now
            elif now - quiet_since > quiet:
                break
            time.sleep(0.05)
        return recorded

    # --- stream mode (bench storm) -------------------------------------------------------

    def stream_setup(self, tokens: Sequence[str | None], topic: str | Sequence[str]) -> None:
        """One track per token (client number = its index), spread over the workers; `topic`
        is every track's, or one per token."""
        count = len(self.pipes)
        topics = [topic] * len(tokens) if isinstance(topic, str) else list(topic)
        numbered = [(n, token, topics[n]) for n, token in enumerate(tokens)]
        self._all("stream_setup", [numbered[i::count] for i in range(count)])

    def stream_drop(self, fraction: float) -> int:
        """Drop each resumed track's connection with probability `fraction`; how many were."""
        replies = self._all("stream_drop", [fraction] * len(self.pipes))
        return sum(r["dropped"] for r in replies)

    def stream_start(self, spec: StreamSpec) -> None:
        self._all("stream_start", [spec] * len(self.pipes))

    def stream_arm(self, spec: RejoinSpec | None) -> None:
        self._all("stream_arm", [spec] * len(self.pipes))

    def stream_status(self) -> dict[str, Any]:
        counts = ("legs", "resumed", "settled")
        total: dict[str, Any] = {key: Counter() for key in counts}
        replies = self._all("stream_status", [None] * len(self.pipes))
        for reply in replies:
            for key in counts:
                total[key].update(reply[key])
        for key in ("tracks", "lost", "gave_up", "received"):
            total[key] = sum(r[key] for r in replies)
        total["min_last"] = min(r["min_last"] for r in replies)
        total["max_last"] = max(r["max_last"] for r in replies)
        for key in counts:
            total[key] = dict(total[key])
        return total

    def stream_collect(self, final: int | dict[str, int]) -> dict[str, Any]:
        tracks: list[dict[str, Any]] = []
        live_sent = array.array("d")
        live_recv = array.array("d")
        errors: Counter[str] = Counter()
        closes: Counter[str] = Counter()
        for reply in self._all("stream_collect", [final] * len(self.pipes)):
            tracks.extend(reply["tracks"])
            live_sent.frombytes(reply["live_sent"])
            live_recv.frombytes(reply["live_recv"])
            errors.update(reply["errors"])
            closes.update(reply["closes"])
        tracks.sort(key=lambda t: t["number"])
        return {
            "tracks": tracks,
            "live_sent": live_sent,
            "live_recv": live_recv,
            "errors": dict(errors),
            "closes": dict(closes),
        }

    def stream_close(self) -> dict[str, Any]:
        replies = self._all("stream_close", [None] * len(self.pipes), timeout=60)
        return {"closed": sum(r["closed"] for r in replies)}

    def close_all(self) -> dict[str, Any]:
        replies = self._all("close", [None] * len(self.pipes), timeout=60)
        return {
            "closed": sum(r["closed"] for r in replies),
            "open": sum(r["open"] for r in replies),
        }

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._all("exit", [None] * len(self.pipes), timeout=20)
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.terminate()
                process.join(5)

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
