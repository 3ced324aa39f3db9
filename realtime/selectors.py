"""Reads of the connection records: the status document and connection listings.

Only connections of live processes count: a process whose heartbeat is older than
DEAD_AFTER_HEARTBEATS intervals died, and its rows are ignored until pruned. Everything is
aggregated in the database, so the status stays cheap with many thousands of connections.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Min, Q, QuerySet
from django.utils import timezone

from realtime.connections import alive_q
from realtime.models import Connection, ServerProcess, Subscription
from tradingrt.formats import format_timestamp

GLOBAL_TOPICS = ("orders", "positions", "strategies")


def live_server_ids() -> list[str]:
    return list(ServerProcess.objects.filter(alive_q()).values_list("pk", flat=True))


def connection_list(
    *, username: str | None = None, topic: str | None = None, live_only: bool = True
) -> QuerySet[Connection]:
    """Connections (newest first) with their user, process and topics prefetched."""
    connections = Connection.objects.select_related("user", "server").prefetch_related(
        "subscriptions"
    )
    if live_only:
        connections = connections.filter(server_id__in=live_server_ids())
    if username is not None:
        connections = connections.filter(user__username=username)
    if topic is not None:
        connections = connections.filter(subscriptions__topic=topic)
    return connections.order_by("-connected_at", "id")


def connection_status() -> dict[str, Any]:
    """The status document: live connections, subscriptions per topic, per-server counts."""
    now = timezone.now()
    every = list(
        ServerProcess.objects.annotate(
            connection_count=Count("connections"), alive=Q(alive_q())
        ).order_by("started_at")
    )
    servers = [server for server in every if server.alive]
    live = Connection.objects.all()
    subscriptions = Subscription.objects.all()
    if len(servers) < len(every):
        # Rows of dead processes wait for the pruner: leave them out. When there are none (the
        # usual case) every row counts, and the subscriptions per topic are read off the
        # (topic, connection) index without joining 20,000 subscriptions to their connections.
        server_ids = [server.pk for server in servers]
        live = live.filter(server_id__in=server_ids)
        subscriptions = subscriptions.filter(connection__server_id__in=server_ids)
    totals = live.aggregate(
        active=Count("id"),
        authenticated=Count("id", filter=Q(user__isnull=False)),
        users=Count("user", distinct=True),
    )
    topic_counts = dict.fromkeys(GLOBAL_TOPICS, 0)
    topic_counts.update(subscriptions.values_list("topic").annotate(count=Count("id")).order_by())
    return {
        "activeConnections": totals["active"],
        "authenticatedConnections": totals["authenticated"],
        "usersOnline": totals["users"],
        "topicSubscriptions": topic_counts,
        "servers": [
            {
                "id": server.pk,
                "hostname": server.hostname,
                "pid": server.pid,
                "connections": server.connection_count,
                "startedAt": format_timestamp(server.started_at),
                "heartbeatAt": format_timestamp(server.heartbeat_at),
                "expiresAt": format_timestamp(server.expires_at),
            }
            for server in servers
        ],
        "timestamp": format_timestamp(now),
    }


# --- presence (CONTRACT section 10) ---------------------------------------------------------


def _present(topics: list[str]) -> QuerySet[Any]:
    """Per topic and user: the user's live connections subscribed to it, and since when."""
    return (
        Subscription.objects.filter(
            topic__in=topics,
            connection__user__isnull=False,
            connection__server__expires_at__gte=timezone.now(),
        )
        .values("topic", "connection__user_id", "connection__user__username")
        .annotate(connections=Count("connection_id"), since=Min("subscribed_at"))
        .order_by("topic", "connection__user_id")
    )


def presence_members(topics: list[str]) -> dict[str, dict[int, str]]:
    """Who is present on each of `topics` now: user id -> username (one query)."""
    members: dict[str, dict[int, str]] = {topic: {} for topic in topics}
    for row in _present(topics):
        members[row["topic"]][row["connection__user_id"]] = row["connection__user__username"]
    return members


def presence_page(
    topic: str, *, limit: int, after: int | None = None
) -> tuple[list[dict[str, Any]], int | None]:
    """One page of a topic's presence, by user id; and the id to ask `after` for the next page
    (None on the last page)."""
    rows = _present([topic])
    if after is not None:
        rows = rows.filter(connection__user_id__gt=after)
    page = list(rows[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    members = [
        {
            "userId": row["connection__user_id"],
            "username": row["connection__user__username"],
            "connections": row["connections"],
            "since": format_timestamp(row["since"]),
        }
        for row in page
    ]
    return members, (page[-1]["connection__user_id"] if more and page else None)


def security_report(*, hours: float = 1.0) -> dict[str, Any]:
    """The last `hours` of security events (per kind, IP, user and minute) and the IP blocks in
    force: the document of `GET /ws/security`."""
    from datetime import timedelta

    from realtime.limits import active_block_rows
    from realtime.models import SecurityEvent

    now = timezone.now()
    since = now - timedelta(hours=hours)
    events = SecurityEvent.objects.filter(minute__gte=since.replace(second=0, microsecond=0))
    rows = list(events.order_by("-minute", "kind", "ip", "username")[:5000])
    totals: dict[str, int] = {}
    for event in rows:
        totals[event.kind] = totals.get(event.kind, 0) + event.count
    return {
        "since": format_timestamp(since),
        "timestamp": format_timestamp(now),
        "totals": totals,
        "events": [
            {
                "kind": event.kind,
                "ip": event.ip,
                "userId": event.user_id,
                "username": event.username,
                "minute": format_timestamp(event.minute),
                "count": event.count,
                "lastAt": format_timestamp(event.last_at),
                "detail": event.detail,
            }
            for event in rows
        ],
        "blocks": [
            {
                "ip": block.ip,
                "blockedAt": format_timestamp(block.blocked_at),
                "expiresAt": format_timestamp(block.expires_at),
                "failures": block.failures,
                "reason": block.reason,
            }
            for block in active_block_rows()
        ],
    }
