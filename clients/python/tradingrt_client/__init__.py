"""An asyncio client for the trading platform's real-time stream (docs/PROTOCOL.md), for bots."""

from .book import Book
from .client import Client, backoff_delay, refresh_delay
from .errors import (
    AuthenticationFailed,
    ClientClosed,
    ClientError,
    Deactivated,
    ServerError,
    TooManyConnections,
)
from .messages import (
    Connected,
    Disconnected,
    ErrorNotice,
    Event,
    Member,
    Position,
    Presence,
    Recovered,
    Rejection,
    Reset,
    Revoked,
    Snapshot,
    SubscribeReply,
    Update,
)

__all__ = [
    "AuthenticationFailed",
    "Book",
    "Client",
    "ClientClosed",
    "ClientError",
    "Connected",
    "Deactivated",
    "Disconnected",
    "ErrorNotice",
    "Event",
    "Member",
    "Position",
    "Presence",
    "Recovered",
    "Rejection",
    "Reset",
    "Revoked",
    "ServerError",
    "Snapshot",
    "SubscribeReply",
    "TooManyConnections",
    "Update",
    "backoff_delay",
    "refresh_delay",
]
