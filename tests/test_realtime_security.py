"""Security events (CONTRACT section 13): each kind recorded where it happens, aggregated per kind,
IP, user and minute, shown by `GET /ws/security` and the admin; and the logs that go with them."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from realtime.models import IPBlock, SecurityEvent
from realtime.security import EventKind, EventRecorder, recorder
from tests.conftest import access_token_for
from tests.live import eventually, live_server
from tests.test_realtime_limits import handshake_status
from tests.wsclient import closed_with, connect, receive_type, request, subscribe


def _totals() -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in SecurityEvent.objects.all():
        counts[event.kind] = counts.get(event.kind, 0) + event.count
    return counts


# --- the recorder ------------------------------------------------------------------------------


def test_a_flood_of_events_is_one_row_per_bucket_with_its_count(db):
    for _ in range(1000):
        recorder.record(EventKind.AUTH_FAILED, ip="198.51.100.1", detail="bad token")
    recorder.record(EventKind.AUTH_FAILED, ip="198.51.100.2", detail="bad token")
    assert recorder.flush() == 1001
    rows = list(SecurityEvent.objects.order_by("ip").values_list("ip", "count"))
    first = [count for ip, count in rows if ip == "198.51.100.1"]
    assert sum(first) == 1000 and len(first) <= 2  # two only if the minute turned meanwhile
    assert [count for ip, count in rows if ip == "198.51.100.2"] == [1]
    # A second flush adds to the same rows.
    recorder.record(EventKind.AUTH_FAILED, ip="198.51.100.2", detail="again")
    recorder.flush()
    latest = SecurityEvent.objects.filter(ip="198.51.100.2").order_by("-minute").first()
    assert latest is not None and latest.detail == "again"
    assert sum(SecurityEvent.objects.filter(ip="198.51.100.2").values_list("count", flat=True)) == 2


def test_buckets_are_per_minute(db):
    local = EventRecorder()
    local.background = False
    moment = [timezone.now().replace(second=10).timestamp()]
    local.clock = lambda: moment[0]
    local.record(EventKind.RATE_LIMITED, ip="192.0.2.1")
    moment[0] += 60
    local.record(EventKind.RATE_LIMITED, ip="192.0.2.1")
    local.flush()
    minutes = list(SecurityEvent.objects.values_list("minute", flat=True).order_by("minute"))
    assert len(minutes) == 2 and minutes[1] - minutes[0] == timedelta(minutes=1)


def test_events_that_cannot_be_written_are_kept_for_the_next_flush(db, monkeypatch):
    from realtime import security

    recorder.record(EventKind.ORIGIN_REFUSED, ip="192.0.2.9")

    def broken(bucket, tally):
        raise RuntimeError("database down")

    monkeypatch.setattr(security, "_add", broken)
    with pytest.raises(RuntimeError):
        recorder.flush()
    assert recorder.pending() == 1
    monkeypatch.undo()
    assert recorder.flush() == 1
    assert _totals() == {"origin_refused": 1}


def test_old_events_are_pruned(db, settings):
    settings.REALTIME = {"SECURITY_EVENT_RETENTION_DAYS": 7}
    now = timezone.now()
    for age in (1, 8):
        SecurityEvent.objects.create(
            kind="auth_failed",
            ip=f"192.0.2.{age}",
            minute=now - timedelta(days=age),
            count=1,
            last_at=now,
        )
    assert recorder.prune() == 1
    assert list(SecurityEvent.objects.values_list("ip", flat=True)) == ["192.0.2.1"]


# --- recorded where it happens -----------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_a_thousand_bad_tokens_are_a_handful_of_rows_with_counts(staff):
    with live_server(realtime={"AUTH_FAILURES_PER_IP": 5000}) as server:

        async def bad(number: int) -> int:
            return await handshake_status(f"{server.ws_url}?token=forged-{number}")

        for start in range(0, 1000, 50):
            statuses = await asyncio.gather(*(bad(n) for n in range(start, start + 50)))
            assert set(statuses) == {403}
        token = await sync_to_async(access_token_for)(staff)

        def report():
            response = httpx.get(
                f"{server.http_url}/ws/security",
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
            assert response.status_code == 200, response.text
            document = response.json()
            return document if document["totals"].get("auth_failed") == 1000 else None

        document = await eventually(report, timeout=15)
        assert document, "the 1,000 failures never all reached /ws/security"
    rows = [e for e in document["events"] if e["kind"] == "auth_failed"]
    assert 1 <= len(rows) <= 2  # one per minute the burst touched
    assert {row["ip"] for row in rows} == {"127.0.0.1"}
    assert sum(row["count"] for row in rows) == 1000
    assert "handshake token refused" in rows[0]["detail"]
    assert document["blocks"] == []


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_each_kind_on_the_socket_is_recorded_with_the_client_and_user(trader, other_trader):
    settings = {
        "RATE_LIMIT_PER_SEC": 1,
        "RATE_LIMIT_BURST": 5,
        "RATE_LIMIT_MAX_STRIKES": 2,
        "MAX_MESSAGE_BYTES": 1024,
    }
    with live_server(realtime=settings) as server:
        origin = await handshake_status(
            server.ws_url, additional_headers={"Origin": "https://evil.example"}
        )
        assert origin == 403
        ws = await connect(server.ws_url, token=await sync_to_async(access_token_for)(trader))
        await receive_type(ws, "AUTHENTICATION")
        ack = await subscribe(ws, f"user:{other_trader.pk}:orders")
        assert ack["rejected"][0]["reason"] == "forbidden"
        await ws.send(json.dumps({"type": "HEARTBEAT", "payload": {"padding": "x" * 2000}}))
        too_large = await receive_type(ws, "ERROR")  # a frame too large is unread: no id
        assert too_large["payload"]["code"] == "message_too_large"
        for _ in range(10):
            await ws.send(json.dumps({"type": "HEARTBEAT"}))
        assert await closed_with(ws) == 4429
    totals = await sync_to_async(_totals)()
    assert totals["origin_refused"] == 1
    assert totals["forbidden_subscription"] == 1
    assert totals["message_too_large"] == 1
    assert totals["rate_limited"] >= 2
    assert totals["rate_limit_closed"] == 1
    forbidden = await sync_to_async(SecurityEvent.objects.get)(kind="forbidden_subscription")
    assert (forbidden.ip, forbidden.user_id, forbidden.username) == (
        "127.0.0.1",
        trader.pk,
        trader.username,
    )
    assert f"user:{other_trader.pk}:orders" in forbidden.detail


# --- GET /ws/security ----------------------------------------------------------------------------


def test_the_security_report_lists_the_last_hours_events_and_the_blocks_in_force(
    staff_client, trader
):
    now = timezone.now()
    SecurityEvent.objects.create(
        kind="auth_failed", ip="192.0.2.1", minute=now - timedelta(hours=2), count=5, last_at=now
    )
    recorder.record(EventKind.AUTH_FAILED, ip="192.0.2.1", detail="bad token")
    recorder.record(
        EventKind.FORBIDDEN_SUBSCRIPTION, ip="192.0.2.2", user_id=trader.pk, username="alice"
    )
    IPBlock.objects.create(
        ip="192.0.2.1", blocked_at=now, expires_at=now + timedelta(minutes=5), failures=21
    )
    IPBlock.objects.create(ip="192.0.2.3", blocked_at=now, expires_at=now - timedelta(seconds=1))
    response = staff_client.get("/ws/security")
    assert response.status_code == 200
    document = response.json()
    assert document["totals"] == {"auth_failed": 1, "forbidden_subscription": 1}
    forbidden = next(e for e in document["events"] if e["kind"] == "forbidden_subscription")
    assert forbidden["userId"] == trader.pk and forbidden["username"] == "alice"
    assert [(b["ip"], b["failures"]) for b in document["blocks"]] == [("192.0.2.1", 21)]


def test_the_security_report_is_for_staff_and_connection_viewers_only(
    api_client, trader_client, trader
):
    assert api_client.get("/ws/security").status_code == 401
    assert trader_client.get("/ws/security").status_code == 403
    from django.contrib.auth.models import Permission

    trader.user_permissions.add(Permission.objects.get(codename="view_connection"))
    assert trader_client.get("/ws/security").status_code == 200


# --- the admin -----------------------------------------------------------------------------------


def test_security_events_are_read_only_in_the_admin_with_filters(admin_client):
    recorder.record(EventKind.AUTH_FAILED, ip="192.0.2.1", detail="<script>bad</script>")
    recorder.flush()
    page = admin_client.get("/admin/realtime/securityevent/?kind=auth_failed")
    assert page.status_code == 200
    assert b"192.0.2.1" in page.content
    assert b"<script>bad" not in page.content  # shown escaped
    event = SecurityEvent.objects.get()
    assert admin_client.get(f"/admin/realtime/securityevent/{event.pk}/change/").status_code == 200
    assert admin_client.get("/admin/realtime/securityevent/add/").status_code == 403


def test_the_unblock_action_lifts_a_block_in_the_store_and_the_records(admin_client):
    from asgiref.sync import async_to_sync

    from realtime.limits import get_limits, memory_limits

    for _ in range(3):
        async_to_sync(memory_limits().failure)("192.0.2.50", 2, 300, 300)
    assert async_to_sync(get_limits().blocked_until)("192.0.2.50") is not None
    now = timezone.now()
    block = IPBlock.objects.create(
        ip="192.0.2.50", blocked_at=now, expires_at=now + timedelta(minutes=5), failures=3
    )
    listing = admin_client.get("/admin/realtime/ipblock/?active=yes")
    assert b"192.0.2.50" in listing.content
    response = admin_client.post(
        "/admin/realtime/ipblock/",
        {"action": "unblock_selected", "_selected_action": [str(block.pk)]},
        follow=True,
    )
    assert b"Unblocked 192.0.2.50" in response.content
    assert async_to_sync(get_limits().blocked_until)("192.0.2.50") is None
    block.refresh_from_db()
    assert block.lifted_at is not None and block.lifted_by == "admin"


# --- logs ------------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_json_logs_name_the_connection_user_and_client_and_never_a_token(trader):
    token = await sync_to_async(access_token_for)(trader)
    env = {"DJANGO_LOG_FORMAT": "json", "DJANGO_LOG_LEVEL": "INFO"}
    with live_server(env=env) as server:
        ws = await connect(server.ws_url, token=token)
        hello = await receive_type(ws, "AUTHENTICATION")
        connection_id = hello["payload"]["connectionId"]
        # A forbidden topic is logged as a security event on the connection's behalf; a refused
        # in-band token goes into a log line too, and must not take the token with it.
        await subscribe(ws, "orders")
        await request(ws, "AUTHENTICATION", {"token": token + "x"})
        await ws.close()
        # A username is the client's text, logged with the login_failed event: a newline in it
        # must not start a forged line.
        async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as client:
            await client.post(
                "/api/auth/token/",
                json={"username": "mallory\n2026-01-01 CRITICAL forged", "password": "x"},
            )

        def logged():
            lines = [line for line in server.log().splitlines() if line.startswith("{")]
            wanted = ("forbidden_subscription", "login_failed")
            return lines if all(any(w in line for line in lines) for w in wanted) else None

        lines = await eventually(logged)
    assert lines
    entries = [json.loads(line) for line in lines]
    on_connection = [e for e in entries if e.get("connection_id") == connection_id]
    assert any("forbidden_subscription" in e["message"] for e in on_connection)
    assert all(e["user_id"] == trader.pk and e["client_ip"] == "127.0.0.1" for e in on_connection)
    log = server.log()
    assert token not in log
    assert token.split(".")[1] not in log
    assert not any("CRITICAL forged" in line for line in log.splitlines() if line[:1] != "{")
    login = next(e for e in entries if "login_failed" in e["message"])
    assert "mallory\\n2026-01-01 CRITICAL forged" in login["message"]


def test_the_log_filter_redacts_tokens_and_escapes_control_characters():
    import logging

    from tradingrt.logs import ContextFilter, PlainFormatter, bind, log_context

    record = logging.LogRecord(
        "realtime", logging.INFO, __file__, 1, "refused %s from %s", ("eyJa.eyJb.sig", "x\ny"), None
    )
    reset = log_context.set(None)
    try:
        bind(connection_id="c1", user_id=7, client_ip="192.0.2.1")
        assert ContextFilter().filter(record)
    finally:
        log_context.reset(reset)
    text = PlainFormatter().format(record)
    assert "eyJa" not in text and "[token]" in text
    assert "\n" not in text and "x\\ny" in text
    assert text.endswith("[connection=c1 user=7 client=192.0.2.1]")
