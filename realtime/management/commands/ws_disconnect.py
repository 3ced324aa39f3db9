"""`manage.py ws_disconnect`: close WebSocket connections on every server process (code 4000)."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from realtime import publish
from realtime.models import Connection
from realtime.protocol import CloseCode
from realtime.selectors import live_server_ids


class Command(BaseCommand):
    help = (
        "Close WebSocket connections with code 4000 on every server process: those of a user, "
        "one connection, or all. Needs the shared (Redis) channel layer: set REDIS_URL."
    )

    def add_arguments(self, parser: Any) -> None:
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--user", metavar="NAME", help="every connection of this username")
        target.add_argument("--connection", metavar="ID", help="one connection, by its id")
        target.add_argument("--all", action="store_true", help="every connection")
        parser.add_argument("--reason", default="disconnected by an operator")
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")

    def handle(self, *args: Any, **options: Any) -> None:
        if not publish.layer_is_shared():
            raise CommandError(
                "ws_disconnect must reach the server processes through a shared channel layer, "
                "and none is configured: this process has only the in-process layer. Set "
                "REDIS_URL (the same as the servers') and run it again; or use the admin's "
                "'Disconnect selected' action, which runs inside a server."
            )
        live = Connection.objects.filter(server_id__in=live_server_ids())
        user_ids: list[int] = []
        connection_ids: list[str] = []
        if options["user"]:
            user = get_user_model().objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"No user is named {options['user']!r}.")
            user_ids = [user.pk]
            matched = live.filter(user=user).count()
        elif options["connection"]:
            connection_ids = [options["connection"]]
            matched = live.filter(pk=options["connection"]).count()
            if not matched:
                raise CommandError(
                    f"No live connection has id {options['connection']!r}; "
                    "`manage.py ws_connections` lists them."
                )
        else:
            matched = live.count()
        publish.disconnect(
            user_ids=user_ids,
            connection_ids=connection_ids,
            everyone=options["all"],
            code=CloseCode.OPERATOR_DISCONNECT,
            reason=options["reason"],
        )
        if options["json"]:
            self.stdout.write(json.dumps({"requested": matched, "code": 4000}))
        else:
            self.stdout.write(f"Asked {matched} live connection(s) to close with code 4000.")
