"""Wire formats shared by the REST API and the WebSocket protocol (CONTRACT: decimals, times)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal


def format_decimal(value: Decimal | None) -> str | None:
    """A decimal as the contract's JSON string: plain notation, no trailing zeros ("101.25")."""
    if value is None:
        return None
    if value == 0:
        return "0"
    text = format(value.normalize(), "f")
    return text


def format_timestamp(value: datetime | None) -> str | None:
    """An aware datetime as ISO-8601 UTC with milliseconds and a Z ("2026-11-25T10:15:30.123Z")."""
    if value is None:
        return None
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def now_timestamp() -> str:
    """The current time in the contract's timestamp format."""
    return format_timestamp(datetime.now(UTC))  # type: ignore[return-value]
