"""POST /api/market-data/ (CONTRACT section 1): who may publish, what it accepts, and that the
request is handled on the event loop (realtime.views.EventLoopAPIView), answering exactly as
DRF would everywhere else."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Permission
from django.test import AsyncClient, Client

from realtime import views
from realtime.market_data import market_data
from realtime.serializers import MAX_TICKS_PER_REQUEST
from tests.conftest import _client_for, access_token_for
from tests.factories import UserFactory

URL = "/api/market-data/"
TICK = {"symbol": "AAPL", "last": "189.5", "bid": "189.49", "ask": "189.51"}


@pytest.fixture
def feed(db):
    """A market-data feed account: no staff status, only realtime.publish_market_data."""
    user = UserFactory(username="feed")
    user.user_permissions.add(Permission.objects.get(codename="publish_market_data"))
    return user


def test_staff_publish_one_tick_or_a_list(staff_client, published):
    response = staff_client.post(URL, TICK, format="json")
    assert response.status_code == 202 and response.json() == {"accepted": 1}
    response = staff_client.post(URL, [TICK, TICK | {"symbol": "msft"}], format="json")
    assert response.status_code == 202 and response.json() == {"accepted": 2}
    assert [[tick.symbol for tick in batch] for batch in published] == [
        ["AAPL"],
        ["AAPL", "MSFT"],
    ]


def test_a_holder_of_the_permission_may_publish(feed, published):
    response = _client_for(feed).post(URL, TICK, format="json")
    assert response.status_code == 202, response.content
    assert len(published) == 1


def test_a_trader_is_refused_and_nothing_is_published(trader_client, published):
    response = trader_client.post(URL, TICK, format="json")
    assert response.status_code == 403
    assert response.json() == {"detail": "You do not have permission to perform this action."}
    assert published == []


def test_no_credentials_or_a_bad_token_get_drfs_401(api_client, staff, published):
    response = api_client.post(URL, TICK, format="json")
    assert response.status_code == 401
    assert response.json()["detail"] == "Authentication credentials were not provided."
    assert response["WWW-Authenticate"].startswith("Bearer")
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_for(staff)}x")
    response = api_client.post(URL, TICK, format="json")
    assert response.status_code == 401
    assert response.json()["code"] == "token_not_valid"
    api_client.credentials(HTTP_AUTHORIZATION="Bearer two parts")
    response = api_client.post(URL, TICK, format="json")
    assert response.status_code == 401
    assert response.json()["code"] == "bad_authorization_header"
    assert published == []


def test_an_inactive_users_token_is_refused(staff, api_client, published):
    token = access_token_for(staff)
    staff.is_active = False
    staff.save()
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    response = api_client.post(URL, TICK, format="json")
    assert response.status_code == 401
    assert published == []


def test_a_staff_session_needs_the_csrf_token(staff, published):
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    response = client.post(URL, TICK, content_type="application/json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]
    client.get("/admin/")  # sets the csrftoken cookie
    token = client.cookies["csrftoken"].value
    response = client.post(URL, TICK, content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 202, response.content
    assert len(published) == 1


def test_bad_ticks_get_field_errors_and_nothing_is_published(staff_client, published):
    response = staff_client.post(URL, {"symbol": "AAPL", "last": "-1"}, format="json")
    assert response.status_code == 400 and "last" in response.json()
    response = staff_client.post(URL, [TICK, {"last": "1"}], format="json")
    assert response.status_code == 400
    assert response.json() == {"1": {"symbol": ["This field is required."]}}
    response = staff_client.post(URL, [TICK] * (MAX_TICKS_PER_REQUEST + 1), format="json")
    assert response.status_code == 400
    response = staff_client.post(URL, "not json", content_type="application/json")
    assert response.status_code == 400
    assert published == []


def test_other_methods_answer_as_drf_does(staff_client):
    assert staff_client.get(URL).status_code == 405
    options = staff_client.options(URL)
    assert options.status_code == 200 and options.json()["name"] == "Market Data"


@pytest.mark.django_db(transaction=True)
async def test_a_cached_bearer_token_is_published_without_leaving_the_event_loop(
    staff, monkeypatch, thread_handoffs
):
    """No thread handoff between the view's start and the publish, once the user is cached."""
    thread_handoffs()  # start counting
    at_publish: list[int] = []
    at_dispatch: list[int] = []

    async def apublish(ticks):
        at_publish.append(thread_handoffs())

    dispatch = views.MarketDataView._dispatch

    async def observed(self, *args, **kwargs):
        at_dispatch.append(thread_handoffs())
        return await dispatch(self, *args, **kwargs)

    monkeypatch.setattr(market_data, "apublish", apublish)
    monkeypatch.setattr(views.MarketDataView, "_dispatch", observed)
    token = await sync_to_async(access_token_for)(staff)
    client = AsyncClient()
    for _ in range(2):  # the first loads the user (a thread), the second finds it cached
        response = await client.post(
            URL, TICK, content_type="application/json", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 202, response.content
    assert len(at_publish) == 2
    assert at_publish[0] - at_dispatch[0] >= 1, "the first request loads the user in a thread"
    assert at_publish[1] - at_dispatch[1] == 0, "the second never leaves the loop"


@pytest.mark.django_db(transaction=True)
async def test_a_failed_marking_keeps_its_ticks_and_is_tried_again(monkeypatch, caplog):
    """The ticks are published; a database that fails the marking (here: locked) fails neither
    the request nor the marks for good: the ticks are kept and marked one interval later."""
    from django.db import OperationalError

    from market.ticks import Tick
    from positions.models import Position
    from realtime import market_data as module
    from tests.factories import PositionFactory

    position = await sync_to_async(PositionFactory)(
        symbol="AAPL", quantity=Decimal(1), average_price=Decimal(100), market_price=Decimal(100)
    )
    calls: list[int] = []
    real_mark = module.market_mark

    def locked_once(*, ticks):
        calls.append(len(ticks))
        if len(calls) == 1:
            raise OperationalError("database is locked")
        return real_mark(ticks=ticks)

    monkeypatch.setattr(module, "market_mark", locked_once)
    service = module.MarketDataService()
    await service.apublish([Tick(symbol="AAPL", last=Decimal("189.5"))])
    assert calls == [1] and service.marks == 0
    assert "Marking to market failed; trying again" in caplog.text
    for _ in range(100):  # retried one interval (0.5 s) later
        if service.marks:
            break
        await asyncio.sleep(0.05)
    assert calls == [1, 1] and service.marks == 1
    await position.arefresh_from_db()
    assert position.market_price == Decimal("189.5")
    assert await Position.objects.acount() == 1
