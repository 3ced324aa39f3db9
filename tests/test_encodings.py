"""The MessagePack encoding (CONTRACT section 12), through real Daphne and uvicorn processes.

Every message type in both encodings, equal once decoded; the subprotocol negotiation of RFC
6455; wrong frame kinds and hostile MessagePack answered with ERROR on a connection that lives.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgpack
import pytest
import websockets
from asgiref.sync import sync_to_async

from realtime.encoding import to_msgpack
from tests.conftest import access_token_for
from tests.live import live_server
from tests.test_delivery import post_order

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MSGPACK = "tradingrt.msgpack"


class Client:
    """A connection speaking one encoding: sends and receives decoded messages."""

    def __init__(self, ws: Any, binary: bool) -> None:
        self.ws = ws
        self.binary = binary

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(msgpack.packb(message) if self.binary else json.dumps(message))

    async def receive(self, *, timeout: float = 5.0, heartbeats: bool = False) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.ws.recv()
                assert isinstance(frame, bytes) is self.binary, frame
                message = msgpack.unpackb(frame) if self.binary else json.loads(frame)
                if heartbeats or message["type"] != "HEARTBEAT" or "id" in message:
                    return message

    async def request(self, type_: str, payload: dict[str, Any], id: str) -> dict[str, Any]:
        await self.send({"type": type_, "id": id, "payload": payload})
        while True:
            message = await self.receive()
            if message.get("id") == id:
                return message


async def connect(server: Any, user: Any, subprotocols: list[str] | None) -> Client:
    token = await sync_to_async(access_token_for)(user)
    ws = await websockets.connect(
        f"{server.ws_url}?token={token}", subprotocols=subprotocols, open_timeout=5
    )
    client = Client(ws, binary=ws.subprotocol == MSGPACK)
    hello = await client.receive()
    assert hello["type"] == "AUTHENTICATION", hello
    return client


@pytest.fixture(params=["daphne", "uvicorn"])
def server(request):
    with live_server(server=request.param) as running:
        yield running


@pytest.mark.parametrize(
    ("offered", "selected"),
    [
        (None, None),
        (["tradingrt.json"], "tradingrt.json"),
        (["tradingrt.msgpack"], "tradingrt.msgpack"),
        (["tradingrt.json", "tradingrt.msgpack"], "tradingrt.msgpack"),
        (["v2.other"], None),  # only unknown ones: none selected (RFC 6455), JSON
    ],
)
async def test_the_client_chooses_the_encoding_by_subprotocol(server, trader, offered, selected):
    client = await connect(server, trader, offered)
    assert client.ws.subprotocol == selected
    assert client.binary is (selected == MSGPACK)
    beat = await client.request("HEARTBEAT", {}, "hb")
    assert beat["type"] == "HEARTBEAT" and "serverTime" in beat["payload"]
    await client.ws.close()


async def test_both_encodings_carry_equal_messages_of_every_type(server, trader, staff):
    topic = f"user:{trader.pk}:orders"
    clients = [await connect(server, trader, [name]) for name in ("tradingrt.json", MSGPACK)]
    replies = []
    for client in clients:
        reply = await client.request(
            "SUBSCRIPTION",
            {"action": "subscribe", "topics": [{"topic": topic, "snapshot": True}, "nope"]},
            "s",
        )
        snapshot = await client.receive()
        replies.append((reply, snapshot))
    (json_reply, json_snapshot), (mp_reply, mp_snapshot) = replies
    assert strip(json_reply) == strip(mp_reply)
    assert json_reply["payload"]["rejected"] == [{"topic": "nope", "reason": "unknown_topic"}]
    assert strip(json_snapshot) == strip(mp_snapshot) and mp_snapshot["type"] == "SNAPSHOT"

    token = await sync_to_async(access_token_for)(trader)
    for _ in range(2):
        await post_order(server, token)
    for _ in range(2):
        one, two = [await client.receive() for client in clients]
        assert one["type"] == "ORDER_UPDATE" and one == two  # decimals, timestamps: strings
        assert isinstance(two["payload"]["price"], str)

    for client in clients:  # errors, listing, re-authentication, presence
        bad = await client.request("SUBSCRIPTION", {"action": "dance"}, "e")
        assert bad["type"] == "ERROR" and bad["payload"]["code"] == "invalid_message"
        listed = await client.request("SUBSCRIPTION", {"action": "list"}, "l")
        assert listed["payload"]["topics"] == [topic]
        token = await sync_to_async(access_token_for)(trader)
        renewed = await client.request("AUTHENTICATION", {"token": token}, "a")
        assert renewed["payload"]["status"] == "authenticated"
        presence = await client.request(
            "SUBSCRIPTION", {"action": "presence", "topics": [topic]}, "p"
        )
        assert presence["payload"]["presence"][topic][0]["userId"] == trader.pk
    for client in clients:
        await client.ws.close()


def strip(message: dict[str, Any]) -> dict[str, Any]:
    """A message without what differs between two connections (timestamps)."""
    return {key: value for key, value in message.items() if key != "timestamp"}


async def test_a_msgpack_client_can_authenticate_with_its_first_message(server, trader):
    ws = await websockets.connect(server.ws_url, subprotocols=[MSGPACK], open_timeout=5)
    client = Client(ws, binary=True)
    token = await sync_to_async(access_token_for)(trader)
    reply = await client.request("AUTHENTICATION", {"token": token}, 1)
    assert reply["payload"]["userId"] == trader.pk and reply["id"] == 1
    await ws.close()


HOSTILE = {
    "truncated map": b"\x83\xa4type",
    "a declared 4 GiB string": b"\xdb\xff\xff\xff\xff",
    "a declared 4 billion entry array": b"\xdd\xff\xff\xff\xff",
    "deep nesting": b"\x91" * 100_000 + b"\xc0",
    "an extension type": msgpack.packb({"type": "HEARTBEAT", "x": msgpack.ExtType(5, b"boom")}),
    "a timestamp": b"\xd6\xff\x00\x00\x00\x01",
    "binary data": msgpack.packb({"type": "HEARTBEAT", "payload": b"\x00"}),
    "integer map keys": b"\x81\x01\x02",  # {1: 2}
    "not a map": msgpack.packb([1, 2, 3]),
    "no type": msgpack.packb({"payload": {}}),
    "a nan": msgpack.packb({"type": "HEARTBEAT", "id": float("nan")}),
}


@pytest.mark.parametrize("name", list(HOSTILE))
async def test_hostile_msgpack_gets_an_error_and_the_connection_lives(live, trader, name):
    client = await connect(live, trader, [MSGPACK])
    await client.ws.send(HOSTILE[name])
    answer = await client.receive()
    assert answer["type"] == "ERROR", answer
    assert answer["payload"]["code"] in ("invalid_message", "message_too_large"), answer
    beat = await client.request("HEARTBEAT", {}, "alive")
    assert beat["type"] == "HEARTBEAT"
    await client.ws.close()


async def test_the_wrong_frame_kind_is_an_error_in_either_encoding(live, trader):
    binary = await connect(live, trader, [MSGPACK])
    await binary.ws.send(json.dumps({"type": "HEARTBEAT"}))  # text under msgpack
    answer = await binary.receive()
    assert (
        answer["payload"]["code"] == "invalid_message"
        and "binary frame" in (answer["payload"]["message"])
    )
    text = await connect(live, trader, None)
    await text.ws.send(msgpack.packb({"type": "HEARTBEAT"}))  # binary under JSON
    answer = await text.receive()
    assert answer["payload"]["code"] == "invalid_message"
    for client in (binary, text):
        assert (await client.request("HEARTBEAT", {}, "ok"))["type"] == "HEARTBEAT"
        await client.ws.close()


async def test_an_oversized_msgpack_frame_is_refused_like_a_json_one(live, trader):
    client = await connect(live, trader, [MSGPACK])
    await client.ws.send(msgpack.packb({"type": "HEARTBEAT", "pad": "x" * 70_000}))
    answer = await client.receive()
    assert answer["payload"]["code"] == "message_too_large"
    await client.ws.close()


def test_a_broadcast_is_transcoded_once_per_process():
    text = json.dumps({"type": "MARKET_DATA", "payload": {"last": "1.5"}})
    first = to_msgpack(text)
    assert to_msgpack(text) is first  # the same str object: the same bytes object
    assert msgpack.unpackb(first) == json.loads(text)
