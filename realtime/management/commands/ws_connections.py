"""`manage.py ws_connections`: list live WebSocket connections."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand

from realtime.management.tables import render_table
from realtime.selectors import connection_list
from tradingrt.formats import format_timestamp


class Command(BaseCommand):
    help = "List live WebSocket connections across every server process (newest first)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--user", metavar="NAME", help="only this username's connections")
        parser.add_argument("--topic", metavar="TOPIC", help="only connections subscribed to it")
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")
        parser.add_argument(
            "--include-dead",
            action="store_true",
            help="also list records of processes that stopped heartbeating (not yet pruned)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        connections = connection_list(
            username=options["user"], topic=options["topic"], live_only=not options["include_dead"]
        )
        rows: list[dict[str, Any]] = [
            {
                "id": connection.pk,
                "userId": connection.user_id,
                "username": connection.user.get_username() if connection.user else None,
                "clientAddress": connection.client_address,
                "userAgent": connection.user_agent,
                "server": connection.server_id,
                "connectedAt": format_timestamp(connection.connected_at),
                "authenticatedAt": format_timestamp(connection.authenticated_at),
                "topics": sorted(s.topic for s in connection.subscriptions.all()),
            }
            for connection in connections
        ]
        if options["json"]:
            self.stdout.write(json.dumps(rows, indent=2))
            return
        if not rows:
            self.stdout.write("No live connections match.")
            return
        self.stdout.write(
            render_table(
                ["CONNECTION", "USER", "ADDRESS", "SERVER", "CONNECTED", "TOPICS"],
                [
                    [
                        row["id"],
                        row["username"] or "(unauthenticated)",
                        row["clientAddress"],
                        row["server"],
                        row["connectedAt"],
                        ", ".join(row["topics"]) or "-",
                    ]
                    for row in rows
                ],
            )
        )
        self.stdout.write(f"\n{len(rows)} connection(s)")
