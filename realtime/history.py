"""Topic history: where every update gets its seq and epoch, and where missed ones are read back.

CONTRACT section 9. Each topic has a head (the seq of its latest message), an epoch (the name of
one unbroken history) and its recent messages. `append` assigns the next seq of every topic of
one update in one atomic step, stores the encoded messages and returns the positions; the
publisher then sends the same text through the channel layer. Because assignment and storage
are one step, anything a hub missed or received out of order can be read back by seq.

Commit order per object: an update carries its object's version (one more per committed save,
and writers hold the row's lock, so versions follow commit order). `append` refuses a version
whose predecessor was not appended yet ("wait"): two processes' after-commit callbacks may race,
and the later version must not take the earlier seq. The publisher waits for the predecessor a
bounded time (REORDER_WAIT_SECS) and then appends anyway, counted and logged (the predecessor's
publisher died or lost Redis; its later arrival is refused as stale, also counted and logged).

Two stores: `MemoryHistory` for the in-process channel layer (one process; its epoch is new at
every start) and `RedisHistory` beside the channels_redis layer (shared by every server process
and every publisher: web process, management command, worker). On Redis the epoch is stored in
the topic's meta hash together with the Redis server's run id: a restart, a failover to a
replica or a flush (the meta is gone) all change the epoch, so a client is never told
`recovered` about a history that may have lost its tail.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from realtime import stats
from realtime.conf import realtime_settings
from realtime.protocol import Envelope

logger = logging.getLogger(__name__)


class HistoryUnavailable(Exception):
    """The history store cannot be reached (Redis down): nothing was assigned or read."""


@dataclass(frozen=True, slots=True)
class Position:
    """Where a topic's stream is: the epoch and the seq of a message (0: before the first)."""

    epoch: str
    seq: int

    def as_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "seq": self.seq}


@dataclass(slots=True)
class Appended:
    """What `append` did: `positions[i]` for `topics[i]`, or nothing (a stale version)."""

    positions: list[Position] = field(default_factory=list)
    stale: bool = False  # the version was older than one already appended: nothing stored
    duplicate: bool = False  # this very version was appended already (a retry): nothing stored
    waiting: bool = False  # the predecessor version is not appended yet: nothing stored


@dataclass(slots=True)
class Read:
    """A topic's messages after some seq, as far as the history holds them."""

    epoch: str
    head: int
    # (seq, text) for seqs after the asked one, ascending; may start later than asked (trimmed)
    entries: list[tuple[int, str]]
    # the messages from the asked seq on are complete: none trimmed, none older than the TTL
    complete: bool


def new_epoch() -> str:
    """A fresh epoch: 8 URL-safe characters (printable in JSON without escaping)."""
    return secrets.token_urlsafe(6)


def _version_key(key: str) -> str:
    return f"v:{key}"


# Seconds an object's last appended version is remembered for the version gate. The gate only
# has to outlive the race between two publishers of consecutive versions (milliseconds; at most
# REORDER_WAIT_SECS), and forgetting soon means a database restored from a backup (versions go
# back) is refused as stale for minutes at most, not for days.
VERSION_TTL_SECS = 300


class MemoryHistory:
    """History for the in-process channel layer: one process, kept in memory.

    Thread-safe (publishers call from request threads). One epoch for the process's lifetime:
    a restart loses the history, so it names a new one.
    """

    def __init__(self, epoch: str | None = None) -> None:
        self.epoch = epoch or new_epoch()
        self._lock = threading.Lock()
        self._heads: dict[str, int] = {}
        self._messages: dict[str, collections.deque[tuple[int, float, str]]] = {}
        self._versions: collections.OrderedDict[str, tuple[int, float]] = collections.OrderedDict()

    def reset(self, epoch: str | None = None) -> None:
        """Forget everything and name a new epoch (tests; an operator's reset)."""
        with self._lock:
            self.epoch = epoch or new_epoch()
            self._heads.clear()
            self._messages.clear()
            self._versions.clear()

    async def append(
        self,
        topics: Sequence[str],
        envelopes: Sequence[Envelope],
        *,
        key: str | None = None,
        version: int | None = None,
        force: bool = False,
    ) -> Appended:
        return self.append_now(topics, envelopes, key=key, version=version, force=force)

    def append_now(
        self,
        topics: Sequence[str],
        envelopes: Sequence[Envelope],
        *,
        key: str | None = None,
        version: int | None = None,
        force: bool = False,
    ) -> Appended:
        size = realtime_settings.HISTORY_SIZE
        now = time.time()
        with self._lock:
            if key is not None and version is not None:
                while self._versions:  # forget what is older than the gate needs
                    oldest = next(iter(self._versions.values()))
                    if oldest[1] >= now - VERSION_TTL_SECS:
                        break
                    self._versions.popitem(last=False)
                known = self._versions.get(key)
                last = known[0] if known is not None else None
                if last is not None and version == last:
                    return Appended(duplicate=True)
                if last is not None and version < last:
                    return Appended(stale=True)
                if last is not None and version > last + 1 and not force:
                    return Appended(waiting=True)
                self._versions[key] = (version, now)
                self._versions.move_to_end(key)
            result = Appended()
            for topic, envelope in zip(topics, envelopes, strict=True):
                seq = self._heads.get(topic, 0) + 1
                self._heads[topic] = seq
                messages = self._messages.get(topic)
                if messages is None or messages.maxlen != size:
                    messages = self._messages[topic] = collections.deque(messages or (), size)
                messages.append((seq, now, envelope.text(seq, self.epoch)))
                result.positions.append(Position(self.epoch, seq))
            return result

    async def head(self, topic: str) -> Position:
        with self._lock:
            return Position(self.epoch, self._heads.get(topic, 0))

    async def read(self, topic: str, after: int) -> Read:
        return self.read_now(topic, after)

    def read_now(self, topic: str, after: int) -> Read:
        oldest_allowed = time.time() - realtime_settings.HISTORY_TTL_SECS
        with self._lock:
            head = self._heads.get(topic, 0)
            messages = self._messages.get(topic, ())
            entries = [(seq, text) for seq, _, text in messages if seq > after]
            times = [at for seq, at, _ in messages if seq > after]
        complete = after >= head or (
            bool(entries) and entries[0][0] == after + 1 and times[0] >= oldest_allowed
        )
        return Read(self.epoch, head, entries, complete)


# --- Redis -----------------------------------------------------------------------------------

# The epoch of a topic: minted when its meta is missing (never written, expired, flushed) or
# was written under another Redis server (restart, failover). Minting starts the seq at 0 and
# drops the stream. ARGV[1] = a fresh epoch to use if needed, ARGV[2] = meta TTL (s).
_EPOCH_LUA = """
local function current_run()
  return string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
end
local function epoch_of(meta, stream, candidate, meta_ttl, run)
  local stored = redis.call('HMGET', meta, 'e', 'r')
  if stored[1] and stored[2] == run then
    return stored[1]
  end
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', candidate, 'r', run, 's', 0)
  redis.call('EXPIRE', meta, meta_ttl)
  return candidate
end
"""

# KEYS: version key, then (meta, stream) per topic.
# ARGV: candidate epoch, meta TTL, version (or ''), force (0/1), size, stream TTL, now (ms),
#       version TTL, then (head, tail) per topic.
# Returns {'ok', epoch1, seq1, epoch2, seq2, ...} | {'duplicate'} | {'stale'} | {'wait'}.
_APPEND_LUA = (
    _EPOCH_LUA
    + """
local candidate, meta_ttl = ARGV[1], tonumber(ARGV[2])
local version, force = ARGV[3], ARGV[4] == '1'
local size, ttl, now = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local version_ttl = tonumber(ARGV[8])
if version ~= '' then
  local last = tonumber(redis.call('GET', KEYS[1]))
  local v = tonumber(version)
  if last and v == last then return {'duplicate'} end
  if last and v < last then return {'stale'} end
  if last and v > last + 1 and not force then return {'wait'} end
  redis.call('SET', KEYS[1], version, 'EX', version_ttl)
end
local run = current_run()
local result = {'ok'}
local topics = (#KEYS - 1) / 2
for i = 1, topics do
  local meta, stream = KEYS[2 * i], KEYS[2 * i + 1]
  local epoch = epoch_of(meta, stream, candidate, meta_ttl, run)
  local seq = redis.call('HINCRBY', meta, 's', 1)
  redis.call('EXPIRE', meta, meta_ttl)
  local text = ARGV[7 + 2 * i] .. seq .. ',"epoch":"' .. epoch .. '"' .. ARGV[8 + 2 * i]
  redis.call('XADD', stream, 'MAXLEN', '~', size, '0-' .. seq, 't', text, 'ms', now)
  redis.call('EXPIRE', stream, ttl)
  result[#result + 1] = epoch
  result[#result + 1] = seq
end
return result
"""
)

# KEYS: meta, stream. ARGV: candidate epoch, meta TTL, after (seq).
# Returns {epoch, head, seq1, ms1, text1, seq2, ms2, text2, ...} for seqs after ARGV[3].
_READ_LUA = (
    _EPOCH_LUA
    + """
local epoch = epoch_of(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]), current_run())
local head = tonumber(redis.call('HGET', KEYS[1], 's'))
local after = tonumber(ARGV[3])
local result = {epoch, head}
if after < head then
  local entries = redis.call('XRANGE', KEYS[2], '0-' .. (after + 1), '0-' .. head)
  for _, entry in ipairs(entries) do
    local id, fields = entry[1], entry[2]
    result[#result + 1] = tonumber(string.sub(id, 3))
    local values = {}
    for j = 1, #fields, 2 do values[fields[j]] = fields[j + 1] end
    result[#result + 1] = values['ms']
    result[#result + 1] = values['t']
  end
end
return result
"""
)


class _Script:
    """A Lua script run by SHA, loaded into a (restarted) Redis on demand."""

    def __init__(self, source: str) -> None:
        import hashlib

        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - Redis's script id

    async def __call__(self, client: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        from redis.exceptions import NoScriptError

        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)


_append_script = _Script(_APPEND_LUA)
_read_script = _Script(_READ_LUA)

# History commands in flight at once per event loop, for reads (resumes, repairs, heads) and
# for appends (publishes) apart. The history uses the channel layer's connection pool
# (redis-py's: 100 connections per loop), which raises MaxConnectionsError instead of waiting
# once all are taken. A reconnect storm resumes hundreds of subscriptions at once on the
# surviving process, each reading the history: unbounded, they took every connection, so
# resumes came back `reset: unavailable`, publishes failed, and the layer's own receive failed
# too (the hub then thought the layer lost and closed its subscribers). Bounded, the rest wait
# their turn and the layer keeps most of its pool; publishes have their own bound, so they never
# queue behind a storm of resume reads.
MAX_READS_IN_FLIGHT = 16
MAX_APPENDS_IN_FLIGHT = 8


class InFlightBound:
    """At most `size` calls in flight at once per event loop (a semaphore is bound to its loop).

    `async with bound():` around each use of the layer's pool by this module's own commands,
    so that a burst of them waits its turn rather than taking every connection of the pool.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]
        self._by_loop = weakref.WeakKeyDictionary()

    def __call__(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        gate = self._by_loop.get(loop)
        if gate is None:
            gate = self._by_loop[loop] = asyncio.Semaphore(self.size)
        return gate


class RedisHistory:
    """History in the Redis of a channels_redis layer (its first host), under its key prefix.

    Keys: `{prefix}rt:h:{topic}:m` (hash: e = epoch, r = Redis run id, s = head seq),
    `{prefix}rt:h:{topic}:s` (stream, ids `0-<seq>`, fields t = text, ms = publish time) and
    `{prefix}rt:v:{object}` (the last appended version of an object).
    """

    def __init__(self, connection: Any, prefix: str) -> None:
        self._connection = connection  # layer.connection(index) -> redis.asyncio.Redis, per loop
        self.prefix = f"{prefix}rt:"
        self._reads = InFlightBound(MAX_READS_IN_FLIGHT)
        self._appends = InFlightBound(MAX_APPENDS_IN_FLIGHT)

    def _gate(self, *, append: bool) -> asyncio.Semaphore:
        """This event loop's bound on reads or appends in flight (MAX_*_IN_FLIGHT)."""
        return self._appends() if append else self._reads()

    def _keys(self, topic: str) -> tuple[str, str]:
        base = f"{self.prefix}h:{topic}"
        return f"{base}:m", f"{base}:s"

    @staticmethod
    def _meta_ttl() -> int:
        # The meta outlives the messages: a topic quiet for longer than the TTL keeps its epoch
        # and head, so a client that saw its last message still resumes (with nothing missed).
        return int(max(realtime_settings.HISTORY_TTL_SECS * 7, 86400))

    async def _run(self, script: _Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        async with self._gate(append=script is _append_script):
            try:
                return await script(self._connection(0), keys, args)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise HistoryUnavailable(repr(exc)) from exc

    async def append(
        self,
        topics: Sequence[str],
        envelopes: Sequence[Envelope],
        *,
        key: str | None = None,
        version: int | None = None,
        force: bool = False,
    ) -> Appended:
        keys = [f"{self.prefix}{_version_key(key)}" if key is not None else f"{self.prefix}v:"]
        args: list[Any] = [
            new_epoch(),
            self._meta_ttl(),
            "" if version is None or key is None else str(version),
            "1" if force else "0",
            realtime_settings.HISTORY_SIZE,
            int(realtime_settings.HISTORY_TTL_SECS),
            int(time.time() * 1000),
            VERSION_TTL_SECS,
        ]
        for topic, envelope in zip(topics, envelopes, strict=True):
            keys.extend(self._keys(topic))
            args.extend((envelope.head, envelope.tail))
        reply = await self._run(_append_script, keys, args)
        status = _text(reply[0])
        if status == "duplicate":
            return Appended(duplicate=True)
        if status == "stale":
            return Appended(stale=True)
        if status == "wait":
            return Appended(waiting=True)
        return Appended(
            positions=[
                Position(_text(reply[i]), int(reply[i + 1])) for i in range(1, len(reply), 2)
            ]
        )

    async def head(self, topic: str) -> Position:
        read = await self._read(topic, after=1 << 62)
        return Position(read.epoch, read.head)

    async def read(self, topic: str, after: int) -> Read:
        return await self._read(topic, after)

    async def _read(self, topic: str, after: int) -> Read:
        args = [new_epoch(), self._meta_ttl(), after]
        reply = await self._run(_read_script, self._keys(topic), args)
        epoch, head = _text(reply[0]), int(reply[1])
        entries: list[tuple[int, str]] = []
        oldest_ms = (time.time() - realtime_settings.HISTORY_TTL_SECS) * 1000
        fresh = True
        for i in range(2, len(reply), 3):
            entries.append((int(reply[i]), _text(reply[i + 2])))
            if len(entries) == 1:
                fresh = float(reply[i + 1]) >= oldest_ms
        complete = after >= head or (bool(entries) and entries[0][0] == after + 1 and fresh)
        return Read(epoch, head, entries, complete)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- which history -------------------------------------------------------------------------

_memory = MemoryHistory()
_warned = False

History = MemoryHistory | RedisHistory


def history_for(layer: Any) -> History:
    """The history beside `layer`: Redis for channels_redis, memory for the in-process layer.

    A layer of another kind gets the in-memory history, with a warning: its seqs are then
    assigned per process, which is right only if one process publishes and serves.
    """
    global _warned
    from channels.layers import InMemoryChannelLayer

    if layer is None or isinstance(layer, InMemoryChannelLayer):
        return _memory
    connection = getattr(layer, "connection", None)
    prefix = getattr(layer, "prefix", None)
    if callable(connection) and isinstance(prefix, str):
        cached = getattr(layer, "_tradingrt_history", None)
        if cached is None:
            cached = RedisHistory(connection, prefix)
            layer._tradingrt_history = cached
        return cached
    if not _warned:
        _warned = True
        logger.warning(
            "Channel layer %s is not one this module keeps history beside; seqs are assigned "
            "per process (correct only with one process publishing and serving)",
            type(layer).__name__,
        )
    return _memory


def get_history() -> History:
    from channels.layers import get_channel_layer

    return history_for(get_channel_layer())


def memory_history() -> MemoryHistory:
    """The process's in-memory history (tests reset it)."""
    return _memory


async def append_in_order(
    history: History,
    topics: Sequence[str],
    envelopes: Sequence[Envelope],
    *,
    key: str | None,
    version: int | None,
) -> Appended:
    """Append, waiting up to REORDER_WAIT_SECS for the object's previous version to be appended.

    The wait is short in practice: the predecessor's transaction committed before this one took
    the row's lock, and its publisher runs right after its commit.
    """
    deadline = time.monotonic() + realtime_settings.REORDER_WAIT_SECS
    pause = 0.002
    while True:
        force = time.monotonic() >= deadline
        appended = await history.append(topics, envelopes, key=key, version=version, force=force)
        if appended.duplicate:  # published before: a retry after a failure past the append
            logger.debug("%s version %s was published already", key, version)
            return appended
        if appended.stale:
            stats.count("stale_versions")
            logger.warning(
                "Not published: %s version %s is older than one already published to %s "
                "(its publisher was delayed past REORDER_WAIT_SECS)",
                key,
                version,
                list(topics),
            )
            return appended
        if not appended.waiting:
            if force and key is not None:
                stats.count("version_gaps")
                logger.warning(
                    "Published %s version %s to %s without its predecessor, which was not "
                    "published within %ss (its publisher died or lost the store)",
                    key,
                    version,
                    list(topics),
                    realtime_settings.REORDER_WAIT_SECS,
                )
            return appended
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.05)
