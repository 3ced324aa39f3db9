"""The wire envelope: message types, error and close codes, encoding and inbound validation.

Every message the server sends is built here. An update is encoded once per topic (the payload
JSON once, then spliced into each topic's envelope), never once per connection.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

from tradingrt.formats import now_timestamp


class MessageType(StrEnum):
    ORDER_UPDATE = "ORDER_UPDATE"
    POSITION_UPDATE = "POSITION_UPDATE"
    STRATEGY_UPDATE = "STRATEGY_UPDATE"
    MARKET_DATA = "MARKET_DATA"
    AUTHENTICATION = "AUTHENTICATION"
    SUBSCRIPTION = "SUBSCRIPTION"
    HEARTBEAT = "HEARTBEAT"
    ERROR = "ERROR"
    SNAPSHOT = "SNAPSHOT"
    PRESENCE = "PRESENCE"


# Types a client may send; the rest are server-to-client only.
CLIENT_TYPES = frozenset(
    {MessageType.AUTHENTICATION, MessageType.SUBSCRIPTION, MessageType.HEARTBEAT}
)


# Types accepted before the connection is authenticated.
PRE_AUTHENTICATION_TYPES = frozenset({MessageType.AUTHENTICATION, MessageType.HEARTBEAT})


class ErrorCode(StrEnum):
    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    UNAUTHENTICATED = "unauthenticated"
    RATE_LIMITED = "rate_limited"
    MESSAGE_TOO_LARGE = "message_too_large"
    INTERNAL_ERROR = "internal_error"


class CloseCode(IntEnum):
    OPERATOR_DISCONNECT = 4000
    UNAUTHENTICATED = 4401  # not authenticated in time, or the token expired unrefreshed
    USER_DEACTIVATED = 4403
    RATE_LIMITED = 4429  # kept sending after rate_limited errors
    SLOW_CONSUMER = 4508  # the send buffer overflowed
    CONNECTION_LIMIT = 4409  # the user has MAX_CONNECTIONS_PER_USER connections open already
    SESSIONS_REVOKED = 4410  # an operator revoked the user's sessions (realtime.sessions)
    # The server's update stream was interrupted (its channel layer lost messages or groups, a
    # Redis restart): updates may have been missed, so reconnect and reload. (RFC 6455's 1012
    # would say it too, but servers let applications close only with 1000 or 3000-4999.)
    STREAM_INTERRUPTED = 4503


_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
encode_json = _encoder.encode


def encode(
    message_type: str,
    payload: dict[str, Any],
    *,
    reply_to: Any = None,
    timestamp: str | None = None,
) -> str:
    """One server message as text; `reply_to` is the client message's `id`, echoed when given."""
    message: dict[str, Any] = {
        "type": message_type,
        "timestamp": timestamp or now_timestamp(),
        "payload": payload,
    }
    if reply_to is not None:
        message["id"] = reply_to
    return encode_json(message)


def encode_payload(payload: dict[str, Any]) -> str:
    """The payload of an update, encoded once for every topic and connection it goes to."""
    return encode_json(payload)


@dataclass(slots=True)
class Envelope:
    """An update's text for one topic, around the seq and epoch that `append` fills in."""

    head: str  # '{"type":"ORDER_UPDATE","topic":"user:1:orders","seq":'
    tail: str  # ',"timestamp":"...","payload":{...}}'

    def text(self, seq: int, epoch: str) -> str:
        return f'{self.head}{seq},"epoch":"{epoch}"{self.tail}'


def envelope_for_topic(
    message_type: str, topic: str, payload_json: str, timestamp: str
) -> Envelope:
    """An update's envelope for one topic, around its already-encoded payload; the history fills
    in its seq and epoch (CONTRACT section 9)."""
    return Envelope(
        f'{{"type":"{message_type}","topic":{encode_json(topic)},"seq":',
        f',"timestamp":"{timestamp}","payload":{payload_json}}}',
    )


def error(code: ErrorCode, message: str, *, reply_to: Any = None) -> str:
    return encode(MessageType.ERROR, {"code": code.value, "message": message}, reply_to=reply_to)


# Python's JSON parser recurses once per level of nesting; past the interpreter's limit it raises
# RecursionError, which is the client's malformed input, not the server's fault.
TOO_DEEP = "The message is not valid JSON here: it is nested too deeply."


class ProtocolError(Exception):
    """An inbound message the server refuses; becomes one ERROR message, never a close."""

    def __init__(self, code: ErrorCode, message: str, *, reply_to: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reply_to = reply_to

    def encode(self) -> str:
        return error(self.code, self.message, reply_to=self.reply_to)


@dataclass(frozen=True, slots=True)
class ClientMessage:
    type: MessageType
    payload: dict[str, Any]
    id: str | int | float | None


def _valid_id(value: Any) -> bool:
    """None, a string of at most 128 characters, or any finite JSON number."""
    if value is None:
        return True
    if isinstance(value, str):
        return len(value) <= 128
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def parse(text: str, *, authenticated: bool = True) -> ClientMessage:
    """Validate one inbound text frame; raises ProtocolError with the contract's error code.

    Before authentication a message of any type but AUTHENTICATION and HEARTBEAT, known or
    not, is refused as `unauthenticated`.
    """
    try:
        message = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(
            ErrorCode.INVALID_JSON, f"The message is not valid JSON: {exc}."
        ) from None
    except RecursionError:
        raise ProtocolError(ErrorCode.INVALID_JSON, TOO_DEEP) from None
    return parse_value(message, authenticated=authenticated)


def parse_value(message: Any, *, authenticated: bool = True) -> ClientMessage:
    """Validate one decoded inbound message (from JSON or MessagePack: the same rules)."""
    if not isinstance(message, dict):
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"A message must be a JSON object with a 'type', not {_json_kind(message)}.",
        )
    message_id = message.get("id")
    reply_to = message_id if _valid_id(message_id) else None
    if not _valid_id(message_id):
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            "'id' must be a number, or a string of at most 128 characters.",
        )
    message_type = message.get("type")
    if message_type is None:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, "The message has no 'type'.", reply_to=reply_to
        )
    if not isinstance(message_type, str):
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"'type' must be a string, not {_json_kind(message_type)}.",
            reply_to=reply_to,
        )
    if not authenticated and message_type not in PRE_AUTHENTICATION_TYPES:
        raise ProtocolError(
            ErrorCode.UNAUTHENTICATED,
            'Authenticate first: send an AUTHENTICATION message with {"token": <access JWT>}.',
            reply_to=reply_to,
        )
    if message_type not in CLIENT_TYPES:
        known = ", ".join(sorted(CLIENT_TYPES))
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE,
            f"Unknown message type {message_type[:64]!r}; a client may send {known}.",
            reply_to=reply_to,
        )
    payload = message.get("payload", {})
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"'payload' must be a JSON object, not {_json_kind(payload)}.",
            reply_to=reply_to,
        )
    return ClientMessage(type=MessageType(message_type), payload=payload, id=message_id)


def peek_id(text: str) -> Any:
    """The `id` of a frame that will not be handled (rate limited), to echo in its ERROR."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return id_of(message)


def id_of(message: Any) -> Any:
    """The valid `id` of a decoded message (JSON or MessagePack), to echo; None otherwise."""
    if isinstance(message, dict) and _valid_id(message.get("id")):
        return message.get("id")
    return None


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if value is None:
        return "null"
    return "an object"
