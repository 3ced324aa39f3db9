"""`manage.py ws_blocks`: list the client IPs blocked for failed authentications, or unblock one."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from realtime import limits
from realtime.management.tables import render_table
from tradingrt.formats import format_timestamp


class Command(BaseCommand):
    help = (
        "`ws_blocks list` (the default) shows the IP blocks in force; `ws_blocks unblock IP` "
        "lifts one on every server process (needs the shared Redis store: set REDIS_URL)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("action", nargs="?", default="list", choices=["list", "unblock"])
        parser.add_argument("ip", nargs="?", help="the address to unblock")
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "unblock":
            self._unblock(options["ip"], as_json=options["json"])
        else:
            self._list(as_json=options["json"])

    def _list(self, *, as_json: bool) -> None:
        rows = [
            {
                "ip": block.ip,
                "blockedAt": format_timestamp(block.blocked_at),
                "expiresAt": format_timestamp(block.expires_at),
                "failures": block.failures,
                "reason": block.reason,
            }
            for block in limits.active_block_rows()
        ]
        if as_json:
            self.stdout.write(json.dumps(rows))
            return
        if not rows:
            self.stdout.write("No IP is blocked.")
            return
        headers = ["ip", "blockedAt", "expiresAt", "failures", "reason"]
        self.stdout.write(render_table(headers, [[row[h] for h in headers] for row in rows]))

    def _unblock(self, ip: str | None, *, as_json: bool) -> None:
        if not ip:
            raise CommandError("Name the address: manage.py ws_blocks unblock 203.0.113.7")
        if not limits.is_shared():
            raise CommandError(
                "ws_blocks unblock must reach the limits store the servers share, and none is "
                "configured: without REDIS_URL each server keeps its blocks in its own memory. "
                "Set REDIS_URL (the same as the servers') and run it again; or use the admin's "
                "'Unblock' action on IP blocks, which runs inside a server."
            )
        lifted = limits.ip_unblock(ip=ip, by="manage.py ws_blocks")
        if as_json:
            self.stdout.write(json.dumps({"ip": ip, "recordsLifted": lifted}))
        else:
            self.stdout.write(f"Unblocked {ip} ({lifted} block record(s) lifted).")
