"""Security events (CONTRACT section 13): recorded where they happen, counted per kind, client IP,
user and minute in memory, and written to the database in the background.

`record()` is cheap and never touches the database: an attack sending a thousand bad frames is
one counter going up, and one row (`SecurityEvent`) with a count of 1,000 a moment later. Each
process writes its counts every SECURITY_EVENT_FLUSH_SECS from a thread of its own, adding them
to the row of their bucket (`flush()`), and deletes rows older than
SECURITY_EVENT_RETENTION_DAYS once an hour. The first event of a bucket is logged at INFO; the
rest of that minute are only counted (a flood does not become a flood of log lines either).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from django.db import IntegrityError, close_old_connections, connection, transaction
from django.db.models import F
from django.utils import timezone

from realtime import metrics
from realtime.conf import realtime_settings

logger = logging.getLogger(__name__)


class EventKind(StrEnum):
    AUTH_FAILED = "auth_failed"  # a token refused at the handshake or in-band
    LOGIN_FAILED = "login_failed"  # POST /api/auth/token/ with a wrong username or password
    LOGIN_THROTTLED = "login_throttled"  # ... over LOGINS_PER_MIN (429)
    ORIGIN_REFUSED = "origin_refused"  # a browser handshake from another site
    FORBIDDEN_SUBSCRIPTION = "forbidden_subscription"  # a topic the user may not hold
    RATE_LIMITED = "rate_limited"  # a frame refused with ERROR rate_limited
    RATE_LIMIT_CLOSED = "rate_limit_closed"  # ... and the connection closed with 4429
    MESSAGE_TOO_LARGE = "message_too_large"  # an inbound frame over MAX_MESSAGE_BYTES
    CONNECTION_LIMIT = "connection_limit"  # a user's connection over the cap (4409)
    HANDSHAKE_RATE_LIMITED = "handshake_rate_limited"  # handshakes over the per-IP rate (403)
    IP_BLOCKED = "ip_blocked"  # an IP blocked, and each attempt refused while it is
    SESSIONS_REVOKED = "sessions_revoked"  # an operator revoked a user's sessions (4410)


# Distinct buckets held in memory at most; past this (an attack from very many addresses or
# names), new buckets lose their IP and username rather than grow the process's memory.
MAX_BUCKETS = 5000
DETAIL_CHARS = 300
USERNAME_CHARS = 150


@dataclass(frozen=True, slots=True)
class Bucket:
    kind: str
    ip: str
    username: str
    minute: datetime


@dataclass(slots=True)
class Tally:
    count: int
    last_at: datetime
    detail: str
    user_id: int | None


class EventRecorder:
    """Counts security events in memory and writes them in the background (see module doc)."""

    # Tests turn the thread off and call flush() themselves, in their own transaction.
    background = True
    clock = staticmethod(time.time)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[Bucket, Tally] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pruned_at = 0.0
        self.overflowed = 0

    def record(
        self,
        kind: EventKind,
        *,
        ip: str = "",
        user_id: int | None = None,
        username: str = "",
        detail: str = "",
        count: int = 1,
    ) -> None:
        """Count `count` events of `kind` (never blocks on the database)."""
        metrics.security_event(kind.value, count)
        now = datetime.fromtimestamp(self.clock(), UTC)
        bucket = Bucket(kind.value, ip[:45], username[:USERNAME_CHARS], _minute(now))
        detail = detail[:DETAIL_CHARS]
        with self._lock:
            tally = self._pending.get(bucket)
            if tally is None and len(self._pending) >= MAX_BUCKETS:
                self.overflowed += count
                bucket = Bucket(kind.value, "", "", bucket.minute)
                user_id = None
                tally = self._pending.get(bucket)
            if tally is not None:
                tally.count += count
                tally.last_at = now
                tally.detail = detail or tally.detail
                return
            self._pending[bucket] = Tally(count, now, detail, user_id)
        logger.info(
            "Security event %s from %s (user %s): %s",
            kind.value,
            ip or "-",
            username or user_id or "-",
            detail or "-",
        )
        self._start()

    def pending(self) -> int:
        """Events counted and not yet written."""
        with self._lock:
            return sum(tally.count for tally in self._pending.values())

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()

    # --- writing -------------------------------------------------------------------------

    def flush(self) -> int:
        """Write what is pending to the database (blocking); how many events it held.

        Counts that cannot be written (the database is down) are put back and tried again.
        """
        with self._lock:
            taken, self._pending = self._pending, {}
        if not taken:
            return 0
        try:
            for bucket, tally in taken.items():
                _add(bucket, tally)
        except Exception:
            with self._lock:
                for bucket, tally in taken.items():
                    current = self._pending.get(bucket)
                    if current is None:
                        self._pending[bucket] = tally
                    else:
                        current.count += tally.count
            raise
        return sum(tally.count for tally in taken.values())

    def prune(self) -> int:
        """Delete events older than SECURITY_EVENT_RETENTION_DAYS; how many rows went."""
        from realtime.models import SecurityEvent

        days = realtime_settings.SECURITY_EVENT_RETENTION_DAYS
        cutoff = timezone.now() - timedelta(days=days)
        deleted, _ = SecurityEvent.objects.filter(minute__lt=cutoff).delete()
        return deleted

    def _start(self) -> None:
        if self._thread is not None or not self.background:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="tradingrt-security-events", daemon=True
                )
                self._thread.start()
                atexit.register(self._flush_at_exit)

    def _run(self) -> None:
        failures = 0
        while True:
            time.sleep(realtime_settings.SECURITY_EVENT_FLUSH_SECS * min(2**failures, 30))
            close_old_connections()
            try:
                self.flush()
                if time.monotonic() - self._pruned_at > 3600:
                    self._pruned_at = time.monotonic()
                    self.prune()
                failures = 0
            except Exception:
                failures += 1
                log = logger.warning if failures == 1 else logger.debug
                log("Could not write security events; keeping them to retry", exc_info=True)
            finally:
                connection.close()  # a pooled connection goes back; SQLite's reopens cheaply

    def _flush_at_exit(self) -> None:
        try:
            self.flush()
        except Exception:
            logger.debug("Security events not written at exit", exc_info=True)


def _minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def _add(bucket: Bucket, tally: Tally) -> None:
    """Add one bucket's count to its row, creating the row if it is the first."""
    from realtime.models import SecurityEvent

    rows = SecurityEvent.objects.filter(
        kind=bucket.kind, ip=bucket.ip, username=bucket.username, minute=bucket.minute
    )
    changes = {"count": F("count") + tally.count, "last_at": tally.last_at}
    if tally.detail:
        changes["detail"] = tally.detail
    if rows.update(**changes):
        return
    try:
        with transaction.atomic():
            SecurityEvent.objects.create(
                kind=bucket.kind,
                ip=bucket.ip,
                username=bucket.username,
                user_id=tally.user_id,
                minute=bucket.minute,
                count=tally.count,
                last_at=tally.last_at,
                detail=tally.detail,
            )
    except IntegrityError:  # another process created it meanwhile
        rows.update(**changes)


recorder = EventRecorder()


def record(
    kind: EventKind,
    *,
    ip: str = "",
    user_id: int | None = None,
    username: str = "",
    detail: str = "",
    count: int = 1,
) -> None:
    """Record a security event (see EventRecorder.record)."""
    recorder.record(kind, ip=ip, user_id=user_id, username=username, detail=detail, count=count)
