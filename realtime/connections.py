"""The connection manager: server processes in the database, their liveness and pruning.

A process writes its own row once per heartbeat interval, never one row per connection; its
connections' and subscriptions' rows are written in batches by realtime.records. A process
that dies leaves rows behind: they stop counting when its heartbeat expires, and are removed
by `prune_dead_processes`, which every running server also calls on a schedule.
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from realtime.conf import realtime_settings
from realtime.models import Connection, ServerProcess


def lifetime() -> timedelta:
    """How long this process counts as alive after each of its heartbeats."""
    interval = realtime_settings.HEARTBEAT_INTERVAL_SECS
    return timedelta(seconds=interval * realtime_settings.DEAD_AFTER_HEARTBEATS)


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


def server_process_heartbeat(*, server_id: str, channel_name: str) -> bool:
    """Refresh this process's heartbeat; True when its row had to be recreated.

    The row can vanish under a live process (pruned after a long stall or a clock jump, or
    deleted by hand); the process then writes it again and re-records its connections.
    """
    now = timezone.now()
    if ServerProcess.objects.filter(pk=server_id).update(
        heartbeat_at=now, expires_at=now + lifetime()
    ):
        return False
    server_process_restore(server_id=server_id, channel_name=channel_name)
    return True


def server_process_restore(*, server_id: str, channel_name: str) -> None:
    """Write this process's row again, whole: operator commands reach it by its channel."""
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


def server_process_restore_if_missing(*, server_id: str, channel_name: str) -> bool:
    """Restore this process's row if it vanished; True when it had to be."""
    if ServerProcess.objects.filter(pk=server_id).exists():
        return False
    server_process_restore(server_id=server_id, channel_name=channel_name)
    return True


def server_process_stop(*, server_id: str) -> None:
    """Clean shutdown: this process's connections are gone with it."""
    ServerProcess.objects.filter(pk=server_id).delete()


def prune_dead_processes() -> dict[str, int]:
    """Delete the rows of processes whose heartbeat stopped; returns what was removed."""
    with transaction.atomic():
        dead = ServerProcess.objects.exclude(alive_q())
        dead_ids = list(dead.values_list("pk", flat=True))
        connections = Connection.objects.filter(server_id__in=dead_ids).count()
        ServerProcess.objects.filter(pk__in=dead_ids).delete()  # cascades
    return {"processes": len(dead_ids), "connections": connections}
