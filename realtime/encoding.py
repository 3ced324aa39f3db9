"""Encodings of the wire protocol (CONTRACT section 12): JSON, or MessagePack by subprotocol.

Under `tradingrt.msgpack` every message, both ways, is one binary frame holding a MessagePack
map with exactly the keys and values of the JSON message (decimals and timestamps stay
strings). The server builds every message as JSON text once; a MessagePack connection gets
that text transcoded, once per message and process however many connections share it (a
broadcast's text is one object: `to_msgpack` remembers its last few results by identity).

msgspec was chosen by measurement (docs/BENCHMARKS.md, "Encodings"): it transcodes an
ORDER_UPDATE about 2.5 times as fast as `json` with msgpack-python (and ormsgpack, measured when
it was chosen, was no faster than msgpack-python), and it decodes the fastest too.
"""

from __future__ import annotations

import collections
from enum import StrEnum
from typing import Any

import msgspec

JSON_SUBPROTOCOL = "tradingrt.json"
MSGPACK_SUBPROTOCOL = "tradingrt.msgpack"
# Nesting a client message may have once decoded (a JSON message is bounded by the parser's
# recursion limit; this is the same idea, far below it).
MAX_DEPTH = 64


class Encoding(StrEnum):
    JSON = "json"
    MSGPACK = "msgpack"


def negotiate(offered: list[str] | tuple[str, ...] | None) -> tuple[Encoding, str | None]:
    """The encoding and the subprotocol to select from what the client offered.

    MessagePack if offered; else JSON, selecting `tradingrt.json` only if it was offered: a
    client that offers nothing, or only subprotocols this server does not speak, gets none
    selected (RFC 6455) and JSON, exactly as before subprotocols existed.
    """
    offered = list(offered or ())
    if MSGPACK_SUBPROTOCOL in offered:
        return Encoding.MSGPACK, MSGPACK_SUBPROTOCOL
    if JSON_SUBPROTOCOL in offered:
        return Encoding.JSON, JSON_SUBPROTOCOL
    return Encoding.JSON, None


_json_decoder = msgspec.json.Decoder()
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()

# The last texts transcoded, by identity: a broadcast reaches every MessagePack connection as
# the same str object, so it is transcoded once. Small: a message is reused within one pass of
# delivery, not later.
_RECENT = 64
_recent: collections.OrderedDict[int, tuple[str, bytes]] = collections.OrderedDict()


def to_msgpack(text: str) -> bytes:
    """The MessagePack form of one server message built as JSON text."""
    key = id(text)
    hit = _recent.get(key)
    if hit is not None and hit[0] is text:
        return hit[1]
    data = _encoder.encode(_json_decoder.decode(text))
    _recent[key] = (text, data)
    if len(_recent) > _RECENT:
        _recent.popitem(last=False)
    return data


class UndecodableMessage(ValueError):
    """A binary frame that is not one MessagePack value this protocol can carry."""


def from_msgpack(data: bytes) -> Any:
    """Decode one client frame; UndecodableMessage saying why when it cannot be."""
    try:
        value = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise UndecodableMessage(f"The message is not valid MessagePack: {exc}.") from None
    except RecursionError:
        raise UndecodableMessage("The message is nested too deeply.") from None
    _check(value, 0)
    return value


def _check(value: Any, depth: int) -> None:
    """Only what JSON can say: maps with string keys, arrays, strings, numbers, booleans, nil."""
    if depth > MAX_DEPTH:
        raise UndecodableMessage("The message is nested too deeply.")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise UndecodableMessage("Map keys must be strings.")
            _check(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check(item, depth + 1)
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise UndecodableMessage("Numbers must be finite.")
    elif value is not None and not isinstance(value, str | int | bool):
        kind = type(value).__name__
        raise UndecodableMessage(
            f"MessagePack {kind} values (binary, extension types, timestamps) are refused."
        )
