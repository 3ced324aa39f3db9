"""`manage.py ws_prune`: remove the records of server processes that died."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand

from realtime.connections import prune_dead_processes


class Command(BaseCommand):
    help = (
        "Remove connection records of server processes whose heartbeat stopped (killed or "
        "crashed). Running servers also do this on their own every PRUNE_INTERVAL_SECS."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")

    def handle(self, *args: Any, **options: Any) -> None:
        removed = prune_dead_processes()
        if options["json"]:
            self.stdout.write(json.dumps(removed))
        else:
            self.stdout.write(
                f"Pruned {removed['processes']} dead server process(es) and "
                f"{removed['connections']} connection record(s)."
            )
