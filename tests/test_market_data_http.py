"""`POST /api/market-data/` on the event loop (realtime.market_data_http): a feed's valid post is
answered without Django's request cycle, byte for byte as Django answers it, and every other
request goes to Django with its body, so every refusal is still Django's and DRF's own."""

from __future__ import annotations

import json

import httpx
import pytest
from asgiref.sync import sync_to_async
from channels.testing import HttpCommunicator
from django.contrib.auth.models import Permission

from realtime import stats
from realtime.market_data import MarketDataUnavailable, market_data
from realtime.serializers import MAX_TICKS_PER_REQUEST
from tests.conftest import access_token_for
from tests.factories import UserFactory
from tests.live import eventually
from tests.test_realtime_metrics import parse
from tests.wsclient import connect, receive_type, subscribe

URL = "/api/market-data/"
TICK = {"symbol": "AAPL", "last": "189.5", "bid": "189.49", "ask": "189.51"}
JSON = (b"content-type", b"application/json")
HOST = (b"host", b"localhost")
FORM = b"application/x-www-form-urlencoded"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def apps():
    from tradingrt import asgi

    return asgi.application, asgi.django_asgi_app


def bearer(user) -> tuple[bytes, bytes]:
    return (b"authorization", f"Bearer {access_token_for(user)}".encode())


async def post(app, body: bytes, headers) -> tuple[int, list, bytes]:
    length = (b"content-length", str(len(body)).encode())
    communicator = HttpCommunicator(app, "POST", URL, body=body, headers=[HOST, length, *headers])
    response = await communicator.get_response(timeout=10)
    await communicator.send_input({"type": "http.disconnect"})
    await communicator.wait(timeout=10)
    return response["status"], sorted(response["headers"]), response["body"]


async def both_ways(apps, body: bytes, headers, *, exact: bool = True) -> tuple[tuple, str]:
    """The whole application's answer, which path took it, and Django's own answer to the same."""
    application, django_app = apps
    before = dict(stats.counters)
    mine = await post(application, body, headers)
    took = [
        name
        for name in ("market_data_direct", "market_data_via_django")
        if stats.counters[name] > before.get(name, 0)
    ]
    assert len(took) == 1, took
    theirs = await post(django_app, body, headers)
    if exact:
        assert mine == theirs, f"{took[0]} answered differently from Django"
    else:  # a page with a fresh CSRF token in it each time: the same status
        assert mine[0] == theirs[0], f"{took[0]} answered differently from Django"
    return mine, took[0]


def ticks(*items) -> bytes:
    return json.dumps(items[0] if len(items) == 1 else list(items)).encode()


async def test_a_valid_post_is_answered_directly_exactly_as_django_answers_it(
    apps, staff, published
):
    auth = await sync_to_async(bearer)(staff)
    (status, headers, body), took = await both_ways(apps, ticks(TICK), [auth, JSON])
    assert (status, json.loads(body), took) == (202, {"accepted": 1}, "market_data_direct")
    names = {name.lower() for name, _ in headers}
    assert {b"x-frame-options", b"x-content-type-options", b"referrer-policy", b"allow"} <= names
    other = {"symbol": "msft", "last": "411.2", "bid": None, "volume": "1200"}
    many = ticks(TICK, other | {"timestamp": "2026-11-29T10:00:00.123Z"})
    charset = (b"content-type", b"application/json; charset=utf-8")
    for extra in ([JSON], [charset, (b"accept", b"application/json")], [JSON, (b"accept", b"*/*")]):
        (status, _, body), took = await both_ways(apps, many, [auth, *extra])
        assert (status, json.loads(body), took) == (202, {"accepted": 2}, "market_data_direct")
    # each answer twice (the direct path's, then Django's): the same ticks, field for field
    assert [[tick.symbol for tick in batch] for batch in published] == [["AAPL"]] * 2 + [
        ["AAPL", "MSFT"]
    ] * 6
    for direct, django in zip(published[::2], published[1::2], strict=True):
        assert direct == django


async def test_a_failed_publish_gets_drfs_503_with_retry_after(apps, staff, monkeypatch):
    async def down(ticks):
        raise MarketDataUnavailable(0, len(ticks), "Redis is down")

    monkeypatch.setattr(market_data, "apublish", down)
    auth = await sync_to_async(bearer)(staff)
    (status, headers, body), took = await both_ways(apps, ticks(TICK), [auth, JSON])
    assert (status, took) == (503, "market_data_direct")
    assert (b"Retry-After", b"1") in headers
    assert "Redis is down" in json.loads(body)["detail"]


async def test_a_holder_of_the_permission_is_answered_directly(apps, published):
    def make_feed():
        user = UserFactory(username="feed")
        user.user_permissions.add(Permission.objects.get(codename="publish_market_data"))
        return bearer(user)

    auth = await sync_to_async(make_feed)()
    (status, _, _), took = await both_ways(apps, ticks(TICK), [auth, JSON])
    assert (status, took) == (202, "market_data_direct")


async def test_every_other_request_is_djangos_to_answer(apps, staff, trader, published, settings):
    staff_auth = await sync_to_async(bearer)(staff)
    trader_auth = await sync_to_async(bearer)(trader)
    good = ticks(TICK)
    refused = {
        "no credentials": (good, [JSON], 401),
        "a bad token": (good, [(b"authorization", staff_auth[1] + b"x"), JSON], 401),
        "not a bearer token": (good, [(b"authorization", b"Basic abc"), JSON], 401),
        "a trader": (good, [trader_auth, JSON], 403),
        "a cookie (a browser's session)": (good, [staff_auth, JSON, (b"cookie", b"a=b")], 202),
        "another content type": (good, [staff_auth, (b"content-type", b"text/plain")], 415),
        "a form": (b"symbol=AAPL&last=1", [staff_auth, (b"content-type", FORM)], 202),
        "a bad tick": (ticks({"symbol": "AAPL", "last": "-1"}), [staff_auth, JSON], 400),
        "too many ticks": (ticks(*[TICK] * (MAX_TICKS_PER_REQUEST + 1)), [staff_auth, JSON], 400),
        "not JSON": (b"not json", [staff_auth, JSON], 400),
        "NaN": (b'{"symbol": "AAPL", "last": NaN}', [staff_auth, JSON], 400),
        "UTF-16": (json.dumps(TICK).encode("utf-16"), [staff_auth, JSON], 400),
        "two Authorization headers": (good, [staff_auth, staff_auth, JSON], 401),
    }
    for why, (body, headers, expected) in refused.items():
        (status, _, _), took = await both_ways(apps, body, headers)
        assert (status, took) == (expected, "market_data_via_django"), why
    html = [staff_auth, JSON, (b"accept", b"text/html")]  # DRF's browsable API
    (status, _, _), took = await both_ways(apps, good, html, exact=False)
    assert (status, took) == (202, "market_data_via_django")
    (status, _, _), took = await both_ways(
        apps, good, [staff_auth, JSON, (b"host", b"evil.example")]
    )
    assert (status, took) == (400, "market_data_via_django")
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 50
    (status, _, _), took = await both_ways(apps, ticks(TICK, TICK), [staff_auth, JSON])
    assert (status, took) == (400, "market_data_via_django")
    # both ways: the cookie's, the form's, the browsable API's; nothing refused was published
    assert [[tick.symbol for tick in batch] for batch in published] == [["AAPL"]] * 6


async def test_a_body_in_several_parts_is_read_whole_and_replayed_to_django(apps, staff, published):
    """Django reads the body again after this module has read it (here: a refused token)."""
    application, _ = apps
    token = await sync_to_async(access_token_for)(staff)
    body = ticks(TICK)
    for auth, expected in ((f"Bearer {token}", 202), (f"Bearer {token}x", 401)):
        length = (b"content-length", str(len(body)).encode())
        communicator = HttpCommunicator(
            application,
            "POST",
            URL,
            headers=[HOST, JSON, length, (b"authorization", auth.encode())],
        )
        await communicator.send_input(
            {"type": "http.request", "body": body[:10], "more_body": True}
        )
        await communicator.send_input({"type": "http.request", "body": body[10:]})
        response = await communicator.receive_output(10)
        assert response["status"] == expected
        await communicator.receive_output(10)
    assert [[tick.symbol for tick in batch] for batch in published] == [["AAPL"]]


@pytest.mark.e2e
async def test_a_feeds_tick_reaches_a_subscriber_through_the_direct_path_on_daphne(
    live, staff, trader
):
    """Over real sockets: the tick is delivered, and the server counted the direct path (and the
    refused post as Django's)."""
    staff_token = await sync_to_async(access_token_for)(staff)
    ws = await connect(live.ws_url, token=await sync_to_async(access_token_for)(trader))
    await receive_type(ws, "AUTHENTICATION")
    await subscribe(ws, "market:DIRECT")
    async with httpx.AsyncClient(base_url=live.http_url, timeout=10) as client:
        auth = {"Authorization": f"Bearer {staff_token}"}
        before = parse((await client.get("/metrics", headers=auth)).text)
        answer = await client.post(URL, json={"symbol": "DIRECT", "last": "12.5"}, headers=auth)
        assert answer.status_code == 202 and answer.json() == {"accepted": 1}
        assert answer.headers["x-content-type-options"] == "nosniff"
        update = await receive_type(ws, "MARKET_DATA")
        assert update["payload"]["symbol"] == "DIRECT" and update["payload"]["last"] == "12.5"
        refused = await client.post(URL, json=TICK, headers={"Authorization": "Bearer nope"})
        assert refused.status_code == 401 and refused.json()["code"] == "token_not_valid"

        def counted():
            now = parse(httpx.get(f"{live.http_url}/metrics", headers=auth, timeout=10).text)
            moved = {
                stat: now.get(f'tradingrt_realtime_stats_total{{name="{stat}"}}', 0)
                - before.get(f'tradingrt_realtime_stats_total{{name="{stat}"}}', 0)
                for stat in ("market_data_direct", "market_data_via_django")
            }
            return (
                moved if moved == {"market_data_direct": 1, "market_data_via_django": 1} else None
            )

        assert await eventually(counted), "the live server did not count both paths"
    await ws.close()
