"""The connection manager: server processes, connections and subscriptions in the database.

Writes happen on connect, authenticate, subscribe, unsubscribe and disconnect, and once per
heartbeat interval per process (never per connection). A process that dies leaves rows behind;
they stop counting when its heartbeat is older than DEAD_AFTER_HEARTBEATS intervals and are
removed by `prune_dead_processes`, which the running server also calls on a schedule.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from realtime.conf import realtime_settings
from realtime.models import Connection, ServerProcess, Subscription


def lifetime() -> timedelta:
    """How long this process counts as alive after each of its heartbeats."""
    interval = float(realtime_settings.HEARTBEAT_INTERVAL_SECS)
    return timedelta(seconds=interval * int(realtime_settings.DEAD_AFTER_HEARTBEATS))


def alive_q(prefix: str = "") -> Q:
    """Rows of live processes: those whose heartbeat has not expired."""
    return Q(**{f"{prefix}expires_at__gte": timezone.now()})


def server_process_register(*, channel_name: str = "") -> ServerProcess:
    """Record this process as alive; a new id each start, so a restart inherits no rows."""
    now = timezone.now()
    hostname = socket.gethostname()
    return ServerProcess.objects.create(
        id=f"{hostname[:40]}-{os.getpid()}-{secrets.token_hex(4)}",
        hostname=hostname,
        pid=os.getpid(),
        channel_name=channel_name,
        started_at=now,
        heartbeat_at=now,
        expires_at=now + lifetime(),
    )


def server_process_heartbeat(*, server_id: str, channel_name: str = "") -> bool:
    """Refresh this process's heartbeat; True when its row had to be recreated.

    The row can vanish under a live process (pruned after a long stall or a clock jump, or
    deleted by hand); the process then writes it again and re-records its connections.
    """
    now = timezone.now()
    if ServerProcess.objects.filter(pk=server_id).update(
        heartbeat_at=now, expires_at=now + lifetime()
    ):
        return False
    _server_process_restore(server_id=server_id, channel_name=channel_name)
    return True


def _server_process_restore(*, server_id: str, channel_name: str = "") -> None:
    now = timezone.now()
    ServerProcess.objects.update_or_create(
        pk=server_id,
        defaults={
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "channel_name": channel_name,
            "started_at": now,
            "heartbeat_at": now,
            "expires_at": now + lifetime(),
        },
    )


def server_process_stop(*, server_id: str) -> None:
    """Clean shutdown: this process's connections are gone with it."""
    ServerProcess.objects.filter(pk=server_id).delete()


def connection_open(
    *,
    connection_id: str,
    server_id: str,
    user: Any,
    client_address: str,
    user_agent: str,
) -> None:
    now = timezone.now()
    authenticated = bool(getattr(user, "is_authenticated", False))
    record = Connection(
        id=connection_id,
        server_id=server_id,
        user=user if authenticated else None,
        client_address=client_address[:100],
        user_agent=user_agent[:300],
        connected_at=now,
        authenticated_at=now if authenticated else None,
    )
    try:
        with transaction.atomic():
            record.save(force_insert=True)
    except IntegrityError:
        if ServerProcess.objects.filter(pk=server_id).exists():
            raise
        _server_process_restore(server_id=server_id)  # its row vanished under it: see above
        record.save(force_insert=True)


def connection_reopen(
    *,
    connection_id: str,
    server_id: str,
    user: Any,
    client_address: str,
    user_agent: str,
    topics: list[str],
) -> None:
    """Write a live connection's rows again (its process's rows were lost)."""
    with transaction.atomic():
        Connection.objects.filter(pk=connection_id).delete()
        connection_open(
            connection_id=connection_id,
            server_id=server_id,
            user=user,
            client_address=client_address,
            user_agent=user_agent,
        )
        subscriptions_add(connection_id=connection_id, topics=topics)


def connection_authenticated(*, connection_id: str, user: Any) -> None:
    Connection.objects.filter(pk=connection_id).update(user=user, authenticated_at=timezone.now())


def connection_close(*, connection_id: str) -> None:
    Connection.objects.filter(pk=connection_id).delete()


def subscriptions_add(*, connection_id: str, topics: Iterable[str]) -> None:
    Subscription.objects.bulk_create(
        [Subscription(connection_id=connection_id, topic=topic) for topic in topics],
        ignore_conflicts=True,
    )


def subscriptions_remove(*, connection_id: str, topics: Iterable[str]) -> None:
    Subscription.objects.filter(connection_id=connection_id, topic__in=list(topics)).delete()


def prune_dead_processes() -> dict[str, int]:
    """Delete the rows of processes whose heartbeat stopped; returns what was removed."""
    with transaction.atomic():
        dead = ServerProcess.objects.exclude(alive_q())
        dead_ids = list(dead.values_list("pk", flat=True))
        connections = Connection.objects.filter(server_id__in=dead_ids).count()
        ServerProcess.objects.filter(pk__in=dead_ids).delete()  # cascades
    return {"processes": len(dead_ids), "connections": connections}
