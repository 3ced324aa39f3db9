"""The Python client for bots (clients/python, package tradingrt_client).

Its decision rules (backoff, refresh timing, the section 7.6 checklist, the Book, the token
policy) are tested directly; everything else against real Daphne processes: login, snapshot and
updates, in-band refresh with short-lived tokens, MessagePack, filters and presence, a 4000
disconnect resumed exactly, a restarted server's new epoch answered with a snapshot, 4403.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from tradingrt_client import (
    AuthenticationFailed,
    Book,
    Client,
    Connected,
    Deactivated,
    Disconnected,
    Position,
    Presence,
    Recovered,
    Reset,
    Revoked,
    Snapshot,
    SubscribeReply,
    TooManyConnections,
    Update,
    backoff_delay,
    refresh_delay,
)
from tradingrt_client.auth import HttpError, PasswordLogin
from tradingrt_client.client import endpoints
from tradingrt_client.tracker import Tracker

from tests.conftest import access_token_for
from tests.factories import UserFactory
from tests.live import LiveServer, free_port, live_server
from tests.pyclient import Events
from tests.test_delivery import place, post_order
from tests.test_js_client import short_token
from tests.test_protocol_examples import Running

BOT_PASSWORD = "bot-password"


# --- independence from the server ------------------------------------------------------------

# Run in a fresh interpreter whose imports of the server's packages fail, as on a bot's machine
# where only clients/python was installed: the package must import and build a client.
WITHOUT_THE_SERVER = """
import sys

SERVER = {"django", "channels", "channels_redis", "rest_framework", "rest_framework_simplejwt",
          "daphne", "tradingrt", "realtime", "orders", "positions", "strategies", "market"}


class ServerNotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in SERVER:
            raise ImportError(f"No module named {name!r} (not installed on a bot's machine)")
        return None


sys.meta_path.insert(0, ServerNotInstalled())
sys.path.insert(0, sys.argv[1])
import tradingrt_client

client = tradingrt_client.Client("http://127.0.0.1:8000", username="alice", password="pw")
print(tradingrt_client.__file__)
print(type(client).__name__)
"""


def test_the_client_imports_and_builds_without_django_or_the_server(tmp_path):
    package = Path(__file__).resolve().parent.parent / "clients" / "python"
    environment = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE",)}
    run = subprocess.run(
        [sys.executable, "-I", "-c", WITHOUT_THE_SERVER, str(package)],
        cwd=tmp_path,  # not the project's root: nothing of the server is importable from there
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    where, built = run.stdout.splitlines()
    assert Path(where).is_relative_to(package)  # this checkout's client, not another install
    assert built == "Client"


# --- timing ------------------------------------------------------------------------------------


def test_backoff_is_full_jitter_below_an_exponential_ceiling_capped_at_30_s():
    highest = [backoff_delay(n, base=0.5, cap=30.0, random=lambda: 0.9999) for n in range(9)]
    assert highest == pytest.approx(
        [0.49995, 0.9999, 1.9998, 3.9996, 7.9992, 15.9984, 29.997, 29.997, 29.997]
    )
    assert backoff_delay(5, base=0.5, cap=30.0, random=lambda: 0.0) == 0.0


def test_refresh_is_30_s_before_expiry_or_at_80_percent_of_a_short_lifetime():
    delays = [refresh_delay(life, lead=30, fraction=0.8) for life in (900, 60, 10, -0.005)]
    assert delays == pytest.approx([870, 48, 8, 0])


def test_the_site_url_and_the_websocket_url_name_each_other():
    assert endpoints("http://127.0.0.1:8000") == ("http://127.0.0.1:8000", "ws://127.0.0.1:8000/ws")
    assert endpoints("https://trade.example/") == (
        "https://trade.example",
        "wss://trade.example/ws",
    )
    assert endpoints("wss://trade.example/ws") == (
        "https://trade.example",
        "wss://trade.example/ws",
    )
    with pytest.raises(ValueError, match="must start with"):
        endpoints("trade.example")


# --- the client author's checklist (PROTOCOL 7.6), message by message ----------------------------


def message(topic: str, seq: int, *, epoch: str = "E1", id: int = 1, version: int = 1) -> dict:
    return {
        "type": "ORDER_UPDATE",
        "topic": topic,
        "seq": seq,
        "epoch": epoch,
        "timestamp": "2026-11-29T01:52:01.317Z",
        "payload": {"id": id, "version": version, "event": "updated"},
    }


def held_tracker(topic: str = "user:1:orders", *, seq: int = 5, **options: Any) -> Tracker:
    """A tracker holding `topic` at seq `seq` of epoch E1, as after a subscribe reply."""
    tracker = Tracker()
    topic = tracker.want(topic, **options).topic
    entries = tracker.resubscription()
    tracker.subscribed(SubscribeReply([topic], [], positions={topic: Position("E1", seq)}), entries)
    return tracker


def applied(tracker: Tracker, *messages: dict) -> tuple[list[int], list[str]]:
    """The seqs handed on, and the topics asked to be resumed."""
    seqs, resumes = [], []
    for item in messages:
        update, resume = tracker.on_update(item)
        if update is not None:
            seqs.append(update.seq)
        if resume is not None:
            resumes.append(resume)
            tracker.resume([resume])
    return seqs, resumes


def test_updates_in_order_are_applied_and_duplicates_dropped():
    tracker = held_tracker()
    topic = "user:1:orders"
    assert applied(tracker, *(message(topic, s) for s in (6, 7, 7, 5, 8))) == ([6, 7, 8], [])
    assert tracker.topics[topic].position == Position("E1", 8)


def test_a_seq_jump_is_a_gap_resumed_from_the_position_held_applying_only_the_next_seq_meanwhile():
    tracker = held_tracker()
    topic = "user:1:orders"
    seqs, resumes = applied(tracker, message(topic, 8), message(topic, 9), message(topic, 6))
    assert seqs == [6]  # 8 and 9 are not applied; 6 (held + 1) still is
    assert resumes == [topic]  # once, though two messages showed the gap
    state = tracker.topics[topic]
    assert state.resuming
    assert state.entry() == {"topic": topic, "since": {"epoch": "E1", "seq": 6}, "snapshot": True}
    # The reply recovers: the replay follows and is applied; what was already applied is not.
    events = tracker.subscribed(
        SubscribeReply([topic], [], positions={topic: Position("E1", 9)}, recovered=[topic]),
        [state.entry()],
    )
    assert events == [Recovered(topic, since=Position("E1", 6), head=Position("E1", 9))]
    assert applied(tracker, *(message(topic, s) for s in (6, 7, 8, 9))) == ([7, 8, 9], [])


def test_a_message_of_another_epoch_is_not_applied_and_the_topic_is_resumed():
    tracker = held_tracker()
    topic = "user:1:orders"
    assert applied(tracker, message(topic, 1, epoch="E2")) == ([], [topic])
    # The server answers reset (the epoch changed), and the snapshot follows: its seq is the new
    # position, and the stream goes on from there.
    entry = tracker.topics[topic].entry()
    events = tracker.subscribed(
        SubscribeReply([topic], [], positions={topic: Position("E2", 1)}, reset={topic: "epoch"}),
        [entry],
    )
    assert events == [Reset(topic, "epoch", Position("E2", 1), snapshot=True)]
    snapshot = {"type": "SNAPSHOT", "topic": topic, "seq": 1, "epoch": "E2", "timestamp": "t",
                "payload": {"items": [], "last": True}}  # fmt: skip
    assert tracker.on_snapshot(snapshot) is not None
    assert applied(tracker, message(topic, 2, epoch="E2")) == ([2], [])


def test_a_heartbeat_ahead_means_the_last_message_of_a_quiet_topic_was_missed():
    tracker = held_tracker()
    topic = "user:1:orders"
    assert tracker.on_heartbeat({topic: {"epoch": "E1", "seq": 5}}) == []
    assert tracker.on_heartbeat({topic: {"epoch": "E1", "seq": 6}}) == [topic]
    assert tracker.on_heartbeat({"user:9:orders": {"epoch": "E1", "seq": 60}}) == []  # not ours


def test_a_filtered_or_throttled_subscription_skips_seqs_without_a_gap():
    topic = "user:1:orders"
    tracker = held_tracker(topic, filter={"side": "SELL"})
    assert applied(tracker, message(topic, 9), message(topic, 9), message(topic, 12)) == (
        [9, 12],
        [],
    )
    assert tracker.on_heartbeat({topic: {"epoch": "E1", "seq": 20}}) == []
    assert tracker.topics[topic].position == Position("E1", 20)  # taken as ours (PROTOCOL 4.7)
    assert applied(tracker, message(topic, 20)) == ([], [])  # already passed
    market = held_tracker("market:aapl", throttle_ms=250)
    assert list(market.topics) == ["market:AAPL"]
    assert applied(market, message("market:AAPL", 40)) == ([40], [])
    # Another epoch is still a reset, shaped or not.
    assert applied(tracker, message(topic, 3, epoch="E2")) == ([], [topic])


def test_after_a_snapshot_an_update_the_snapshot_already_holds_is_dropped_by_version():
    topic = "user:1:orders"
    tracker = held_tracker(topic, seq=10)
    snapshot = {"type": "SNAPSHOT", "topic": topic, "seq": 10, "epoch": "E1", "timestamp": "t",
                "payload": {"items": [{"id": 1, "version": 3}, {"id": 2, "version": 1}],
                            "last": True}}  # fmt: skip
    assert tracker.on_snapshot(snapshot) is not None
    seqs, _ = applied(
        tracker,
        message(topic, 11, id=1, version=3),  # committed while the snapshot was read: in it
        message(topic, 12, id=1, version=4),
        message(topic, 13, id=2, version=2),
        message(topic, 14, id=3, version=1),
    )
    assert seqs == [12, 13, 14]
    assert tracker.topics[topic].overlap == {}  # both superseded: nothing more to compare


def test_the_resubscription_after_a_reconnect_resumes_each_topic_with_its_options():
    tracker = held_tracker("user:1:orders", snapshot=True)
    tracker.want("market:btc-usd", snapshot=False, throttle_ms=500, presence=True)
    tracker.connection_lost()
    assert tracker.resubscription() == [
        {"topic": "user:1:orders", "since": {"epoch": "E1", "seq": 5}, "snapshot": True},
        {"topic": "market:BTC-USD", "throttleMs": 500, "presence": True},
    ]


def test_a_topic_refused_on_resubscription_is_revoked_and_an_unavailable_one_kept():
    tracker = held_tracker("user:1:orders")
    tracker.want("strategy:7")
    tracker.connection_lost()
    entries = tracker.resubscription()
    from tradingrt_client import Rejection

    events = tracker.subscribed(
        SubscribeReply(
            [],
            [Rejection("user:1:orders", "forbidden"), Rejection("strategy:7", "unavailable")],
        ),
        entries,
    )
    assert events == [Revoked("user:1:orders", "forbidden")]
    assert list(tracker.topics) == ["strategy:7"]


# --- Book -------------------------------------------------------------------------------------


def update(topic: str, seq: int, payload: dict) -> Update:
    return Update("POSITION_UPDATE", topic, seq, "E1", "t", payload)


def test_the_book_takes_a_snapshot_whole_then_newer_versions_and_forgets_deleted_objects():
    book, topic = Book(), "user:1:positions"
    first = Snapshot(topic, 4, "E1", "t", [{"id": 1, "version": 2, "quantity": "1"}], last=False)
    assert not book.apply(first)
    assert not book.ready(topic)
    second = Snapshot(topic, 4, "E1", "t", [{"id": 2, "version": 1, "quantity": "5"}], last=True)
    assert book.apply(second)
    assert book.ready(topic)
    assert set(book.objects(topic)) == {1, 2}
    assert not book.apply(update(topic, 5, {"id": 1, "version": 2, "quantity": "9"}))  # old
    assert book.apply(update(topic, 6, {"id": 1, "version": 3, "quantity": "2"}))
    assert book.get(topic, 1) == {"id": 1, "version": 3, "quantity": "2"}
    assert book.apply(update(topic, 7, {"id": 2, "version": 2, "event": "deleted"}))
    assert set(book.objects(topic)) == {1}
    # A new snapshot replaces the state; a reset without one empties it.
    assert book.apply(Snapshot(topic, 1, "E2", "t", [{"id": 5, "version": 1}], last=True))
    assert set(book.objects(topic)) == {5}
    assert book.apply(Reset(topic, "expired", Position("E2", 9), snapshot=False))
    assert book.objects(topic) == {}


def test_the_book_keeps_the_latest_tick_per_symbol():
    book, topic = Book(), "market:AAPL"
    tick = {"symbol": "AAPL", "last": "190.1", "bid": None, "ask": None}
    assert book.apply(Update("MARKET_DATA", topic, 1, "E1", "t", tick))
    assert book.apply(Update("MARKET_DATA", topic, 2, "E1", "t", {**tick, "last": "190.2"}))
    assert book.get(topic, "AAPL") == {**tick, "last": "190.2"}


# --- tokens -------------------------------------------------------------------------------------


class ScriptedApi:
    """Answers the client's REST calls from a script: a dict (200), an HttpError or OSError."""

    def __init__(self, script: dict[str, list[Any]]) -> None:
        self.script = script
        self.calls: list[str] = []

    def __call__(self, url: str, body: dict) -> dict:
        path = url.removeprefix("http://api.test")
        self.calls.append(path)
        answer = self.script[path].pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def scripted_login(api: ScriptedApi) -> PasswordLogin:
    return PasswordLogin("http://api.test", "bot", "pw", post=api, retry_base=0.001)


LOGIN, REFRESH = "/api/auth/token/", "/api/auth/token/refresh/"
PAIR = {"access": "a1", "refresh": "r1"}


async def test_a_refresh_is_retried_with_backoff_when_the_server_cannot_answer():
    api = ScriptedApi(
        {LOGIN: [PAIR], REFRESH: [OSError("refused"), HttpError(503, "busy"), {"access": "a2"}]}
    )
    login = scripted_login(api)
    assert await login.token("connect") == "a1"
    assert await login.token("refresh") == "a2"
    assert api.calls == [LOGIN, REFRESH, REFRESH, REFRESH]


async def test_only_a_refused_refresh_token_logs_in_again_and_a_refused_login_stops():
    api = ScriptedApi(
        {
            LOGIN: [PAIR, {"access": "a3", "refresh": "r3"}, HttpError(401, "no")],
            REFRESH: [HttpError(401, "Token is expired"), HttpError(401, "Token is expired")],
        }
    )
    login = scripted_login(api)
    await login.token("connect")
    assert await login.token("renew") == "a3"
    assert (login.logins, login.refreshes) == (2, 0)
    with pytest.raises(AuthenticationFailed, match="Login refused"):
        await login.token("renew")


# --- against real servers ---------------------------------------------------------------------


def bot(username: str = "py-bot"):
    return UserFactory(username=username, password=BOT_PASSWORD)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_it_logs_in_and_gets_the_state_then_each_update_once_in_order(live):
    user = await sync_to_async(bot)()
    before = await sync_to_async(place)(user, 2)
    topic = f"user:{user.pk}:orders"
    async with Client(live.http_url, username=user.username, password=BOT_PASSWORD) as client:
        assert client.session is not None and client.session.username == user.username
        events = Events(client)
        assert isinstance(await events.next(), Connected)
        reply = await client.subscribe(topic)
        assert reply.topics == [topic] and reply.rejected == []
        snapshot = await events.next()
        assert isinstance(snapshot, Snapshot) and snapshot.last
        assert sorted(item["id"] for item in snapshot.items) == before
        assert snapshot.seq == reply.positions[topic].seq
        token = await sync_to_async(access_token_for)(user)
        placed = [(await post_order(live, token))["id"] for _ in range(3)]
        await events.update_of(placed[-1])
        received = events.updates(topic)
        assert [u.key for u in received] == placed
        assert [u.seq for u in received] == [snapshot.seq + n for n in (1, 2, 3)]
        assert received[0].payload["price"] == "100"  # decimals stay strings
        book = Book()
        for event in events.seen:
            book.apply(event)
        assert sorted(book.objects(topic)) == sorted(before + placed)
        assert await client.unsubscribe(topic) == [topic]
        assert client.topics == []
    assert not client.connected


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_on_message_sees_each_server_message_before_the_client_acts_on_it(live, trader):
    topic = f"user:{trader.pk}:orders"
    token = await sync_to_async(access_token_for)(trader)
    wire: list[dict] = []
    async with Client(live.http_url, token=token, on_message=wire.append) as client:
        events = Events(client)
        assert isinstance(await events.next(), Connected)
        assert [m["type"] for m in wire] == ["AUTHENTICATION"]  # seen before the event
        assert wire[0]["payload"]["connectionId"] == client.session.connection_id
        reply = await client.subscribe(topic, snapshot=False)
        [answer] = [m for m in wire if m["type"] == "SUBSCRIPTION"]
        assert answer["payload"]["action"] == "subscribed" and "id" in answer
        assert answer["payload"]["topics"] == reply.topics == [topic]
        assert answer["payload"]["positions"][topic] == reply.positions[topic].to_wire()
        order = await post_order(live, token)
        update = await events.update_of(order["id"])
        [sent] = [m for m in wire if m["type"] == "ORDER_UPDATE"]
        assert (sent["seq"], sent["epoch"], sent["payload"]) == (
            update.seq,
            update.epoch,
            update.payload,
        )


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_given_several_sites_it_moves_to_the_next_when_one_cannot_be_reached(live):
    user = await sync_to_async(bot)("py-sites")
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = Client(
        [dead, live.http_url], username=user.username, password=BOT_PASSWORD, backoff_base=0.01
    )
    assert (client.http_url, client.ws_url) == (dead, dead.replace("http", "ws") + "/ws")
    async with client:
        events = Events(client)
        unreachable = await events.next()  # the login at the dead site failed
        assert isinstance(unreachable, Disconnected) and unreachable.will_reconnect
        assert unreachable.code is None and "access token" in unreachable.reason
        connected = await events.next()
        assert isinstance(connected, Connected) and connected.username == user.username
        assert client.http_url == live.http_url and client.ws_url == live.ws_url
        login = client.credentials
        assert isinstance(login, PasswordLogin) and login.base_url == live.http_url
        assert login.logins == 1
    token = await sync_to_async(access_token_for)(user)
    client = Client([dead, live.ws_url], token=token, backoff_base=0.01)
    async with client:  # a token: the handshake at the dead site failed
        events = Events(client)
        unreachable = await events.next()
        assert isinstance(unreachable, Disconnected) and unreachable.code is None
        assert "could not connect" in unreachable.reason
        assert isinstance(await events.next(), Connected)
    with pytest.raises(ValueError, match="list of the sites"):
        Client([], token=token)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_with_msgpack_the_same_messages_come_in_binary_frames(live):
    user = await sync_to_async(bot)("py-msgpack")
    topic = f"user:{user.pk}:orders"
    client = Client(live.ws_url, username=user.username, password=BOT_PASSWORD, encoding="msgpack")
    async with client:
        assert client.encoding == "msgpack"
        events = Events(client)
        connected = await events.next()
        assert isinstance(connected, Connected) and connected.encoding == "msgpack"
        reply = await client.subscribe(topic, snapshot=False)
        assert reply.topics == [topic]
        order = await post_order(live, await sync_to_async(access_token_for)(user))
        received = await events.update_of(order["id"])
        assert isinstance(received, Update)
        assert received.payload["price"] == "100" and received.payload["userId"] == user.pk
        # A request and its reply (with a server ERROR turned into ServerError) in msgpack too.
        from tradingrt_client import ServerError

        with pytest.raises(ServerError) as error:
            await client.request("SUBSCRIPTION", {"action": "bogus"})
        assert error.value.code == "invalid_message"


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_a_short_lived_token_is_refreshed_in_band_and_the_stream_goes_on(live, trader):
    topic = f"user:{trader.pk}:orders"
    tokens = [
        await sync_to_async(short_token)(trader, 3),
        await sync_to_async(short_token)(trader, 60),
    ]
    reasons: list[str] = []

    async def provider(reason: str) -> str:
        reasons.append(reason)
        return tokens.pop(0)

    async with Client(live.http_url, token_provider=provider) as client:
        first = client.session
        assert first is not None
        await client.subscribe(topic, snapshot=False)
        await asyncio.sleep(3.5)  # past the first token's expiry: refreshed at 80% of its life
        assert client.connected and client.session is not None
        assert client.session.connection_id == first.connection_id  # the same connection
        assert client.session.expires_at > first.expires_at
        assert reasons == ["connect", "refresh"]
        events = Events(client)
        order = await post_order(live, await sync_to_async(access_token_for)(trader))
        await events.update_of(order["id"])
        assert events.of(Disconnected) == []


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_the_refresh_endpoint_buys_the_in_band_tokens(live):
    user = await sync_to_async(bot)("py-refresher")
    login = await renew_in_band(live.http_url, user.username, lambda login: login.refreshes >= 1)
    assert login.refreshes >= 1 and login.logins == 1


async def renew_in_band(url: str, username: str, renewed: Any) -> PasswordLogin:
    """A bot whose token is renewed 1.5 s after each (the server's live 15 minutes) until
    `renewed(login)`: the session's expiry moves on, on the same connection."""
    client = Client(
        url,
        username=username,
        password=BOT_PASSWORD,
        refresh_lead=15 * 60 - 1.5,
        refresh_fraction=0,
    )
    async with client:
        assert client.session is not None
        first = client.session
        login = client.credentials
        assert isinstance(login, PasswordLogin)
        for _ in range(60):
            if renewed(login) and client.session.expires_at > first.expires_at:
                break
            await asyncio.sleep(0.1)
        assert client.session.expires_at > first.expires_at
        assert client.session.connection_id == first.connection_id
        return login


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_when_the_refresh_token_is_refused_it_logs_in_again():
    user = await sync_to_async(bot)("py-relogin")
    # Refresh tokens that are expired as soon as they are issued: every refresh is refused.
    with live_server(env={"JWT_REFRESH_TOKEN_DAYS": "0"}) as server:
        login = await renew_in_band(server.http_url, user.username, lambda login: login.logins >= 2)
    assert login.logins >= 2 and login.refreshes == 0


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_a_refused_login_or_an_expired_fixed_token_stops_the_client(live, trader):
    with pytest.raises(AuthenticationFailed, match="Login refused"):
        await Client(live.http_url, username=trader.username, password="wrong").connect()
    expired = await sync_to_async(short_token)(trader, -10)
    client = Client(live.http_url, token=expired, backoff_base=0.01)
    with pytest.raises(AuthenticationFailed, match="cannot get another"):
        await client.connect()
    with pytest.raises(AuthenticationFailed):
        async for _ in client.updates():
            pass


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_a_filtered_subscription_gets_what_matches_and_takes_seq_jumps_as_no_gap(
    live, trader, trader_token
):
    topic = f"user:{trader.pk}:orders"
    async with Client(live.http_url, token=trader_token) as client:
        events = Events(client)
        await client.subscribe(topic, snapshot=False, filter={"side": "SELL"})
        async with httpx.AsyncClient(
            base_url=live.http_url, headers={"Authorization": f"Bearer {trader_token}"}
        ) as api:
            for side in ("BUY", "BUY", "SELL"):
                body = {"symbol": "AAPL", "side": side, "orderType": "MARKET", "quantity": "1"}
                response = await api.post("/api/orders/", json=body)
                assert response.status_code == 201, response.text
        sold = response.json()["id"]
        received = await events.update_of(sold)
        assert isinstance(received, Update) and received.seq == 3
        # Alone, and never taken for a gap: no resume was asked for.
        assert [u.key for u in events.updates(topic)] == [sold]
        assert events.of(Recovered) == events.of(Reset) == []


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_presence_lists_who_is_there_and_reports_joins(live, staff, trader):
    topic = f"user:{trader.pk}:orders"
    staff_token = await sync_to_async(access_token_for)(staff)
    async with Client(live.http_url, token=staff_token) as watcher:
        events = Events(watcher)
        await watcher.subscribe(topic, snapshot=False, presence=True)
        await asyncio.sleep(1.5)  # the server's first look (every 1 s): who is here already
        trader_token = await sync_to_async(access_token_for)(trader)
        async with Client(live.http_url, token=trader_token) as client:
            await client.subscribe(topic, snapshot=False)
            joined = await events.until(Presence)
            assert (joined.event, joined.user_id, joined.username) == ("join", trader.pk, "alice")
            members = await watcher.presence(topic)
            assert sorted(m.username for m in members) == ["alice", "staff"]
            assert [m.username for m in await watcher.presence(topic, page_size=1)] == [
                m.username for m in sorted(members, key=lambda m: m.user_id)
            ]


@pytest.mark.e2e
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
async def test_after_an_operator_disconnect_it_resumes_with_exactly_what_it_missed(
    cluster, redis_layer
):
    a, _ = cluster
    user = await sync_to_async(bot)("py-resumer")
    topic = f"user:{user.pk}:orders"
    client = Client(a.http_url, username=user.username, password=BOT_PASSWORD, backoff_cap=1.0)
    async with client:
        events = Events(client)
        await client.subscribe(topic)
        await events.until(Snapshot)
        [seen] = await sync_to_async(place)(user, 1)
        await events.update_of(seen)
        first = client.session
        assert first is not None
        result = await asyncio.to_thread(a.manage, "ws_disconnect", "--user", user.username)
        assert result.returncode == 0, result.stderr
        closed = await events.until(Disconnected)
        assert closed.code == 4000 and closed.will_reconnect
        missed = await sync_to_async(place)(user, 3)  # while it reconnects
        recovered = await events.until(Recovered)
        assert recovered.topic == topic
        assert client.session is not None and client.session.reconnected
        assert client.session.connection_id != first.connection_id
        [after] = await sync_to_async(place)(user, 1)
        await events.update_of(after)
        received = events.updates(topic)
        assert [u.key for u in received] == [seen, *missed, after]  # each once, in order
        assert [u.seq for u in received] == list(range(received[0].seq, received[0].seq + 5))
        assert events.of(Reset) == []  # recovered, not reloaded
        assert len(events.of(Snapshot)) == 1


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_after_a_server_restart_the_new_epoch_is_answered_with_a_snapshot():
    user = await sync_to_async(bot)("py-restart")
    topic = f"user:{user.pk}:orders"
    token = await sync_to_async(access_token_for)(user)
    server = LiveServer().start()
    try:
        client = Client(server.http_url, token=token, backoff_base=0.2, backoff_cap=1.0)
        async with client:
            events = Events(client)
            await client.subscribe(topic)
            await events.until(Snapshot)
            before = await post_order(server, token)
            old = await events.update_of(before["id"])
            assert isinstance(old, Update)
            server.stop()  # the only process stops: its history is gone with it
            await events.until(Disconnected)
            while_down = await sync_to_async(place)(user, 2)
            server = LiveServer(port=server.port).start()
            reset = await events.until(Reset, timeout=30)
            assert (reset.topic, reset.reason, reset.snapshot) == (topic, "epoch", True)
            assert reset.position.epoch != old.epoch
            snapshot = await events.until(Snapshot)
            assert snapshot.epoch == reset.position.epoch
            assert sorted(i["id"] for i in snapshot.items) == sorted([before["id"], *while_down])
            after = await post_order(server, token)
            new = await events.update_of(after["id"])
            assert (new.epoch, new.seq) == (snapshot.epoch, snapshot.seq + 1)
            assert events.of(Recovered) == []
    finally:
        server.stop()


@pytest.mark.e2e
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
async def test_a_deactivated_user_is_stopped_for_good(cluster, redis_layer):
    a, _ = cluster
    user = await sync_to_async(bot)("py-deactivated")
    client = Client(a.http_url, username=user.username, password=BOT_PASSWORD, backoff_cap=0.1)
    async with client:
        events = Events(client)
        await client.subscribe(f"user:{user.pk}:orders", snapshot=False)
        user.is_active = False
        await sync_to_async(user.save)()
        with pytest.raises(Deactivated):
            while True:
                await events.next()
        [closed] = events.of(Disconnected)
        assert closed.code == 4403 and not closed.will_reconnect
        assert not client.connected
        with pytest.raises(Deactivated):
            await client.connect()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_after_a_4401_it_reconnects_only_with_a_new_token_and_resumes(live, trader):
    topic = f"user:{trader.pk}:orders"
    short = await sync_to_async(short_token)(trader, 2.5)
    good = await sync_to_async(short_token)(trader, 60)
    reasons: list[str] = []

    def provider(reason: str) -> str:  # a sync provider works too (it runs in a thread)
        reasons.append(reason)
        if reason == "refresh":
            raise RuntimeError("no refresh this time")
        return short if reason == "connect" else good

    async with Client(live.http_url, token_provider=provider, backoff_cap=0.5) as client:
        events = Events(client)
        await client.subscribe(topic, snapshot=False)
        closed = await events.until(Disconnected, timeout=10)
        assert closed.code == 4401 and closed.will_reconnect
        assert any(getattr(e, "code", None) == "refresh" for e in events.seen)  # reported
        again = await events.until(Connected)
        assert again.reconnected
        assert await events.until(Recovered)  # resumed, not reloaded
        assert reasons[:3] == ["connect", "refresh", "renew"]
        order = await post_order(live, await sync_to_async(access_token_for)(trader))
        await events.update_of(order["id"])


@pytest.mark.e2e
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
async def test_after_its_sessions_are_revoked_it_logs_in_again_and_resumes(cluster, redis_layer):
    a, _ = cluster
    user = await sync_to_async(bot)("py-revoked")
    topic = f"user:{user.pk}:orders"
    client = Client(a.http_url, username=user.username, password=BOT_PASSWORD, backoff_cap=0.5)
    async with client:
        events = Events(client)
        await client.subscribe(topic, snapshot=False)
        login = client.credentials
        assert isinstance(login, PasswordLogin) and login.logins == 1
        result = await asyncio.to_thread(a.manage, "ws_revoke", "--user", user.username)
        assert result.returncode == 0, result.stderr
        closed = await events.until(Disconnected)
        assert closed.code == 4410 and closed.will_reconnect
        await events.until(Connected)
        await events.until(Recovered)
        assert login.logins == 2 and login.refreshes == 0  # a new login, not the old tokens
        [order] = await sync_to_async(place)(user, 1)
        await events.update_of(order)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_at_the_connection_limit_it_stops_instead_of_retrying_in_a_loop(trader, trader_token):
    from tests.wsclient import connect, receive_type

    with live_server(realtime={"MAX_CONNECTIONS_PER_USER": 1}) as server:
        other = await connect(server.ws_url, token=trader_token)  # the user's one connection
        await receive_type(other, "AUTHENTICATION")
        client = Client(server.http_url, token=trader_token, backoff_base=0.01)
        with pytest.raises(TooManyConnections):
            await client.connect()
        seen = []
        with pytest.raises(TooManyConnections):  # once the events before the stop are read
            async for event in client.updates():
                seen.append(event)
        [closed] = [e for e in seen if isinstance(e, Disconnected)]
        assert closed.code == 4409 and not closed.will_reconnect
        await other.close()


# --- the README's examples, run as written ------------------------------------------------------

CLIENT_README = Path(__file__).resolve().parent.parent / "clients" / "python" / "README.md"
PROJECT_README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example(
    heading: str, *, server: Any, username: str, readme: Path = CLIENT_README
) -> str:
    """The first Python block after `heading`, pointed at `server` as `username`."""
    text = readme.read_text()
    section = text[text.index(heading) :]
    start = section.index("```python\n") + 10
    source = section[start : section.index("\n```\n", start)]
    for demo in ('"http://127.0.0.1:8000"', '"alice"', '"alice-demo-pass"'):
        assert demo in source, (heading, demo)
    return (
        source.replace('"http://127.0.0.1:8000"', repr(server.http_url))
        .replace('"alice-demo-pass"', repr(BOT_PASSWORD))
        .replace('"alice"', repr(username))
    )


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_the_readme_examples_print_fills_and_keep_a_position_book(live, gateway):
    user = await sync_to_async(bot)("py-readme")
    fills = Running(
        readme_example("## Example: print my fills", server=live, username=user.username)
    )
    book = Running(
        readme_example("## Example: keep a live position book", server=live, username=user.username)
    )
    try:
        await fills.wait_for(r"^watching the fills of py-readme$")
        await book.wait_for(r"^0 positions, total P&L 0: $")  # the snapshot: nothing yet
        order = await post_order(live, await sync_to_async(access_token_for)(user))
        gateway_token = await sync_to_async(access_token_for)(gateway)
        async with httpx.AsyncClient(
            base_url=live.http_url, headers={"Authorization": f"Bearer {gateway_token}"}
        ) as api:
            for quantity, price in (("0.4", "99.5"), ("0.6", "100")):
                response = await api.post(
                    f"/api/orders/{order['id']}/fills/", json={"quantity": quantity, "price": price}
                )
                assert response.status_code == 201, response.text
        await fills.wait_for(
            rf"^fill: order {order['id']} BUY AAPL: 0.4 of 1 filled, average price 99.5$"
        )
        await fills.wait_for(
            rf"^fill: order {order['id']} BUY AAPL: 1 of 1 filled, average price 99.8$"
        )
        await book.wait_for(r"^1 positions, total P&L [-0-9.]+: AAPL 0.4$")
        await book.wait_for(r"^1 positions, total P&L [-0-9.]+: AAPL 1$")
    finally:
        fills.stop()
        book.stop()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("readme", "heading"),
    [(CLIENT_README, "## Quick start"), (PROJECT_README, "## A 30-second tour")],
    ids=["the client's", "the project's tour"],
)
async def test_the_readme_quick_start_prints_a_symbols_ticks(live, staff, readme, heading):
    user = await sync_to_async(bot)("py-quick")
    quick = Running(readme_example(heading, server=live, username=user.username, readme=readme))
    try:
        await quick.wait_for(r"^Snapshot\(topic='market:BTC-USD'")
        staff_token = await sync_to_async(access_token_for)(staff)
        async with httpx.AsyncClient(
            base_url=live.http_url, headers={"Authorization": f"Bearer {staff_token}"}
        ) as api:
            tick = {"symbol": "BTC-USD", "last": "43250.25"}
            response = await api.post("/api/market-data/", json=tick)
            assert response.status_code == 202, response.text
        await quick.wait_for(
            r"^Update\(type='MARKET_DATA', topic='market:BTC-USD'.*'last': '43250.25'"
        )
    finally:
        quick.stop()
