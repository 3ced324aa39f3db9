"""The connection manager: records, /ws/status, dead processes, admin and operator commands."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.utils import timezone

from realtime.models import Connection, ServerProcess, Subscription
from realtime.selectors import connection_status
from tests.conftest import access_token_for
from tests.live import connections_of, eventually, live_server
from tests.wsclient import closed_with, connect, receive, receive_type, request, subscribe

HEARTBEAT = 0.5  # seconds; the servers below and this process agree on it


@pytest.fixture(scope="module")
def fast_live(django_db_setup):
    """A server heartbeating every 0.5 s and pruning every second."""
    with live_server(
        realtime={"HEARTBEAT_INTERVAL_SECS": HEARTBEAT, "PRUNE_INTERVAL_SECS": 1.0}
    ) as server:
        yield server


@pytest.fixture
def fast_heartbeat(settings):
    settings.REALTIME = {"HEARTBEAT_INTERVAL_SECS": HEARTBEAT}


def status_of(server) -> dict:
    return connection_status()


# --- records and counts --------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_status_counts_follow_connects_subscribes_unsubscribes_and_disconnects(
    fast_live, fast_heartbeat, trader, other_trader, staff
):
    alice_token = await sync_to_async(access_token_for)(trader)
    bob_token = await sync_to_async(access_token_for)(other_trader)
    alice_1 = await connect(fast_live.ws_url, token=alice_token, user_agent_header="desk/1.0")
    alice_2 = await connect(fast_live.ws_url, token=alice_token)
    bob = await connect(fast_live.ws_url, token=bob_token)
    for ws in (alice_1, alice_2, bob):
        await receive_type(ws, "AUTHENTICATION")
    await subscribe(alice_1, f"user:{trader.pk}:orders", "market:AAPL")
    await subscribe(alice_2, "market:AAPL")
    await subscribe(bob, "market:AAPL", f"user:{other_trader.pk}:positions")

    status = await sync_to_async(connection_status)()
    assert status["activeConnections"] == 3
    assert status["authenticatedConnections"] == 3
    assert status["usersOnline"] == 2
    assert status["topicSubscriptions"] == {
        "orders": 0,
        "positions": 0,
        "strategies": 0,
        "market:AAPL": 3,
        f"user:{trader.pk}:orders": 1,
        f"user:{other_trader.pk}:positions": 1,
    }
    assert connections_of(status, fast_live) == [3]

    record = await sync_to_async(
        lambda: Connection.objects.select_related("user").get(user=trader, user_agent="desk/1.0")
    )()
    assert record.client_address.startswith("127.0.0.1:")
    assert record.authenticated_at is not None

    await request(alice_1, "SUBSCRIPTION", {"action": "unsubscribe", "topics": ["market:AAPL"]})
    status = await sync_to_async(connection_status)()
    assert status["topicSubscriptions"]["market:AAPL"] == 2

    await bob.close()
    status = await eventually(lambda: (s := connection_status())["activeConnections"] == 2 and s)
    assert status["usersOnline"] == 1
    assert status["topicSubscriptions"]["market:AAPL"] == 1
    assert f"user:{other_trader.pk}:positions" not in status["topicSubscriptions"]
    await alice_1.close()
    await alice_2.close()
    assert await eventually(lambda: connection_status()["activeConnections"] == 0)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_first_message_authentication_is_recorded(fast_live, fast_heartbeat, trader):
    token = await sync_to_async(access_token_for)(trader)
    ws = await connect(fast_live.ws_url)
    assert await eventually(lambda: connection_status()["activeConnections"] == 1)
    anonymous = await sync_to_async(lambda: Connection.objects.get())()
    assert anonymous.user_id is None and anonymous.authenticated_at is None
    await request(ws, "AUTHENTICATION", {"token": token})
    record = await sync_to_async(lambda: Connection.objects.get())()
    assert record.user_id == trader.pk and record.authenticated_at is not None
    await ws.close()


# --- dead processes ------------------------------------------------------------------------


def _stale_process(**counts) -> ServerProcess:
    long_ago = timezone.now() - timedelta(minutes=10)
    server = ServerProcess.objects.create(
        id="dead-host-1-abcd",
        hostname="dead-host",
        pid=1,
        started_at=long_ago,
        heartbeat_at=long_ago,
        expires_at=long_ago + timedelta(seconds=90),
    )
    for n in range(counts.get("connections", 2)):
        connection = Connection.objects.create(id=f"dead{n}", server=server, connected_at=long_ago)
        Subscription.objects.create(connection=connection, topic="orders")
    return server


@pytest.mark.django_db
def test_a_process_with_a_stale_heartbeat_does_not_count_and_is_pruned():
    _stale_process(connections=2)
    alive = ServerProcess.objects.create(
        id="alive-1",
        hostname="h",
        pid=2,
        started_at=timezone.now(),
        heartbeat_at=timezone.now(),
        expires_at=timezone.now() + timedelta(seconds=90),
    )
    Connection.objects.create(id="live0", server=alive, connected_at=timezone.now())

    status = connection_status()
    assert status["activeConnections"] == 1
    assert status["topicSubscriptions"]["orders"] == 0
    assert [server["id"] for server in status["servers"]] == ["alive-1"]

    out = io.StringIO()
    call_command("ws_prune", stdout=out)
    assert out.getvalue().strip() == "Pruned 1 dead server process(es) and 2 connection record(s)."
    assert not ServerProcess.objects.filter(pk="dead-host-1-abcd").exists()
    assert Connection.objects.count() == 1 and Subscription.objects.count() == 0

    out = io.StringIO()
    call_command("ws_prune", "--json", stdout=out)
    assert json.loads(out.getvalue()) == {"processes": 0, "connections": 0}


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_a_killed_server_stops_counting_within_three_heartbeats_and_is_pruned_by_another(
    fast_live, fast_heartbeat, trader
):
    token = await sync_to_async(access_token_for)(trader)
    with live_server(realtime={"HEARTBEAT_INTERVAL_SECS": HEARTBEAT}) as doomed:
        victims = [await connect(doomed.ws_url, token=token) for _ in range(2)]
        victim_ids = [(await receive(ws))["payload"]["connectionId"] for ws in victims]
        doomed_id = await sync_to_async(
            lambda: Connection.objects.get(pk=victim_ids[0]).server_id
        )()
        survivor = await connect(fast_live.ws_url, token=token)
        await receive(survivor)
        assert await eventually(lambda: connection_status()["activeConnections"] == 3)
        doomed.kill()
        killed_at = timezone.now()
        dead = await sync_to_async(ServerProcess.objects.get)(pk=doomed_id)
        # Its last heartbeat was before the kill, so it counts for three intervals at most.
        assert dead.expires_at - dead.heartbeat_at == timedelta(seconds=3 * HEARTBEAT)
        assert dead.expires_at <= killed_at + timedelta(seconds=3 * HEARTBEAT)
        assert await eventually(lambda: connection_status()["activeConnections"] == 1, timeout=15)
        # The surviving server's own schedule removes the dead one's rows.
        assert await eventually(
            lambda: not Connection.objects.filter(server_id=doomed_id).exists(), timeout=15
        )
        assert not await sync_to_async(ServerProcess.objects.filter(pk=doomed_id).exists)()
        heartbeat = await request(survivor, "HEARTBEAT", {}, id="still-served")
        assert heartbeat["type"] == "HEARTBEAT"
        await survivor.close()


# --- disconnecting ---------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_admin_disconnect_selected_closes_the_socket_with_4000(fast_live, trader, staff):
    staff.is_superuser = True
    await sync_to_async(staff.save)()
    token = await sync_to_async(access_token_for)(trader)
    ws = await connect(fast_live.ws_url, token=token)
    connection_id = (await receive_type(ws, "AUTHENTICATION"))["payload"]["connectionId"]
    async with httpx.AsyncClient(base_url=fast_live.http_url, timeout=10) as browser:
        await browser.get("/admin/login/")
        await browser.post(
            "/admin/login/",
            data={
                "username": "staff",
                "password": "correct-horse-battery",
                "csrfmiddlewaretoken": browser.cookies["csrftoken"],
                "next": "/admin/",
            },
            headers={"Referer": f"{fast_live.http_url}/admin/login/"},
        )
        listing = await browser.get("/admin/realtime/connection/")
        assert listing.status_code == 200
        assert connection_id in listing.text
        action = await browser.post(
            "/admin/realtime/connection/",
            data={
                "action": "disconnect_selected",
                "_selected_action": [connection_id],
                "csrfmiddlewaretoken": browser.cookies["csrftoken"],
            },
            headers={"Referer": f"{fast_live.http_url}/admin/realtime/connection/"},
        )
        assert action.status_code == 302, action.text
    assert await closed_with(ws) == 4000


@pytest.mark.django_db
def test_ws_disconnect_without_a_shared_layer_exits_non_zero_and_says_why():
    with pytest.raises(CommandError, match="REDIS_URL"):
        call_command("ws_disconnect", "--all")


@pytest.mark.django_db
def test_publish_market_data_without_a_shared_layer_exits_non_zero_and_says_why():
    with pytest.raises(CommandError, match="REDIS_URL"):
        call_command("publish_market_data", "-")


# --- the status endpoint ---------------------------------------------------------------------


@pytest.mark.django_db
def test_status_endpoint_needs_credentials(api_client):
    assert api_client.get("/ws/status").status_code == 401


@pytest.mark.django_db
def test_status_endpoint_refuses_a_plain_trader(trader_client):
    assert trader_client.get("/ws/status").status_code == 403


@pytest.mark.django_db
def test_status_endpoint_serves_staff_holders_of_view_connection_and_admin_sessions(
    staff_client, trader, trader_client, staff, api_client
):
    trader.user_permissions.add(
        Permission.objects.get(codename="view_connection", content_type__app_label="realtime")
    )
    for client in (staff_client, trader_client):
        response = client.get("/ws/status")
        assert response.status_code == 200
        document = response.json()
        assert {"activeConnections", "topicSubscriptions", "timestamp"} <= set(document)
        assert document["timestamp"].endswith("Z")
    api_client.force_login(staff)
    assert api_client.get("/ws/status").status_code == 200
    assert api_client.get("/ws/status/").status_code == 200


# --- command outputs -------------------------------------------------------------------------


@pytest.fixture
def recorded(trader, other_trader):
    now = timezone.now()
    server = ServerProcess.objects.create(
        id="host-9-beef",
        hostname="host",
        pid=9,
        started_at=now,
        heartbeat_at=now,
        expires_at=now + timedelta(seconds=90),
    )
    first = Connection.objects.create(
        id="c1", server=server, user=trader, client_address="10.0.0.1:5000", connected_at=now
    )
    second = Connection.objects.create(
        id="c2",
        server=server,
        user=other_trader,
        client_address="10.0.0.2:5000",
        connected_at=now - timedelta(seconds=5),
    )
    Subscription.objects.create(connection=first, topic="market:AAPL")
    Subscription.objects.create(connection=second, topic=f"user:{other_trader.pk}:orders")
    return server


@pytest.mark.django_db
def test_ws_connections_prints_a_table_and_filters(recorded):
    out = io.StringIO()
    call_command("ws_connections", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["CONNECTION", "USER", "ADDRESS", "SERVER", "CONNECTED", "TOPICS"]
    assert lines[2].split()[:2] == ["c1", "alice"] and lines[3].split()[:2] == ["c2", "bob"]
    assert "2 connection(s)" in out.getvalue()

    out = io.StringIO()
    call_command("ws_connections", "--user", "bob", "--json", stdout=out)
    rows = json.loads(out.getvalue())
    assert [row["id"] for row in rows] == ["c2"]
    assert rows[0]["username"] == "bob" and rows[0]["server"] == "host-9-beef"

    out = io.StringIO()
    call_command("ws_connections", "--topic", "market:AAPL", "--json", stdout=out)
    assert [row["id"] for row in json.loads(out.getvalue())] == ["c1"]


@pytest.mark.django_db
def test_ws_status_prints_the_status_document(recorded):
    out = io.StringIO()
    call_command("ws_status", "--json", stdout=out)
    document = json.loads(out.getvalue())
    assert document["activeConnections"] == 2
    assert document["topicSubscriptions"]["market:AAPL"] == 1
    out = io.StringIO()
    call_command("ws_status", stdout=out)
    assert "Active connections: 2 (2 authenticated, 2 users online)" in out.getvalue()
    assert "market:AAPL" in out.getvalue() and "host-9-beef" in out.getvalue()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_a_cleanly_stopped_server_removes_its_records_at_once(trader):
    token = await sync_to_async(access_token_for)(trader)
    with live_server() as server:
        ws = await connect(server.ws_url, token=token)
        connection_id = (await receive(ws))["payload"]["connectionId"]
        server_id = await sync_to_async(
            lambda: Connection.objects.get(pk=connection_id).server_id
        )()
        server.stop()  # SIGTERM: Daphne exits normally
    assert not await sync_to_async(ServerProcess.objects.filter(pk=server_id).exists)()
    assert not await sync_to_async(Connection.objects.filter(pk=connection_id).exists)()


@pytest.mark.django_db
def test_status_reads_every_row_until_a_process_dies_then_only_live_processes(trader, staff):
    """Both ways of counting: all rows (no dead process) and rows of live processes only."""
    from realtime.connections import server_process_register

    def with_connections(server, user, topics_per_connection):
        for n, topics in enumerate(topics_per_connection):
            connection = Connection.objects.create(
                id=f"{server.pk}-{n}", server=server, user=user, connected_at=timezone.now()
            )
            for topic in topics:
                Subscription.objects.create(connection=connection, topic=topic)

    alive = server_process_register()
    with_connections(alive, trader, [["market:AAPL", "orders"], ["market:AAPL"]])
    other = server_process_register()
    with_connections(other, staff, [["orders"]])
    status = connection_status()
    assert status["activeConnections"] == 3 and status["usersOnline"] == 2
    assert status["topicSubscriptions"] == {
        "orders": 2,
        "positions": 0,
        "strategies": 0,
        "market:AAPL": 2,
    }
    assert [server["connections"] for server in status["servers"]] == [2, 1]

    ServerProcess.objects.filter(pk=other.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    status = connection_status()
    assert status["activeConnections"] == 2 and status["usersOnline"] == 1
    assert status["topicSubscriptions"]["orders"] == 1
    assert status["topicSubscriptions"]["market:AAPL"] == 2
    assert [server["id"] for server in status["servers"]] == [alive.pk]
