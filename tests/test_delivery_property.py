"""A property of the delivery guarantees, over random interleavings (hypothesis).

Writers change objects (each change one more version, published through the topic history);
the channel layer delivers, drops or delays each message; a client disconnects, reconnects with
`since` (and `snapshot`, for a reset), sees gaps and epochs change. Whatever happens, once the
dust settles the state the client rebuilt from what it was sent equals the database's.

The client here follows docs/PROTOCOL.md's checklist: skip a seq it holds, resubscribe with
`since` on a gap or a new epoch, take the snapshot on a reset, apply an object's change only if
its version is newer than the one it holds.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realtime.history import MemoryHistory, Position
from realtime.hub import Hub, SubscribeRequest
from realtime.protocol import envelope_for_topic

TOPIC = "orders"
OBJECTS = 3


class Client:
    """A connection as the hub sees it, and the application state built from what it gets."""

    def __init__(self) -> None:
        self.connection_id = "c1"
        self.user_id = 1
        self.topics: set[str] = set()
        self.inbox: list[str] = []
        self.state: dict[int, int] = {}  # object -> version
        self.position: Position | None = None
        self.connected = False
        self.resubscribe_wanted = False

    def push(self, text: str) -> None:
        self.inbox.append(text)

    def push_frame(self, text: str, data: bytes) -> bool:
        self.push(text)
        return True

    def close_with(self, code: int, reason: str = "") -> None: ...

    async def recheck_permissions(self, topics: set[str]) -> list[str]:
        return []

    def process(self) -> None:
        """Apply what arrived, as a client author would (see the module docstring)."""
        inbox, self.inbox = self.inbox, []
        for text in inbox:
            message = json.loads(text)
            position = self.position
            assert position is not None
            if message["epoch"] != position.epoch or message["seq"] > position.seq + 1:
                self.resubscribe_wanted = True  # a gap or a new epoch: ask again
                continue
            if message["seq"] <= position.seq:
                continue  # held already
            self.apply(message["payload"])
            self.position = Position(message["epoch"], message["seq"])

    def apply(self, item: dict[str, Any]) -> None:
        if item["version"] > self.state.get(item["id"], 0):
            self.state[item["id"]] = item["version"]


class World:
    def __init__(self, history_size: int) -> None:
        self.history = MemoryHistory()
        self.history_size = history_size
        self.hub = Hub()
        self.hub.history = self.history
        self.database: dict[int, int] = {}
        self.delayed: list[tuple[str, int, str]] = []
        self.client = Client()

    def write(self, obj: int, fate: str) -> None:
        version = self.database.get(obj, 0) + 1
        self.database[obj] = version
        envelope = envelope_for_topic(
            "ORDER_UPDATE", TOPIC, json.dumps({"id": obj, "version": version}), "t"
        )
        appended = self.history.append_now([TOPIC], [envelope], key=f"order:{obj}", version=version)
        position = appended.positions[0]
        text = envelope.text(position.seq, position.epoch)
        if fate == "deliver":
            self.hub.receive(TOPIC, position.epoch, position.seq, text)
        elif fate == "delay":
            self.delayed.append((position.epoch, position.seq, text))
        # "drop": the channel layer lost it

    def release_delayed(self, rng: random.Random) -> None:
        rng.shuffle(self.delayed)
        for epoch, seq, text in self.delayed:
            self.hub.receive(TOPIC, epoch, seq, text)
        self.delayed.clear()

    async def subscribe(self) -> None:
        client = self.client
        client.topics.add(TOPIC)
        request = SubscribeRequest(TOPIC, since=client.position, snapshot=True)
        [result] = await self.hub.subscribe(client, [request])
        assert not result.failed and result.position is not None
        client.connected = True
        if client.position is not None:
            client.process()  # what was on its way before the reply arrives first
        client.resubscribe_wanted = False
        if result.recovered:
            for text in result.replay:
                client.push(text)
            client.process()
        else:  # reset: the snapshot at the fence, read from the database after the hold began
            for obj, version in self.database.items():
                client.apply({"id": obj, "version": version})
            client.position = result.position
        self.hub.release(TOPIC, client)
        client.process()

    async def disconnect(self) -> None:
        client = self.client
        if client.connected:
            client.process()
            await self.hub.unsubscribe(client, [TOPIC])
            client.topics.discard(TOPIC)
            client.connected = False

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)
        if self.client.connected:
            self.client.process()
            if self.client.resubscribe_wanted:
                await self.subscribe()


operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("write"),
            st.integers(1, OBJECTS),
            st.sampled_from(["deliver", "deliver", "deliver", "drop", "delay"]),
        ),
        st.tuples(st.just("release")),
        st.tuples(st.just("disconnect")),
        st.tuples(st.just("reconnect")),
        st.tuples(st.just("settle")),
        st.tuples(st.just("new_epoch")),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations, history_size=st.integers(2, 12), seed=st.integers(0, 2**16))
def test_the_state_a_client_rebuilds_equals_the_database(ops, history_size, seed):
    asyncio.run(scenario(ops, history_size, seed))


async def scenario(ops: list[tuple], history_size: int, seed: int) -> None:
    from django.test import override_settings

    rng = random.Random(seed)
    with override_settings(REALTIME={"HISTORY_SIZE": history_size}):
        world = World(history_size)
        await world.subscribe()
        for op in ops:
            if op[0] == "write":
                world.write(op[1], op[2])
            elif op[0] == "release":
                world.release_delayed(rng)
            elif op[0] == "disconnect":
                await world.disconnect()
            elif op[0] == "reconnect":
                if not world.client.connected:
                    await world.subscribe()
            elif op[0] == "settle":
                await world.settle()
            elif op[0] == "new_epoch":
                world.history.reset()
        # The dust settles: every delayed message arrives, the client is connected, and a write
        # after everything shows a client any gap it still has (as a heartbeat's position would).
        world.release_delayed(rng)
        if not world.client.connected:
            await world.subscribe()
        world.write(1, "deliver")
        for _ in range(5):
            await world.settle()
        assert world.client.state == world.database
