"""What the hub needs of the channel layer beyond ASGI: noticing that the layer lost its groups.

A channel layer keeps group memberships in its store. When that store loses them (a Redis
restarted, failed over without its data, or flushed), `group_send` to a topic reaches nobody and
nothing fails: every server process would sit waiting for messages that can no longer arrive.
`LayerProbe` tells the hub when that happened, by two checks per call:

- the identity of each Redis host (its `run_id`, new at every start of a Redis server);
- whether this process's channel is still a member of a group it joined (a flush keeps the
  run id but empties the store).

It reads channels_redis's connection pool and group-key format, which are not public API; both
are looked up once, and a layer that does not have them (the in-process layer, another backend,
a renamed internal) gets no probe: `probe_for` returns None and says so once at WARNING, and the
hub relies on failed receives alone.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


class LayerProbe:
    """Checks one Redis channel layer for lost state; `lost()` returns a reason or None."""

    def __init__(self, layer: Any, connection: Any, group_key: Any, hosts: int) -> None:
        self.layer = layer
        self._connection = connection  # layer.connection(index) -> redis.asyncio.Redis
        self._group_key = group_key  # layer._group_key(group) -> bytes
        self._hosts = hosts
        self._run_ids: list[str] | None = None

    async def run_ids(self) -> list[str]:
        ids = []
        for index in range(self._hosts):
            info = await self._connection(index).info("server")
            ids.append(str(info.get("run_id", "")))
        return ids

    async def remember(self) -> None:
        """Take the current identities as the ones this process's groups live in."""
        self._run_ids = await self.run_ids()

    async def lost(self, group: str, channel: str) -> str | None:
        """Why the layer's state is gone ('restarted', 'flushed'), or None while it is intact.

        Raises what the store raises when it cannot be reached.
        """
        run_ids = await self.run_ids()
        if self._run_ids is not None and run_ids != self._run_ids:
            self._run_ids = run_ids
            return "the channel layer's Redis restarted (new run id)"
        self._run_ids = run_ids
        key = self._group_key(group)
        index = self.layer.consistent_hash(group)
        if await self._connection(index).zscore(key, channel) is None:
            return "the channel layer lost this process's group membership (flushed or expired)"
        return None


_warned = False


def probe_for(layer: Any) -> LayerProbe | None:
    """A LayerProbe for a channels_redis layer, or None (in-process or unknown layers)."""
    global _warned
    if layer is None or type(layer).__name__ == "InMemoryChannelLayer":
        return None  # its state lives and dies with this process: nothing can be lost apart
    connection = getattr(layer, "connection", None)
    group_key = getattr(layer, "_group_key", None)
    hosts = getattr(layer, "ring_size", None)
    consistent_hash = getattr(layer, "consistent_hash", None)
    if not (callable(connection) and callable(group_key) and callable(consistent_hash)) or not (
        isinstance(hosts, int) and hosts > 0
    ):
        if not _warned:
            _warned = True
            logger.warning(
                "Channel layer %s has no Redis probe: a layer that loses its groups is noticed "
                "only when a receive fails",
                type(layer).__name__,
            )
        return None
    return LayerProbe(layer, connection, group_key, hosts)
