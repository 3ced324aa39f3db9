"""Log records with their connection context, tokens redacted, as plain text or JSON lines.

`log_context` is set by the real-time module for the task of one WebSocket connection (its id,
user id and client IP), so every line logged on that connection's behalf says whose it is;
`ContextFilter` copies it onto each record and makes the message safe to print: access tokens
are replaced by `[token]`, and control characters (a newline in a client's Origin, say) are
escaped so no client can forge a log line. `DJANGO_LOG_FORMAT=json` selects `JsonFormatter`.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

# connection_id, user_id, client_ip of the connection whose task is running (empty: none).
log_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "tradingrt_log_context", default=None
)

CONTEXT_FIELDS = ("connection_id", "user_id", "client_ip")

# A JWT (three base64url parts, the first two JSON objects: "eyJ..."), a `token=` query
# parameter, or an `Authorization: Bearer` credential.
_SECRETS = re.compile(
    r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
    r"|(?<=token=)[^&\s\"']+"
    r"|(?<=[Bb]earer )[^\s\"']+"
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\n]")


def redact(text: str) -> str:
    """`text` with tokens replaced by `[token]` and control characters escaped."""
    text = _SECRETS.sub("[token]", text)
    if _CONTROL.search(text):
        text = _CONTROL.sub(lambda match: repr(match.group())[1:-1], text)
    return text


def bind(**values: Any) -> None:
    """Add to the current task's log context (a new dict: other tasks keep theirs)."""
    log_context.set({**(log_context.get() or {}), **values})


class ContextFilter(logging.Filter):
    """Puts the connection context on every record and redacts its message."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = log_context.get() or {}
        for name in CONTEXT_FIELDS:
            if not hasattr(record, name):
                setattr(record, name, context.get(name))
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the formatter to report
            return True
        safe = redact(message)
        if safe != message or record.args:
            record.msg, record.args = safe, None
        return True


def _context_suffix(record: logging.LogRecord) -> str:
    parts = [
        f"{name.split('_')[0]}={value}"
        for name in CONTEXT_FIELDS
        if (value := getattr(record, name, None)) not in (None, "")
    ]
    return f" [{' '.join(parts)}]" if parts else ""


class PlainFormatter(logging.Formatter):
    """`time LEVEL logger: message [connection=... user=... client=...]`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        suffix = _context_suffix(record)
        if not suffix:
            return text
        first, newline, rest = text.partition("\n")  # a traceback stays below its line
        return f"{first}{suffix}{newline}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the context, any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value not in (None, ""):
                entry[name] = value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)
