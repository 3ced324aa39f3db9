"""The two wire encodings, chosen by WebSocket subprotocol (docs/PROTOCOL.md section 3.3)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

JSON = "json"
MSGPACK = "msgpack"
SUBPROTOCOLS = {JSON: "tradingrt.json", MSGPACK: "tradingrt.msgpack"}


class Codec:
    """Encodes client messages and decodes server frames in one encoding."""

    def __init__(
        self, name: str, dumps: Callable[[Any], str | bytes], loads: Callable[[Any], Any]
    ) -> None:
        self.name = name
        self.dumps = dumps
        self.loads = loads

    def decode(self, frame: str | bytes) -> dict[str, Any]:
        if self.name == JSON and isinstance(frame, bytes):
            raise ValueError("a binary frame on a JSON connection")
        if self.name == MSGPACK and isinstance(frame, str):
            raise ValueError("a text frame on a MessagePack connection")
        message = self.loads(frame)
        if not isinstance(message, dict):
            raise ValueError(f"a server message that is not an object: {message!r:.80}")
        return message


def _json_codec() -> Codec:
    return Codec(JSON, lambda message: json.dumps(message, separators=(",", ":")), json.loads)


def _msgpack_codec() -> Codec:
    try:
        import msgpack
    except ImportError:
        try:
            import msgspec
        except ImportError:
            raise ImportError(
                'encoding="msgpack" needs the msgpack package: '
                "pip install 'tradingrt-client[msgpack]'"
            ) from None
        return Codec(MSGPACK, msgspec.msgpack.encode, msgspec.msgpack.decode)
    return Codec(MSGPACK, msgpack.packb, lambda frame: msgpack.unpackb(frame, raw=False))


def codec(name: str) -> Codec:
    """The codec for an encoding name; ImportError when MessagePack is not installed."""
    if name == JSON:
        return _json_codec()
    if name == MSGPACK:
        return _msgpack_codec()
    raise ValueError(f"encoding must be {JSON!r} or {MSGPACK!r}, not {name!r}")


def codec_for_subprotocol(subprotocol: str | None, wanted: Codec) -> Codec:
    """What the server selected: `wanted` when it agreed, JSON when it selected nothing."""
    if subprotocol == SUBPROTOCOLS[wanted.name]:
        return wanted
    return _json_codec()
