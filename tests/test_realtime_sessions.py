"""Session revocation and the password login's limits (CONTRACT section 13), through real sockets
and real HTTP requests."""

from __future__ import annotations

import json

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model

from realtime.models import SecurityEvent, SessionRevocation
from realtime.security import recorder
from tests.conftest import access_token_for
from tests.live import run_manage, server_environment
from tests.test_realtime_limits import handshake_status
from tests.wsclient import closed_with, connect, receive_type, request

PASSWORD = "correct-horse-battery"


def _with_password(user):
    user.set_password(PASSWORD)
    user.save()
    return user


async def login(client: httpx.AsyncClient, username: str, password: str = PASSWORD, **kw):
    return await client.post(
        "/api/auth/token/", json={"username": username, "password": password}, **kw
    )


@pytest.mark.redis
@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_revoking_closes_every_connection_with_4410_and_refuses_older_tokens_everywhere(
    cluster, same_heartbeat, trader, other_trader
):
    a, b = cluster
    await sync_to_async(_with_password)(trader)
    async with httpx.AsyncClient(base_url=a.http_url, timeout=10) as client:
        tokens = (await login(client, trader.username)).json()
    old_access = tokens["access"]
    bystander = await connect(b.ws_url, token=await sync_to_async(access_token_for)(other_trader))
    await receive_type(bystander, "AUTHENTICATION")
    sockets = []
    for server in (a, b, b):
        ws = await connect(server.ws_url, token=old_access)
        await receive_type(ws, "AUTHENTICATION")
        sockets.append(ws)

    result = await sync_to_async(a.manage)("ws_revoke", "--user", trader.username, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"user": trader.username, "code": 4410, "refreshTokens": 1}

    assert [await closed_with(ws) for ws in sockets] == [4410, 4410, 4410]
    reply = await request(bystander, "HEARTBEAT")  # another user's connection is untouched
    assert reply["type"] == "HEARTBEAT"
    # The old access token: refused at the handshake on both processes, in-band, and by the API.
    for server in (a, b):
        assert await handshake_status(f"{server.ws_url}?token={old_access}") == 403
    ws = await connect(b.ws_url)
    refused = await request(ws, "AUTHENTICATION", {"token": old_access})
    assert refused["type"] == "ERROR" and refused["payload"]["code"] == "unauthenticated"
    assert "revoked" in refused["payload"]["message"]
    await ws.close()
    async with httpx.AsyncClient(base_url=b.http_url, timeout=10) as client:
        api = await client.get("/api/orders/", headers={"Authorization": f"Bearer {old_access}"})
        assert api.status_code == 401
        refreshed = await client.post(
            "/api/auth/token/refresh/", json={"refresh": tokens["refresh"]}
        )
        assert refreshed.status_code == 401
        # A new login works at once, on the API and on the socket.
        fresh = (await login(client, trader.username)).json()["access"]
        ok = await client.get("/api/orders/", headers={"Authorization": f"Bearer {fresh}"})
        assert ok.status_code == 200
    ws = await connect(a.ws_url, token=fresh)
    hello = await receive_type(ws, "AUTHENTICATION")
    assert hello["payload"]["userId"] == trader.pk
    for each in (ws, bystander):
        await each.close()
    event = await sync_to_async(SecurityEvent.objects.get)(kind="sessions_revoked")
    assert event.username == trader.username and "ws_revoke" in event.detail


def test_ws_revoke_needs_the_shared_layer(trader):
    result = run_manage(
        "ws_revoke", "--user", trader.username, env=server_environment(realtime={}, extra={})
    )
    assert result.returncode != 0
    assert "REDIS_URL" in result.stderr
    assert not SessionRevocation.objects.filter(user=trader).exists()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_the_admin_action_revokes_the_sessions_of_the_selected_users(live, trader, staff):
    staff.is_superuser = True
    staff.set_password(PASSWORD)
    await sync_to_async(staff.save)()
    token = await sync_to_async(access_token_for)(trader)
    ws = await connect(live.ws_url, token=token)
    await receive_type(ws, "AUTHENTICATION")
    async with httpx.AsyncClient(base_url=live.http_url, timeout=10) as browser:
        await browser.get("/admin/login/")
        await browser.post(
            "/admin/login/",
            data={
                "username": staff.username,
                "password": PASSWORD,
                "csrfmiddlewaretoken": browser.cookies["csrftoken"],
                "next": "/admin/",
            },
        )
        page = await browser.get("/admin/auth/user/")
        assert "Revoke sessions" in page.text
        done = await browser.post(
            "/admin/auth/user/",
            data={
                "action": "revoke_sessions",
                "_selected_action": [str(trader.pk)],
                "csrfmiddlewaretoken": browser.cookies["csrftoken"],
            },
            follow_redirects=True,
        )
        assert f"Revoked the sessions of {trader.username}" in done.text
    assert await closed_with(ws) == 4410
    assert await handshake_status(f"{live.ws_url}?token={token}") == 403
    revocation = await sync_to_async(SessionRevocation.objects.get)(user=trader)
    assert revocation.revoked_by == f"admin {staff.username}"


def test_a_token_from_the_same_second_as_a_revocation_is_judged_by_its_auth_time(trader):
    """`iat` is whole seconds; `auth_time` (a password login's) says which side it is on."""
    from datetime import timedelta

    from django.utils import timezone
    from rest_framework_simplejwt.tokens import AccessToken

    from realtime.sessions import token_revoked

    moment = timezone.now()
    SessionRevocation.objects.create(user=trader, revoked_at=moment)
    trader = get_user_model().objects.select_related("session_revocation").get(pk=trader.pk)
    token = AccessToken.for_user(trader)
    token["iat"] = int(moment.timestamp())  # the revocation's second, rounded down
    assert token_revoked(trader, token)
    token["auth_time"] = (moment + timedelta(milliseconds=5)).timestamp()
    assert not token_revoked(trader, token)
    token["auth_time"] = (moment - timedelta(milliseconds=5)).timestamp()
    assert token_revoked(trader, token)


# --- the password login's limits -----------------------------------------------------------------


def test_logins_over_the_per_ip_limit_answer_429_with_retry_after(api_client, trader, settings):
    settings.REALTIME = {"LOGINS_PER_MIN": 10, "AUTH_FAILURES_PER_IP": 0}
    _with_password(trader)
    codes = [
        api_client.post(
            "/api/auth/token/", {"username": trader.username, "password": f"wrong-{n}"}
        ).status_code
        for n in range(12)
    ]
    assert codes == [401] * 10 + [429, 429]
    throttled = api_client.post(
        "/api/auth/token/", {"username": trader.username, "password": PASSWORD}
    )
    assert throttled.status_code == 429
    assert 0 < int(throttled.headers["Retry-After"]) <= 60
    recorder.flush()
    counts: dict[str, int] = {}
    for event in SecurityEvent.objects.all():  # one row per kind, or two across a minute's end
        counts[event.kind] = counts.get(event.kind, 0) + event.count
    assert counts == {"login_failed": 10, "login_throttled": 3}
    assert set(SecurityEvent.objects.values_list("username", flat=True)) == {trader.username}


def test_logins_over_the_per_username_limit_are_refused_from_any_address(
    api_client, trader, settings
):
    settings.REALTIME = {"LOGINS_PER_MIN": 3, "TRUSTED_PROXIES": ["127.0.0.1"]}
    _with_password(trader)
    codes = [
        api_client.post(
            "/api/auth/token/",
            {"username": trader.username.upper() if n % 2 else trader.username, "password": "x"},
            HTTP_X_FORWARDED_FOR=f"203.0.113.{n}",
        ).status_code
        for n in range(4)
    ]
    assert codes == [401, 401, 401, 429]
    # Another user from one of those addresses is not limited by it.
    other = api_client.post(
        "/api/auth/token/",
        {"username": "someone-else", "password": "x"},
        HTTP_X_FORWARDED_FOR="203.0.113.0",
    )
    assert other.status_code == 401


def test_a_login_within_the_limits_gets_tokens_with_auth_time(api_client, trader, settings):
    settings.REALTIME = {"LOGINS_PER_MIN": 10}
    _with_password(trader)
    response = api_client.post(
        "/api/auth/token/", {"username": trader.username, "password": PASSWORD}
    )
    assert response.status_code == 200
    from rest_framework_simplejwt.tokens import AccessToken

    access = AccessToken(response.json()["access"])
    assert isinstance(access["auth_time"], float)


def test_zero_turns_the_login_limit_off(api_client, trader, settings):
    settings.REALTIME = {"LOGINS_PER_MIN": 0, "AUTH_FAILURES_PER_IP": 0}
    codes = {
        api_client.post("/api/auth/token/", {"username": "x", "password": "y"}).status_code
        for _ in range(30)
    }
    assert codes == {401}


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_forty_wrong_passwords_in_a_row_meet_the_limit_over_real_http(trader):
    """The issue's reproduction, as a new user would try it, against the contract's defaults."""
    from tests.live import live_server

    defaults = {"LOGINS_PER_MIN": 10, "AUTH_FAILURES_PER_IP": 20}
    await sync_to_async(_with_password)(trader)
    with live_server(realtime=defaults) as server:
        async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as client:
            codes = [
                (await login(client, trader.username, f"guess-{n}")).status_code for n in range(40)
            ]
            assert codes[:10] == [401] * 10
            assert set(codes[10:]) == {429}
            last = await login(client, trader.username, "one-more-guess")
            assert "Retry-After" in last.headers


# --- verified access tokens, kept until they expire (realtime.auth.VerifiedTokens) ----------------


@pytest.fixture
def decodes(monkeypatch):
    """How many times simplejwt decoded (verified the signature of) a token."""
    from rest_framework_simplejwt.backends import TokenBackend

    calls: list[str] = []
    decode = TokenBackend.decode

    def counted(self, token, verify=True):
        calls.append(token)
        return decode(self, token, verify)

    monkeypatch.setattr(TokenBackend, "decode", counted)
    return calls


def test_a_token_is_verified_once_and_refused_once_it_expires(trader, decodes, monkeypatch):
    from realtime.auth import TokenRejected, validate_token, verified_tokens

    raw = access_token_for(trader)
    first = validate_token(raw)
    assert validate_token(raw) is first and decodes == [raw]
    leeway = first.get_token_backend().get_leeway().total_seconds()
    expiry = first["exp"] + leeway
    monkeypatch.setattr(verified_tokens, "clock", lambda: expiry - 0.001)
    assert validate_token(raw) is first
    monkeypatch.setattr(verified_tokens, "clock", lambda: expiry)
    with pytest.raises(TokenRejected, match=r"^Token is expired$"):
        validate_token(raw)
    # forgotten: decoded again, and simplejwt's own check (on the real clock) still accepts it
    assert validate_token(raw)["exp"] == first["exp"] and decodes == [raw, raw]


def test_only_the_most_recently_used_tokens_are_kept(trader, decodes, monkeypatch):
    """Bounded: not a copy of every connection's token; the one in use stays."""
    from rest_framework_simplejwt.tokens import AccessToken

    from realtime.auth import validate_token, verified_tokens

    monkeypatch.setattr(verified_tokens, "MAX_ENTRIES", 3)
    feed = access_token_for(trader)
    others = [str(AccessToken.for_user(trader)) for _ in range(5)]
    validate_token(feed)
    for other in others:
        validate_token(other)
        validate_token(feed)  # in use: never the least recently used
    assert len(verified_tokens) == 3
    assert decodes.count(feed) == 1
    validate_token(others[0])  # long evicted: verified again
    assert decodes.count(others[0]) == 2


def test_a_refused_token_is_never_kept(trader, decodes):
    from realtime.auth import TokenRejected, validate_token

    forged = access_token_for(trader) + "x"
    for _ in range(2):
        with pytest.raises(TokenRejected):
            validate_token(forged)
    assert decodes == [forged, forged]


def test_a_change_of_the_jwt_settings_forgets_every_kept_token(trader, settings, decodes):
    """Decoded again, by whatever the new settings make simplejwt decode with."""
    from realtime.auth import validate_token

    raw = access_token_for(trader)
    validate_token(raw)
    settings.SIMPLE_JWT = {**settings.SIMPLE_JWT, "LEEWAY": 1}
    validate_token(raw)
    assert decodes == [raw, raw]


@pytest.mark.django_db(transaction=True)
async def test_a_kept_token_is_still_refused_once_its_sessions_are_revoked(trader):
    """What can change about a valid token, its user's revocation, is checked on every use."""
    from realtime import sessions
    from realtime.auth import TokenRejected, authenticate_token_async, user_cache

    raw = await sync_to_async(access_token_for)(trader)
    assert (await authenticate_token_async(raw)).user.pk == trader.pk
    await sync_to_async(sessions.user_sessions_revoke)(user=trader, by="test")
    user_cache.clear()  # as the hub's control message does on every process
    with pytest.raises(TokenRejected, match="sessions were revoked"):
        await authenticate_token_async(raw)
