"""What the client raises."""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Base class of the client's errors."""


class AuthenticationFailed(ClientError):
    """No usable access token: the login was refused, or a token was refused and the client
    has no way to get another. The client stops."""


class Deactivated(ClientError):
    """The server closed the connection with 4403: the user was deactivated. The client stops
    and does not reconnect (docs/PROTOCOL.md section 10)."""


class TooManyConnections(ClientError):
    """The server closed the connection with 4409: the user already has as many connections
    as it allows. The client stops instead of retrying in a loop: close connections the user
    no longer needs, then connect again (docs/PROTOCOL.md section 10)."""


class ClientClosed(ClientError):
    """The client was closed (or stopped) while this was waiting."""


class ServerError(ClientError):
    """The server answered a request with ERROR; `code` is its stable code (section 9)."""

    def __init__(self, code: str, message: str, reply: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.reply = reply
