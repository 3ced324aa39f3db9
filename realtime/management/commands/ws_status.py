"""`manage.py ws_status`: the status document of GET /ws/status."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand

from realtime.management.tables import render_table
from realtime.selectors import connection_status


class Command(BaseCommand):
    help = "Print live connection counts, subscriptions per topic and server processes."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--json", action="store_true", help="print the JSON document")

    def handle(self, *args: Any, **options: Any) -> None:
        status = connection_status()
        if options["json"]:
            self.stdout.write(json.dumps(status, indent=2))
            return
        self.stdout.write(
            f"Active connections: {status['activeConnections']} "
            f"({status['authenticatedConnections']} authenticated, "
            f"{status['usersOnline']} users online) at {status['timestamp']}\n"
        )
        self.stdout.write(
            render_table(
                ["TOPIC", "SUBSCRIPTIONS"],
                sorted(status["topicSubscriptions"].items()),
            )
        )
        self.stdout.write("")
        self.stdout.write(
            render_table(
                ["SERVER", "HOST", "PID", "CONNECTIONS", "HEARTBEAT"],
                [
                    [s["id"], s["hostname"], s["pid"], s["connections"], s["heartbeatAt"]]
                    for s in status["servers"]
                ]
                or [["(no live server processes)", "", "", "", ""]],
            )
        )
