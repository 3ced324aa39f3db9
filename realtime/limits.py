"""Abuse limits across server processes (CONTRACT section 13): handshakes per client IP, failed
authentications per IP and the blocks they cause, and open connections per user.

Two stores with one interface: `RedisLimits` in the Redis of the channels_redis layer (under its
key prefix; every check is one Lua script, so concurrent processes cannot both take the last
place), shared by every server process, and `MemoryLimits` for the in-process layer (one
process). A user's connections are held as leases: each process renews its own connections'
every HEARTBEAT_INTERVAL_SECS, and a lease not renewed for DEAD_AFTER_HEARTBEATS intervals (its
process was killed) lapses, so a crash does not lock a user out for good.

The functions at the bottom are what the doors call: `check_handshake`, `authentication_failed`,
`admit_connection` / `release_connection`, and the operator's `ip_unblock`. 0 turns a limit
off. A store that cannot be reached (Redis down) fails open: the connection goes on, and the
failure is logged and counted (realtime.stats `limits_unavailable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from realtime import stats
from realtime.conf import realtime_settings
from realtime.security import EventKind, record

logger = logging.getLogger(__name__)


class Refusal(StrEnum):
    BLOCKED = "blocked"
    RATE = "rate"


@dataclass(frozen=True, slots=True)
class Block:
    ip: str
    until: float  # seconds since the epoch


def lease_secs() -> float:
    """How long a connection's place counts without being renewed by its process."""
    return realtime_settings.HEARTBEAT_INTERVAL_SECS * realtime_settings.DEAD_AFTER_HEARTBEATS


# --- the in-process store ------------------------------------------------------------------


class MemoryLimits:
    """The limits of one process (the in-process channel layer)."""

    clock = staticmethod(time.time)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handshakes: dict[str, tuple[int, int, int]] = {}  # ip -> (minute, this, last)
        self._failures: dict[str, tuple[float, int]] = {}  # ip -> (window ends, count)
        self._blocks: dict[str, float] = {}  # ip -> until
        self._users: dict[int, set[str]] = {}  # user id -> connection ids

    def reset(self) -> None:
        with self._lock:
            self._handshakes.clear()
            self._failures.clear()
            self._blocks.clear()
            self._users.clear()

    async def handshake(self, ip: str, per_minute: int) -> Refusal | None:
        now = self.clock()
        with self._lock:
            until = self._blocks.get(ip)
            if until is not None:
                if until > now:
                    return Refusal.BLOCKED
                del self._blocks[ip]
            if per_minute <= 0:
                return None
            if len(self._handshakes) > 100_000:
                self._forget_old_handshakes(int(now // 60))
            minute, fraction = int(now // 60), (now % 60) / 60
            seen, this, last = self._handshakes.get(ip, (minute, 0, 0))
            if seen != minute:
                this, last = 0, this if seen == minute - 1 else 0
            if last * (1 - fraction) + this >= per_minute:
                self._handshakes[ip] = (minute, this, last)
                return Refusal.RATE
            self._handshakes[ip] = (minute, this + 1, last)
            return None

    def _forget_old_handshakes(self, minute: int) -> None:
        for ip in [ip for ip, (seen, _, _) in self._handshakes.items() if seen < minute - 1]:
            del self._handshakes[ip]

    async def failure(
        self, ip: str, limit: int, window: float, block: float
    ) -> tuple[int, Block | None]:
        now = self.clock()
        with self._lock:
            if self._blocks.get(ip, 0) > now:
                return 0, None
            ends, count = self._failures.get(ip, (now + window, 0))
            if ends <= now:
                ends, count = now + window, 0
            count += 1
            if count > limit:
                self._failures.pop(ip, None)
                self._blocks[ip] = now + block
                return count, Block(ip, now + block)
            if len(self._failures) > 100_000:
                self._failures = {k: v for k, v in self._failures.items() if v[0] > now}
            self._failures[ip] = (ends, count)
            return count, None

    async def blocked_until(self, ip: str) -> float | None:
        with self._lock:
            until = self._blocks.get(ip)
            return until if until is not None and until > self.clock() else None

    async def unblock(self, ip: str) -> bool:
        with self._lock:
            self._failures.pop(ip, None)
            return self._blocks.pop(ip, None) is not None

    async def admit(self, user_id: int, connection_id: str, limit: int) -> bool:
        with self._lock:
            held = self._users.setdefault(user_id, set())
            if connection_id not in held and len(held) >= limit:
                return False
            held.add(connection_id)
            return True

    async def release(self, user_id: int, connection_id: str) -> None:
        with self._lock:
            held = self._users.get(user_id)
            if held is not None:
                held.discard(connection_id)
                if not held:
                    del self._users[user_id]

    async def renew(self, leases: Sequence[tuple[int, str]]) -> None:
        return None  # nothing lapses within one process

    async def user_connections(self, user_id: int) -> int:
        with self._lock:
            return len(self._users.get(user_id, ()))


# --- the shared store --------------------------------------------------------------------------

_HANDSHAKE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'blocked' end
local limit = tonumber(ARGV[1])
if limit <= 0 then return 'ok' end
local this = tonumber(redis.call('GET', KEYS[2]) or '0')
local last = tonumber(redis.call('GET', KEYS[3]) or '0')
if last * (1 - tonumber(ARGV[2])) + this >= limit then return 'rate' end
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], 150)
return 'ok'
"""

_FAILURE_LUA = """
if redis.call('EXISTS', KEYS[2]) == 1 then return {0, 0} end
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if count > tonumber(ARGV[1]) then
  local untilms = tonumber(ARGV[4]) + tonumber(ARGV[3])
  redis.call('SET', KEYS[2], untilms, 'PX', ARGV[3])
  redis.call('ZADD', KEYS[3], untilms, ARGV[5])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[4])
  redis.call('DEL', KEYS[1])
  return {count, untilms}
end
return {count, 0}
"""

_ADMIT_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


# The store's commands in flight at once per event loop. They use the channel layer's connection
# pool (redis-py's: 100 connections per loop), which raises MaxConnectionsError instead of waiting
# once all are taken: unbounded, the handshakes of a reconnect storm (1,000 clients within a
# second) took every connection, so the checks were let through unchecked, the layer's own
# receive and group joins failed (the hub then closed its subscribers with 4503) and resumes read
# no history (`reset: unavailable`). Bounded, they wait their turn (a check is one round trip).
MAX_CALLS_IN_FLIGHT = 16


class RedisLimits:
    """The limits in the Redis of a channels_redis layer (its first host), shared by every
    process. Keys, under the layer's prefix: `rt:sec:hs:{ip}:{minute}` (handshakes),
    `rt:sec:af:{ip}` (failures in the window), `rt:sec:bl:{ip}` (a block, expiring with it),
    `rt:sec:blocks` (sorted set of blocked IPs by expiry) and `rt:sec:uc:{user}` (sorted set of
    the user's connections by lease expiry)."""

    clock = staticmethod(time.time)

    def __init__(self, connection: Any, prefix: str) -> None:
        from realtime.history import InFlightBound, _Script

        self._connection = connection  # layer.connection(index) -> redis.asyncio.Redis, per loop
        self.prefix = f"{prefix}rt:sec:"
        self._handshake = _Script(_HANDSHAKE_LUA)
        self._failure = _Script(_FAILURE_LUA)
        self._admit = _Script(_ADMIT_LUA)
        self._in_flight = InFlightBound(MAX_CALLS_IN_FLIGHT)

    def _redis(self) -> Any:
        return self._connection(0)

    async def handshake(self, ip: str, per_minute: int) -> Refusal | None:
        now = self.clock()
        minute = int(now // 60)
        keys = [
            f"{self.prefix}bl:{ip}",
            f"{self.prefix}hs:{ip}:{minute}",
            f"{self.prefix}hs:{ip}:{minute - 1}",
        ]
        async with self._in_flight():
            reply = await self._handshake(self._redis(), keys, [per_minute, (now % 60) / 60])
        status = reply.decode() if isinstance(reply, bytes) else str(reply)
        return None if status == "ok" else Refusal(status)

    async def failure(
        self, ip: str, limit: int, window: float, block: float
    ) -> tuple[int, Block | None]:
        now_ms = int(self.clock() * 1000)
        keys = [f"{self.prefix}af:{ip}", f"{self.prefix}bl:{ip}", f"{self.prefix}blocks"]
        args = [limit, int(window * 1000), int(block * 1000), now_ms, ip]
        async with self._in_flight():
            count, until = await self._failure(self._redis(), keys, args)
        return int(count), (Block(ip, int(until) / 1000) if int(until) else None)

    async def blocked_until(self, ip: str) -> float | None:
        async with self._in_flight():
            value = await self._redis().get(f"{self.prefix}bl:{ip}")
        return int(value) / 1000 if value is not None else None

    async def unblock(self, ip: str) -> bool:
        redis = self._redis()
        async with self._in_flight():
            removed = await redis.delete(f"{self.prefix}bl:{ip}", f"{self.prefix}af:{ip}")
            await redis.zrem(f"{self.prefix}blocks", ip)
        return bool(removed)

    async def admit(self, user_id: int, connection_id: str, limit: int) -> bool:
        now_ms = int(self.clock() * 1000)
        lease_ms = int(lease_secs() * 1000)
        keys = [f"{self.prefix}uc:{user_id}"]
        args = [limit, connection_id, now_ms, now_ms + lease_ms, lease_ms * 2]
        async with self._in_flight():
            return bool(int(await self._admit(self._redis(), keys, args)))

    async def release(self, user_id: int, connection_id: str) -> None:
        async with self._in_flight():
            await self._redis().zrem(f"{self.prefix}uc:{user_id}", connection_id)

    async def renew(self, leases: Sequence[tuple[int, str]]) -> None:
        if not leases:
            return
        lease_ms = int(lease_secs() * 1000)
        expiry = int(self.clock() * 1000) + lease_ms
        async with self._in_flight(), self._redis().pipeline(transaction=False) as pipe:
            for user_id, connection_id in leases:
                key = f"{self.prefix}uc:{user_id}"
                pipe.zadd(key, {connection_id: expiry}, xx=True)
                pipe.pexpire(key, lease_ms * 2)
            await pipe.execute()

    async def user_connections(self, user_id: int) -> int:
        key = f"{self.prefix}uc:{user_id}"
        redis = self._redis()
        async with self._in_flight():
            await redis.zremrangebyscore(key, "-inf", int(self.clock() * 1000))
            return int(await redis.zcard(key))


Limits = MemoryLimits | RedisLimits
_memory = MemoryLimits()


def limits_for(layer: Any) -> Limits:
    """The store beside `layer`: Redis for channels_redis, this process's memory otherwise."""
    from channels.layers import InMemoryChannelLayer

    if layer is None or isinstance(layer, InMemoryChannelLayer):
        return _memory
    connection = getattr(layer, "connection", None)
    prefix = getattr(layer, "prefix", None)
    if not (callable(connection) and isinstance(prefix, str)):
        return _memory
    cached = getattr(layer, "_tradingrt_limits", None)
    if cached is None:
        cached = RedisLimits(connection, prefix)
        layer._tradingrt_limits = cached
    return cached


def get_limits() -> Limits:
    return limits_for(get_channel_layer())


def memory_limits() -> MemoryLimits:
    """The process's in-memory store (tests reset it)."""
    return _memory


def is_shared() -> bool:
    return isinstance(get_limits(), RedisLimits)


def _unavailable(what: str, exc: BaseException) -> None:
    stats.count("limits_unavailable")
    logger.warning("The limits store could not %s (%r); letting it through", what, exc)


# --- the doors -----------------------------------------------------------------------------


async def check_handshake(ip: str) -> Refusal | None:
    """Why a WebSocket handshake from `ip` is refused (blocked, over the rate), or None.

    Records the refusal (`ip_blocked`, `handshake_rate_limited`)."""
    per_minute = realtime_settings.HANDSHAKES_PER_IP_PER_MIN
    if per_minute <= 0 and realtime_settings.AUTH_FAILURES_PER_IP <= 0:
        return None
    try:
        refusal = await get_limits().handshake(ip, per_minute)
    except Exception as exc:
        _unavailable("check a handshake", exc)
        return None
    if refusal is Refusal.BLOCKED:
        record(EventKind.IP_BLOCKED, ip=ip, detail="handshake refused: the IP is blocked")
    elif refusal is Refusal.RATE:
        record(
            EventKind.HANDSHAKE_RATE_LIMITED,
            ip=ip,
            detail=f"over {per_minute} handshakes a minute",
        )
    return refusal


async def blocked_until(ip: str) -> float | None:
    """When the block of `ip` ends, if it is blocked (seconds since the epoch)."""
    if realtime_settings.AUTH_FAILURES_PER_IP <= 0:
        return None
    try:
        return await get_limits().blocked_until(ip)
    except Exception as exc:
        _unavailable("check a block", exc)
        return None


async def authentication_failed(
    ip: str,
    *,
    kind: EventKind = EventKind.AUTH_FAILED,
    detail: str,
    user_id: int | None = None,
    username: str = "",
) -> Block | None:
    """Record a failed authentication from `ip`; block the IP if it is one too many.

    Returns the new block, if this failure caused one."""
    record(kind, ip=ip, user_id=user_id, username=username, detail=detail)
    limit = realtime_settings.AUTH_FAILURES_PER_IP
    if limit <= 0 or not ip:
        return None
    window = realtime_settings.AUTH_FAILURE_WINDOW_SECS
    block_secs = realtime_settings.IP_BLOCK_SECS
    try:
        count, block = await get_limits().failure(ip, limit, window, block_secs)
    except Exception as exc:
        _unavailable("count a failed authentication", exc)
        return None
    if block is None:
        return None
    reason = f"{count} failed authentications within {window:g} s"
    logger.warning("Blocking %s for %g s: %s", ip, block_secs, reason)
    record(EventKind.IP_BLOCKED, ip=ip, detail=f"blocked for {block_secs:g} s: {reason}")
    try:
        await database_sync_to_async(_ip_block_store)(block=block, failures=count, reason=reason)
    except Exception:
        logger.exception("Could not record the block of %s", ip)
    return block


authentication_failed_sync = async_to_sync(authentication_failed)


def _ip_block_store(*, block: Block, failures: int, reason: str) -> None:
    from realtime.models import IPBlock

    now = datetime.now(UTC)
    IPBlock.objects.create(
        ip=block.ip,
        blocked_at=now,
        expires_at=datetime.fromtimestamp(block.until, UTC),
        failures=failures,
        reason=reason[:200],
    )


def ip_unblock(*, ip: str, by: str) -> int:
    """Lift the block of `ip` in the limits store and in its records; how many records.

    Blocking: call from a thread (admin action, management command)."""
    from realtime.models import IPBlock

    async_to_sync(_unblock_store)(ip)
    now = datetime.now(UTC)
    lifted = IPBlock.objects.filter(ip=ip, lifted_at__isnull=True, expires_at__gt=now).update(
        lifted_at=now, lifted_by=by[:150]
    )
    logger.warning("Unblocked %s (by %s)", ip, by)
    return lifted


async def _unblock_store(ip: str) -> None:
    await get_limits().unblock(ip)


# --- connections per user ----------------------------------------------------------------------


class ConnectionLeases:
    """This event loop's admitted connections, renewed in the shared store while they live."""

    def __init__(self) -> None:
        self.held: dict[str, int] = {}  # connection id -> user id
        self._task: asyncio.Task[None] | None = None

    def start(self, limits: Limits) -> None:
        if self._task is None and isinstance(limits, RedisLimits):
            self._task = asyncio.get_running_loop().create_task(self._renew_loop())

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(realtime_settings.HEARTBEAT_INTERVAL_SECS)
            leases = [(user_id, connection_id) for connection_id, user_id in self.held.items()]
            try:
                await get_limits().renew(leases)
            except Exception as exc:
                _unavailable("renew the connection leases", exc)


_leases: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ConnectionLeases] = (
    weakref.WeakKeyDictionary()
)


def _loop_leases() -> ConnectionLeases:
    loop = asyncio.get_running_loop()
    leases = _leases.get(loop)
    if leases is None:
        leases = _leases[loop] = ConnectionLeases()
    return leases


async def admit_connection(connection_id: str, user_id: int) -> bool:
    """Take one of the user's MAX_CONNECTIONS_PER_USER places for this connection; False when
    they are all taken (the caller closes with 4409, and the refusal is recorded by it)."""
    limit = realtime_settings.MAX_CONNECTIONS_PER_USER
    if limit <= 0:
        return True
    limits = get_limits()
    try:
        admitted = await limits.admit(user_id, connection_id, limit)
    except Exception as exc:
        _unavailable("count a user's connections", exc)
        return True
    if admitted:
        leases = _loop_leases()
        leases.held[connection_id] = user_id
        leases.start(limits)
    return admitted


async def release_connection(connection_id: str) -> None:
    """Give back the place of a connection admitted by `admit_connection` (idempotent)."""
    leases = _leases.get(asyncio.get_running_loop())
    user_id = leases.held.pop(connection_id, None) if leases is not None else None
    if user_id is None:
        return
    with contextlib.suppress(Exception):
        await get_limits().release(user_id, connection_id)


def active_block_rows() -> Any:
    """The records of the blocks in force now, newest first."""
    from realtime.models import IPBlock

    now = datetime.now(UTC)
    return IPBlock.objects.filter(lifted_at__isnull=True, expires_at__gt=now).order_by(
        "-blocked_at"
    )


def remaining(until: float) -> int:
    """Whole seconds left until `until` (at least 1), for a Retry-After."""
    return max(1, int(until - time.time() + 0.999))
