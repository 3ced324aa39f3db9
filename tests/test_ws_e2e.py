"""End to end: a real Daphne, real sockets, the `websockets` client library (CONTRACT 2-5, 7)."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import timedelta

import jwt
import pytest
import websockets
from asgiref.sync import sync_to_async
from rest_framework_simplejwt.tokens import AccessToken

from tests import wsclient
from tests.wsclient import connect, receive, receive_type, request, send, subscribe

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _refused(exc_info) -> int:
    return exc_info.value.response.status_code


# --- handshake ------------------------------------------------------------------------------


async def test_query_token_authenticates_and_first_message_says_who(live, trader, trader_token):
    async with await connect(live.ws_url, token=trader_token) as ws:
        message = await receive_type(ws, "AUTHENTICATION")
    payload = message["payload"]
    assert payload["status"] == "authenticated"
    assert payload["userId"] == trader.pk
    assert payload["username"] == "alice"
    assert payload["connectionId"]
    assert payload["expiresAt"].endswith("Z")
    assert message["timestamp"].endswith("Z") and len(message["timestamp"]) == 24


async def test_bearer_header_authenticates(live, trader, trader_token):
    headers = {"Authorization": f"Bearer {trader_token}"}
    async with await connect(live.ws_url, additional_headers=headers) as ws:
        message = await receive_type(ws, "AUTHENTICATION")
    assert message["payload"]["userId"] == trader.pk


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda user: "not-a-jwt", id="garbage"),
        pytest.param(lambda user: str(_token(user, lifetime=timedelta(seconds=-5))), id="expired"),
        pytest.param(
            lambda user: _signed_with(user, "another-secret-key-of-32-bytes!!"), id="wrong-key"
        ),
        pytest.param(lambda user: _alg_none(user), id="alg-none"),
        pytest.param(lambda user: _refresh_token(user), id="refresh-not-access"),
    ],
)
async def test_bad_token_never_connects(live, trader, make_token):
    token = make_token(trader)
    with pytest.raises(websockets.InvalidStatus) as refused:
        await connect(live.ws_url, token=token)
    assert _refused(refused) == 403


async def test_inactive_users_token_never_connects(live, trader, trader_token):
    trader.is_active = False
    await sync_to_async(trader.save)()
    with pytest.raises(websockets.InvalidStatus) as refused:
        await connect(live.ws_url, token=trader_token)
    assert _refused(refused) == 403


async def test_token_of_deleted_user_never_connects(live, trader, trader_token):
    await sync_to_async(trader.delete)()
    with pytest.raises(websockets.InvalidStatus) as refused:
        await connect(live.ws_url, token=trader_token)
    assert _refused(refused) == 403


async def test_browser_from_another_site_is_refused(live, trader_token):
    with pytest.raises(websockets.InvalidStatus) as refused:
        await connect(live.ws_url, token=trader_token, origin="https://evil.example")
    assert _refused(refused) == 403


async def test_browser_from_an_allowed_host_connects(live, trader_token):
    origin = f"http://127.0.0.1:{live.port}"
    async with await connect(live.ws_url, token=trader_token, origin=origin) as ws:
        assert (await receive(ws))["type"] == "AUTHENTICATION"


async def test_an_unknown_path_is_refused_not_failed(live, trader_token):
    with pytest.raises(websockets.InvalidStatus) as refused:
        await connect(live.ws_url.replace("/ws", "/nope"), token=trader_token)
    assert _refused(refused) == 403


async def test_trailing_slash_path_is_served_too(live, trader_token):
    async with await connect(live.ws_url + "/", token=trader_token) as ws:
        assert (await receive(ws))["type"] == "AUTHENTICATION"


# --- first-message authentication ------------------------------------------------------------


async def test_first_message_authentication(live, trader, trader_token):
    async with await connect(live.ws_url) as ws:
        reply = await request(ws, "AUTHENTICATION", {"token": trader_token}, id=7)
        assert reply["type"] == "AUTHENTICATION"
        assert reply["id"] == 7
        assert reply["payload"]["status"] == "authenticated"
        assert reply["payload"]["userId"] == trader.pk
        ack = await subscribe(ws, f"user:{trader.pk}:orders")
        assert ack["topics"] == [f"user:{trader.pk}:orders"]


async def test_anything_but_authentication_before_it_is_refused(live, trader_token):
    async with await connect(live.ws_url) as ws:
        reply = await request(ws, "SUBSCRIPTION", {"action": "subscribe", "topics": ["orders"]})
        assert reply["type"] == "ERROR"
        assert reply["payload"]["code"] == "unauthenticated"
        heartbeat = await request(ws, "HEARTBEAT", {}, id="hb")
        assert heartbeat["type"] == "HEARTBEAT"
        ok = await request(ws, "AUTHENTICATION", {"token": trader_token}, id="a")
        assert ok["payload"]["status"] == "authenticated"


@pytest.mark.parametrize("message_type", ["SUBSCRIPTION", "ORDER_UPDATE", "PING"])
async def test_any_other_type_before_authentication_gets_unauthenticated(live, message_type):
    async with await connect(live.ws_url) as ws:
        reply = await request(ws, message_type, {"action": "list"}, id=1.5)
    assert reply["type"] == "ERROR"
    assert reply["payload"]["code"] == "unauthenticated"
    assert reply["id"] == 1.5


async def test_the_first_message_is_authentication_even_with_fast_heartbeats(trader_token):
    from tests.live import live_server

    with live_server(realtime={"HEARTBEAT_INTERVAL_SECS": 0.05}) as server:
        for _ in range(5):
            async with await connect(server.ws_url, token=trader_token) as ws:
                first = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert first["type"] == "AUTHENTICATION"


async def test_bad_token_in_first_message_is_an_error_and_the_connection_waits(live, trader_token):
    async with await connect(live.ws_url) as ws:
        reply = await request(ws, "AUTHENTICATION", {"token": "forged"}, id="a")
        assert reply["type"] == "ERROR"
        assert reply["payload"]["code"] == "unauthenticated"
        ok = await request(ws, "AUTHENTICATION", {"token": trader_token}, id="b")
        assert ok["payload"]["status"] == "authenticated"


async def test_no_authentication_in_time_closes_with_4401(live):
    async with await connect(live.ws_url) as ws:
        # The live server allows 1.5 s (REALTIME AUTH_TIMEOUT_SECS).
        error = await receive_type(ws, "ERROR", timeout=5)
        assert error["payload"]["code"] == "unauthenticated"
        assert await wsclient.closed_with(ws) == 4401


# --- token expiry and in-band refresh ---------------------------------------------------------


async def test_expired_token_closes_with_4401(live, trader):
    token = str(_token(trader, lifetime=timedelta(seconds=2)))
    async with await connect(live.ws_url, token=token) as ws:
        await receive_type(ws, "AUTHENTICATION")
        assert await wsclient.closed_with(ws, timeout=6) == 4401


async def test_in_band_refresh_keeps_the_connection_open(live, trader):
    short = str(_token(trader, lifetime=timedelta(seconds=2)))
    async with await connect(live.ws_url, token=short) as ws:
        await receive_type(ws, "AUTHENTICATION")
        fresh = str(_token(trader, lifetime=timedelta(minutes=5)))
        reply = await request(ws, "AUTHENTICATION", {"token": fresh}, id="refresh")
        assert reply["type"] == "AUTHENTICATION"
        assert reply["payload"]["status"] == "authenticated"
        await asyncio.sleep(2.5)
        heartbeat = await request(ws, "HEARTBEAT", {}, id="still-here")
        assert heartbeat["type"] == "HEARTBEAT"


async def test_refresh_with_another_users_token_is_refused(live, trader_token, other_token):
    async with await connect(live.ws_url, token=trader_token) as ws:
        await receive_type(ws, "AUTHENTICATION")
        reply = await request(ws, "AUTHENTICATION", {"token": other_token}, id="swap")
        assert reply["type"] == "ERROR"
        assert reply["payload"]["code"] == "unauthenticated"


# --- subscriptions --------------------------------------------------------------------------


async def test_subscription_ack_lists_accepted_and_rejected_topics(live, trader, trader_token):
    async with await connect(live.ws_url, token=trader_token) as ws:
        await receive(ws)
        reply = await request(
            ws,
            "SUBSCRIPTION",
            {"action": "subscribe", "topics": ["orders", f"user:{trader.pk}:orders", "bogus"]},
            id="s1",
        )
    assert reply["type"] == "SUBSCRIPTION"
    assert reply["id"] == "s1"
    assert reply["payload"]["action"] == "subscribed"
    assert reply["payload"]["topics"] == [f"user:{trader.pk}:orders"]
    assert sorted(reply["payload"]["rejected"], key=lambda r: r["topic"]) == [
        {"topic": "bogus", "reason": "unknown_topic"},
        {"topic": "orders", "reason": "forbidden"},
    ]


async def test_user_cannot_subscribe_to_another_users_topics(live, trader_token, other_trader):
    topics = [f"user:{other_trader.pk}:{kind}" for kind in ("orders", "positions", "strategies")]
    async with await connect(live.ws_url, token=trader_token) as ws:
        await receive(ws)
        ack = await subscribe(ws, *topics)
    assert ack["topics"] == []
    assert {r["topic"]: r["reason"] for r in ack["rejected"]} == dict.fromkeys(topics, "forbidden")


async def test_unsubscribe_and_list(live, trader, trader_token):
    mine = f"user:{trader.pk}:positions"
    async with await connect(live.ws_url, token=trader_token) as ws:
        await receive(ws)
        await subscribe(ws, mine, "market:AAPL")
        listed = await request(ws, "SUBSCRIPTION", {"action": "list"}, id="l1")
        assert listed["payload"] == {"action": "list", "topics": ["market:AAPL", mine]}
        gone = await request(ws, "SUBSCRIPTION", {"action": "unsubscribe", "topics": [mine]}, id=2)
        assert gone["payload"]["action"] == "unsubscribed"
        assert gone["payload"]["topics"] == [mine]
        listed = await request(ws, "SUBSCRIPTION", {"action": "list"}, id="l2")
        assert listed["payload"]["topics"] == ["market:AAPL"]


async def test_topic_limit_rejects_the_excess_with_limit_exceeded(live, trader_token):
    symbols = [f"market:SYM{i}" for i in range(7)]  # the live server allows 5
    async with await connect(live.ws_url, token=trader_token) as ws:
        await receive(ws)
        ack = await subscribe(ws, *symbols)
    assert ack["topics"] == symbols[:5]
    assert ack["rejected"] == [
        {"topic": topic, "reason": "limit_exceeded"} for topic in symbols[5:]
    ]


# --- heartbeats and malformed input -------------------------------------------------------------


async def test_client_heartbeat_is_answered_with_server_time(live, trader_token):
    async with await connect(live.ws_url, token=trader_token) as ws:
        await receive(ws)
        reply = await request(ws, "HEARTBEAT", {}, id=42)
    assert reply["type"] == "HEARTBEAT"
    assert reply["id"] == 42
    assert reply["payload"]["serverTime"].endswith("Z")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "invalid_json"),
        ("[1, 2, 3]", "invalid_message"),
        ('"just a string"', "invalid_message"),
        ('{"payload": {}}', "invalid_message"),
        ('{"type": 5, "payload": {}}', "invalid_message"),
        ('{"type": "SUBSCRIPTION", "payload": []}', "invalid_message"),
        ('{"type": "SUBSCRIPTION", "payload": {"action": "dance"}}', "invalid_message"),
        (
            '{"type": "SUBSCRIPTION", "payload": {"action": "subscribe", "topics": "orders"}}',
            "invalid_message",
        ),
        ('{"type": "ORDER_UPDATE", "payload": {}}', "unknown_type"),
        ('{"type": "PING", "payload": {}}', "unknown_type"),
        (b"\x00\x01binary", "invalid_message"),
    ],
)
async def test_malformed_input_gets_an_error_and_the_connection_lives(
    live, trader_token, frame, code
):
    async with await connect(live.ws_url, token=trader_token) as ws:
        await receive(ws)
        await ws.send(frame)
        error = await receive_type(ws, "ERROR")
        assert error["payload"]["code"] == code
        assert error["payload"]["message"]
        alive = await request(ws, "HEARTBEAT", {}, id="alive")
        assert alive["type"] == "HEARTBEAT"


async def test_error_echoes_the_client_message_id(live, trader_token):
    async with await connect(live.ws_url, token=trader_token) as ws:
        await receive(ws)
        reply = await request(ws, "NOPE", {}, id="x-1")
    assert reply["type"] == "ERROR"
    assert reply["payload"]["code"] == "unknown_type"


async def test_oversized_frame_gets_message_too_large_and_the_connection_lives(live, trader_token):
    async with await connect(live.ws_url, token=trader_token, max_size=None) as ws:
        await receive(ws)
        await send(ws, "HEARTBEAT", {"padding": "x" * (65 * 1024)})
        error = await receive_type(ws, "ERROR")
        assert error["payload"]["code"] == "message_too_large"
        alive = await request(ws, "HEARTBEAT", {}, id="alive")
        assert alive["type"] == "HEARTBEAT"


async def test_unknown_extra_keys_are_ignored(live, trader_token):
    async with await connect(live.ws_url, token=trader_token) as ws:
        await receive(ws)
        await ws.send(json.dumps({"type": "HEARTBEAT", "id": 1, "payload": {}, "extra": [1]}))
        reply = await receive_type(ws, "HEARTBEAT")
    assert reply["id"] == 1


async def test_deeply_nested_json_is_invalid_json_and_the_connection_lives(live, trader_token):
    async with await connect(live.ws_url, token=trader_token) as ws:
        await receive(ws)
        await ws.send("[" * 60_000)  # 60 KB: under the size limit, far past Python's recursion
        error = await receive_type(ws, "ERROR")
        assert error["payload"]["code"] == "invalid_json"
        assert "nested too deeply" in error["payload"]["message"]
        alive = await request(ws, "HEARTBEAT", {}, id="alive")
        assert alive["type"] == "HEARTBEAT"
    assert "RecursionError" not in live.log()


async def test_deeply_nested_json_while_rate_limited_is_refused_not_crashed(live, trader_token):
    # Past the burst each frame is refused as rate_limited, its id peeked at: a frame too deep to
    # parse must not take the connection's application down with it.
    async with await connect(live.ws_url, token=trader_token) as ws:
        await receive(ws)
        for _ in range(12):
            await ws.send('{"type":"HEARTBEAT","id":' + "[" * 30_000)
        codes = [(await receive_type(ws, "ERROR"))["payload"]["code"] for _ in range(12)]
        assert set(codes) == {"invalid_json", "rate_limited"}
        await asyncio.sleep(1.0)
        alive = await request(ws, "HEARTBEAT", {}, id="after")
        assert alive["type"] == "HEARTBEAT"
    assert "RecursionError" not in live.log()


# --- rate limiting ----------------------------------------------------------------------------


async def test_flooding_gets_rate_limited_then_closed_with_4429(live, trader_token):
    # The live server allows bursts of 10, 5/s after, and 3 refused messages in a row.
    async with await connect(live.ws_url, token=trader_token) as ws:
        await receive(ws)
        for _ in range(20):
            await send(ws, "HEARTBEAT", {}, id="flood")
        codes = []
        try:
            while True:
                message = await receive(ws, heartbeats=True)
                if message["type"] == "ERROR":
                    codes.append(message["payload"]["code"])
                    assert message["id"] == "flood"
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd.code == 4429
    assert codes and set(codes) == {"rate_limited"}


async def test_a_client_that_slows_down_after_rate_limited_stays(live, trader_token):
    async with await connect(live.ws_url, token=trader_token) as ws:
        await receive(ws)
        for _ in range(12):
            await send(ws, "HEARTBEAT", {})
        replies = [await receive(ws, heartbeats=True) for _ in range(12)]
        assert [m["type"] for m in replies].count("ERROR") >= 1
        await asyncio.sleep(1.0)
        alive = await request(ws, "HEARTBEAT", {}, id="after")
        assert alive["type"] == "HEARTBEAT"


# --- helpers ----------------------------------------------------------------------------------


def _token(user, *, lifetime: timedelta) -> AccessToken:
    token = AccessToken.for_user(user)
    token.set_exp(lifetime=lifetime)
    return token


def _signed_with(user, key: str) -> str:
    claims = dict(AccessToken.for_user(user).payload)
    return jwt.encode(claims, key, algorithm="HS256")


def _alg_none(user) -> str:
    claims = dict(AccessToken.for_user(user).payload)

    def part(data: dict) -> str:
        raw = json.dumps(data).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def _refresh_token(user) -> str:
    from rest_framework_simplejwt.settings import api_settings
    from rest_framework_simplejwt.tokens import RefreshToken

    # Built by hand: `RefreshToken.for_user` records the token for the blacklist (a database
    # write, which this async test may not make), and the server refuses it either way.
    token = RefreshToken()
    token[api_settings.USER_ID_CLAIM] = user.pk
    return str(token)
