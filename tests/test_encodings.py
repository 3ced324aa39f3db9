"""The MessagePack encoding (CONTRACT section 12), through real Daphne and uvicorn processes.

Every message type in both encodings, equal once decoded; the subprotocol negotiation of RFC
6455; wrong frame kinds and hostile MessagePack answered with ERROR on a connection that lives.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgpack
import msgspec
import pytest
import websockets
from asgiref.sync import sync_to_async

from realtime.encoding import MAX_DEPTH, UndecodableMessage, from_msgpack, to_msgpack
from tests.conftest import access_token_for
from tests.live import live_server
from tests.rest import api, place
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
    # Presence re-read every 0.2 s (default 1 s): a join reaches watchers without a long wait.
    with live_server(server=request.param, realtime={"PRESENCE_INTERVAL_SECS": 0.2}) as running:
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


async def test_both_encodings_carry_equal_presence_position_and_strategy_updates(
    server, trader, staff
):
    trader_token = await sync_to_async(access_token_for)(trader)
    async with api(server, trader_token) as client:
        strategy = (await client.post("/api/strategies/", json={"name": "both"})).json()
        order = await place(client, strategyId=strategy["id"])
    orders, positions = f"user:{trader.pk}:orders", f"user:{trader.pk}:positions"
    topics = [{"topic": orders, "presence": True}, positions, f"strategy:{strategy['id']}"]
    clients = [await connect(server, trader, [name]) for name in ("tradingrt.json", MSGPACK)]
    for client in clients:
        reply = await client.request("SUBSCRIPTION", {"action": "subscribe", "topics": topics}, "s")
        assert reply["payload"]["rejected"] == [], reply
    await asyncio.sleep(0.6)  # the watchers' first look at who is there (every 0.2 s)

    onlooker = await connect(server, staff, None)  # staff's first connection to the topic: join
    await onlooker.request("SUBSCRIPTION", {"action": "subscribe", "topics": [orders]}, "s")
    async with api(server, trader_token) as client:
        started = await client.post(f"/api/strategies/{strategy['id']}/start/")
        assert started.status_code == 200, started.text
    staff_token = await sync_to_async(access_token_for)(staff)
    async with api(server, staff_token) as gateway:
        filled = await gateway.post(
            f"/api/orders/{order['id']}/fills/", json={"quantity": "4", "price": "99.5"}
        )
        assert filled.status_code == 201, filled.text

    wanted = {"PRESENCE", "ORDER_UPDATE", "POSITION_UPDATE", "STRATEGY_UPDATE"}
    received = []
    for client in clients:  # by type, topic and event: topics need not interleave alike
        seen: dict[tuple[str, str, str], dict[str, Any]] = {}
        while len(seen) < 5:  # join; fill; position opened; strategy started, executed
            message = await client.receive()
            payload = message["payload"]
            seen[(message["type"], message["topic"], payload.get("event"))] = message
        assert {kind for kind, _, _ in seen} == wanted, sorted(seen)
        received.append(seen)
    by_json, by_msgpack = received
    assert by_json == by_msgpack  # decimals, timestamps, ids: the same strings and numbers
    presence = by_msgpack[("PRESENCE", orders, "join")]
    assert presence["payload"]["userId"] == staff.pk and "seq" not in presence
    position = by_msgpack[("POSITION_UPDATE", positions, "opened")]
    assert position["payload"]["averagePrice"] == "99.5"
    for client in [*clients, onlooker]:
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


async def test_an_unknown_type_over_msgpack_gets_the_error_json_gets(live, trader):
    answers = []
    for offered in (None, [MSGPACK]):
        client = await connect(live, trader, offered)
        answers.append(await client.request("DANCE", {}, "d"))
        assert (await client.request("HEARTBEAT", {}, "alive"))["type"] == "HEARTBEAT"
        await client.ws.close()
    as_json, as_msgpack = answers
    assert as_msgpack["type"] == "ERROR" and as_msgpack["payload"]["code"] == "unknown_type"
    assert strip(as_msgpack) == strip(as_json)


async def test_a_msgpack_burst_past_the_rate_limit_is_refused_in_msgpack_echoing_ids(live, trader):
    """The live server allows a burst of 10 then 5 a second, and closes after 3 refusals in a
    row: of 13 frames at once about 10 are answered and the rest refused, each refusal naming
    its frame's id (read from the MessagePack frame that is otherwise dropped)."""
    client = await connect(live, trader, [MSGPACK])
    for n in range(13):
        await client.send({"type": "HEARTBEAT", "id": f"burst-{n}"})
    answers = [await client.receive() for _ in range(13)]  # receive() asserts binary frames
    refused = [a for a in answers if a["type"] == "ERROR"]
    assert 1 <= len(refused) <= 3, answers
    assert {a["payload"]["code"] for a in refused} == {"rate_limited"}
    assert {a["id"] for a in answers} == {f"burst-{n}" for n in range(13)}
    await asyncio.sleep(0.5)  # the bucket refills: the connection was kept
    assert (await client.request("HEARTBEAT", {}, "alive"))["type"] == "HEARTBEAT"
    await client.ws.close()


# Small frames, each refused by the decoder or the checks after it with `invalid_message`; only
# the last is large enough for the size limit to answer first.
# {"type": "HEARTBEAT", "payload": [[...[nil]...]]}: nil MAX_DEPTH + 1 levels down.
TOO_DEEP_FOR_THE_CHECK = b"\x82\xa4type\xa9HEARTBEAT\xa7payload" + b"\x91" * MAX_DEPTH + b"\xc0"
HOSTILE = {
    "truncated map": b"\x83\xa4type",
    "a declared 4 GiB string": b"\xdb\xff\xff\xff\xff",
    "a declared 4 billion entry array": b"\xdd\xff\xff\xff\xff",
    "deep nesting past the decoder's recursion limit": b"\x91" * 1000 + b"\xc0",
    "nesting just past MAX_DEPTH": b"\x91" * (MAX_DEPTH + 1) + b"\xc0",
    "a map holding nesting past MAX_DEPTH": TOO_DEEP_FOR_THE_CHECK,
    "an extension type": msgpack.packb({"type": "HEARTBEAT", "x": msgpack.ExtType(5, b"boom")}),
    "a timestamp": b"\xd6\xff\x00\x00\x00\x01",
    "binary data": msgpack.packb({"type": "HEARTBEAT", "payload": b"\x00"}),
    "integer map keys": b"\x81\x01\x02",  # {1: 2}
    "not a map": msgpack.packb([1, 2, 3]),
    "no type": msgpack.packb({"payload": {}}),
    "a nan": msgpack.packb({"type": "HEARTBEAT", "id": float("nan")}),
    "deep nesting too large to read": b"\x91" * 100_000 + b"\xc0",
}


@pytest.mark.parametrize("name", list(HOSTILE))
async def test_hostile_msgpack_gets_an_error_and_the_connection_lives(live, trader, name):
    client = await connect(live, trader, [MSGPACK])
    await client.ws.send(HOSTILE[name])
    answer = await client.receive()
    assert answer["type"] == "ERROR", answer
    expected = "message_too_large" if name.endswith("too large to read") else "invalid_message"
    assert answer["payload"]["code"] == expected, answer
    beat = await client.request("HEARTBEAT", {}, "alive")
    assert beat["type"] == "HEARTBEAT"
    await client.ws.close()


def test_nesting_is_refused_by_the_depth_check_and_by_the_decoders_recursion_limit():
    at_the_limit = b"\x91" * MAX_DEPTH + b"\xc0"
    assert from_msgpack(at_the_limit) is not None  # MAX_DEPTH arrays deep: allowed
    with pytest.raises(UndecodableMessage, match="nested too deeply"):
        from_msgpack(b"\x91" + at_the_limit)  # the check after decoding
    with pytest.raises(RecursionError):
        msgspec.msgpack.decode(b"\x91" * 1000 + b"\xc0")  # the decoder itself gives up...
    with pytest.raises(UndecodableMessage, match="nested too deeply"):
        from_msgpack(b"\x91" * 1000 + b"\xc0")  # ...and that is caught


async def test_the_wrong_frame_kind_is_an_error_in_either_encoding(server, trader):
    binary = await connect(server, trader, [MSGPACK])
    await binary.ws.send(json.dumps({"type": "HEARTBEAT"}))  # text under msgpack
    answer = await binary.receive()
    assert (
        answer["payload"]["code"] == "invalid_message"
        and "binary frame" in (answer["payload"]["message"])
    )
    text = await connect(server, trader, None)
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
