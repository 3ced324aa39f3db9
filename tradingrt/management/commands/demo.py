"""`manage.py demo`: load the demo data (once) and print how to log in and connect."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tradingrt.management.demo_data import LOGINS, DemoData, demo_data_load


class Command(BaseCommand):
    help = (
        "Create demo users (admin, alice, bob) with strategies, orders, fills and positions, "
        "unless they exist, and print the URLs, logins and connection examples."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--host",
            default="http://127.0.0.1:8000",
            help="Base URL the server is reached at, for the printed examples.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        base = options["host"].rstrip("/")
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise CommandError(f"--host must look like http://127.0.0.1:8000, not {base!r}.")
        data = demo_data_load()
        self.stdout.write(demo_banner(data, base=base))


def demo_banner(data: DemoData, *, base: str) -> str:
    """The block of URLs, logins and copy-pasteable connection examples."""
    ws_base = ("wss" if base.startswith("https") else "ws") + base[base.index(":") :]
    alice_id = data.users["alice"].pk
    topics = f'["user:{alice_id}:orders", "user:{alice_id}:positions", "market:BTC-USD"]'
    subscribe = (
        '{"type": "SUBSCRIPTION", "timestamp": "2026-01-01T00:00:00.000Z", '
        f'"payload": {{"action": "subscribe", "topics": {topics}}}}}'
    )
    state = "created" if data.created else "already present (nothing changed)"
    roles = {"admin": "staff, superuser"}
    logins = "\n".join(
        f"    {username:<6} / {password:<16} {roles.get(username, 'trader')}, "
        f"user id {data.users[username].pk}"
        for username, password in LOGINS
    )
    return f"""
Demo data {state}.

  Live dashboard     {base}/
  Admin              {base}/admin/
  API docs           {base}/api/docs/
  OpenAPI schema     {base}/api/schema/
  WebSocket          {ws_base}/ws
  WebSocket status   {base}/ws/status

  Logins (username / password):
{logins}

  Get an access token for alice:
    TOKEN=$(curl -s -X POST {base}/api/auth/token/ -H 'Content-Type: application/json' \\
      -d '{{"username": "alice", "password": "alice-demo-pass"}}' \\
      | python3 -c 'import json, sys; print(json.load(sys.stdin)["access"])')

  Use it on the REST API:
    curl -s {base}/api/positions/ -H "Authorization: Bearer $TOKEN"

  Connect with websocat, then paste the subscription:
    websocat "{ws_base}/ws?token=$TOKEN"
    {subscribe}

  Or with Python (websockets is installed in .venv):
    .venv/bin/python -c 'import asyncio, sys, websockets
async def main():
    async with websockets.connect(sys.argv[1]) as ws:
        await ws.send(sys.argv[2])
        async for message in ws:
            print(message)
asyncio.run(main())' "{ws_base}/ws?token=$TOKEN" '{subscribe}'
"""
