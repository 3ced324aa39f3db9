"""The baseline: a minimal `websockets` broadcast server speaking just enough of the protocol.

    python -m bench.baseline_server --port 9000 --control-port 9001

WebSocket clients connect on --port (any path; the token is ignored: no authentication, no
database), get an AUTHENTICATION message, and may SUBSCRIPTION-subscribe to topics. Ticks are
published by `POST /publish` on --control-port with the body `POST /api/market-data/` takes
(one tick or a list); each tick becomes the MARKET_DATA envelope the real server would send,
byte for byte the same shape, encoded once and handed to `websockets.broadcast`.

This is the floor the real server is compared with: the same load generator, the same
messages, none of Django, Channels, Daphne/Twisted or the database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast, serve

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
topics: dict[str, set[ServerConnection]] = {}


def now_timestamp() -> str:
    value = datetime.now(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def envelope(message_type: str, payload: dict[str, Any], reply_to: Any = None) -> str:
    message: dict[str, Any] = {
        "type": message_type,
        "timestamp": now_timestamp(),
        "payload": payload,
    }
    if reply_to is not None:
        message["id"] = reply_to
    return _encode(message)


def _decimal(value: Any) -> str | None:
    if value is None:
        return None
    number = Decimal(str(value))
    return "0" if number == 0 else format(number.normalize(), "f")


def publish(tick: dict[str, Any]) -> int:
    """One tick to `market:SYMBOL`, as realtime.market_data + realtime.protocol encode it."""
    symbol = str(tick["symbol"]).upper()
    topic = f"market:{symbol}"
    timestamp = now_timestamp()
    payload = _encode(
        {
            "symbol": symbol,
            "last": _decimal(tick["last"]),
            "bid": _decimal(tick.get("bid")),
            "ask": _decimal(tick.get("ask")),
            "volume": _decimal(tick.get("volume")),
            "timestamp": tick.get("timestamp") or timestamp,
        }
    )
    text = (
        f'{{"type":"MARKET_DATA","topic":{_encode(topic)},'
        f'"timestamp":"{timestamp}","payload":{payload}}}'
    )
    subscribers = topics.get(topic)
    if subscribers:
        broadcast(subscribers, text)
        return len(subscribers)
    return 0


async def handler(connection: ServerConnection) -> None:
    held: set[str] = set()
    await connection.send(
        envelope(
            "AUTHENTICATION",
            {
                "status": "authenticated",
                "userId": 0,
                "username": "baseline",
                "connectionId": uuid.uuid4().hex,
                "expiresAt": now_timestamp(),
            },
        )
    )
    try:
        async for text in connection:
            try:
                message = json.loads(text)
            except ValueError:
                continue
            kind, payload = message.get("type"), message.get("payload") or {}
            if kind == "SUBSCRIPTION" and payload.get("action") == "subscribe":
                names = [str(t) for t in payload.get("topics", [])]
                for name in names:
                    topics.setdefault(name, set()).add(connection)
                    held.add(name)
                reply = {"action": "subscribed", "topics": names, "rejected": []}
                await connection.send(envelope("SUBSCRIPTION", reply, message.get("id")))
            elif kind == "HEARTBEAT":
                await connection.send(
                    envelope("HEARTBEAT", {"serverTime": now_timestamp()}, message.get("id"))
                )
    finally:
        for name in held:
            subscribers = topics.get(name)
            if subscribers is not None:
                subscribers.discard(connection)


async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A keep-alive HTTP/1.1 endpoint: POST /publish with a tick or a list of ticks."""
    try:
        while True:
            request_line = await reader.readline()
            if not request_line:
                return
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length) if length else b""
            ticks = json.loads(body) if body else []
            if isinstance(ticks, dict):
                ticks = [ticks]
            for tick in ticks:
                publish(tick)
            response = json.dumps({"accepted": len(ticks)}).encode()
            writer.write(
                b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(response)).encode() + b"\r\n\r\n" + response
            )
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()


async def main(options: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop)
    control_server = await asyncio.start_server(control, "127.0.0.1", options.control_port)
    compression = None if options.no_compression else "deflate"
    server = await serve(handler, "127.0.0.1", options.port, compression=compression, backlog=1024)
    await stop
    control_server.close()
    server.close(close_connections=False)  # exit now; clients see the connection drop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control-port", type=int, required=True)
    parser.add_argument(
        "--no-compression",
        action="store_true",
        help="refuse permessage-deflate (by default accepted when a client offers it)",
    )
    asyncio.run(main(parser.parse_args()))
