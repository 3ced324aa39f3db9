"""Typed messages and events that the client hands to a bot (docs/PROTOCOL.md sections 4, 6, 7)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

UPDATE_TYPES = frozenset({"ORDER_UPDATE", "POSITION_UPDATE", "STRATEGY_UPDATE", "MARKET_DATA"})


def parse_time(value: str) -> datetime:
    """A server timestamp (`"2026-11-25T20:28:15.310Z"`) as an aware datetime."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True, slots=True)
class Position:
    """A topic's place in its history: the epoch and the seq of a message (section 7.2)."""

    epoch: str
    seq: int

    @classmethod
    def from_wire(cls, value: dict[str, Any]) -> Position:
        return cls(epoch=str(value["epoch"]), seq=int(value["seq"]))

    def to_wire(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "seq": self.seq}


# --- messages from the stream ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Update:
    """One ORDER_UPDATE, POSITION_UPDATE, STRATEGY_UPDATE or MARKET_DATA on a topic.

    `payload` is the object's representation as the server sent it (decimals are strings).
    """

    type: str
    topic: str
    seq: int
    epoch: str
    timestamp: str
    payload: dict[str, Any]

    @property
    def event(self) -> str | None:
        """`created`, `filled`, `marked`, `deleted`, ...; None for MARKET_DATA."""
        event = self.payload.get("event")
        return event if isinstance(event, str) else None

    @property
    def key(self) -> Any:
        """What identifies the object: its `id`, or the symbol of a market tick."""
        return object_key(self.payload)

    @property
    def version(self) -> int | None:
        version = self.payload.get("version")
        return version if isinstance(version, int) else None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One page of a topic's state, fenced at `seq`: everything up to `seq` is in it (7.5)."""

    topic: str
    seq: int
    epoch: str
    timestamp: str
    items: list[dict[str, Any]]
    last: bool


@dataclass(frozen=True, slots=True)
class Presence:
    """A user's first connection subscribed to the topic (`join`) or their last one left."""

    topic: str
    event: str
    user_id: int
    username: str
    timestamp: str


# --- what happened to the connection and the subscriptions ----------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    """A connection authenticated; `reconnected` after the first one. Topics are being resumed."""

    user_id: int
    username: str
    connection_id: str
    expires_at: datetime
    encoding: str
    reconnected: bool


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The connection closed (`code` None: it never opened, or no close frame came)."""

    code: int | None
    reason: str
    will_reconnect: bool
    delay: float


@dataclass(frozen=True, slots=True)
class Recovered:
    """A resume was answered with exactly the missed messages; they follow, from `since` on."""

    topic: str
    since: Position
    head: Position


@dataclass(frozen=True, slots=True)
class Reset:
    """A resume could not be answered (`expired`, `epoch`, `unavailable`): the topic's state
    must be reloaded. With `snapshot` it follows as Snapshot events; otherwise reload over REST.
    """

    topic: str
    reason: str
    position: Position
    snapshot: bool


@dataclass(frozen=True, slots=True)
class Revoked:
    """The topic is no longer held: the server revoked it, or refused it on a resubscription."""

    topic: str
    reason: str


@dataclass(frozen=True, slots=True)
class ErrorNotice:
    """A server ERROR that answers no request of this client (the notice before a 4401 close,
    say), or a failed in-band token refresh (`code` `refresh`)."""

    code: str
    message: str


Event = (
    Update
    | Snapshot
    | Presence
    | Connected
    | Disconnected
    | Recovered
    | Reset
    | Revoked
    | ErrorNotice
)


# --- replies ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rejection:
    """A topic the server did not subscribe, and why (section 5.3)."""

    topic: Any
    reason: str
    message: str | None = None


@dataclass(frozen=True, slots=True)
class SubscribeReply:
    """The server's answer to a subscribe request (section 4.2)."""

    topics: list[str]
    rejected: list[Rejection]
    positions: dict[str, Position] = field(default_factory=dict)
    recovered: list[str] = field(default_factory=list)
    reset: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_wire(cls, payload: dict[str, Any]) -> SubscribeReply:
        return cls(
            topics=list(payload.get("topics", [])),
            rejected=[
                Rejection(item.get("topic"), str(item.get("reason")), item.get("message"))
                for item in payload.get("rejected", [])
            ],
            positions={
                topic: Position.from_wire(value)
                for topic, value in (payload.get("positions") or {}).items()
            },
            recovered=list(payload.get("recovered", [])),
            reset={item["topic"]: str(item["reason"]) for item in payload.get("reset", [])},
        )


@dataclass(frozen=True, slots=True)
class Member:
    """A user present on a topic (section 4.7)."""

    user_id: int
    username: str
    connections: int
    since: str


def object_key(item: dict[str, Any]) -> Any:
    """The identity of an order, position or strategy (`id`), or of a tick (`symbol`)."""
    return item["id"] if "id" in item else item.get("symbol")
