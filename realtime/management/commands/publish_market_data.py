"""`manage.py publish_market_data`: publish ticks read as JSON lines from a file or stdin."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, TextIO

from channels.db import database_sync_to_async
from django.core.management.base import BaseCommand, CommandError

from realtime import publish
from realtime.market_data import market_data
from realtime.serializers import TickSerializer


class Command(BaseCommand):
    help = (
        "Publish market-data ticks, one JSON object (or array of them) per line, e.g. "
        '{"symbol": "AAPL", "last": "189.5", "bid": "189.49", "ask": "189.51"}, to '
        "market:{SYMBOL} subscribers on every server, and mark positions to market. Bad lines "
        "are reported and skipped. Needs the shared (Redis) channel layer: set REDIS_URL."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "source", nargs="?", default="-", help="a file of JSON lines, or - for stdin"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not publish.layer_is_shared():
            raise CommandError(
                "publish_market_data must reach the server processes through a shared channel "
                "layer, and none is configured. Set REDIS_URL (the same as the servers') and run "
                "it again, or POST the ticks to /api/market-data/ on a server."
            )
        source = options["source"]
        if source == "-":
            published, rejected = asyncio.run(self._publish(sys.stdin))
        else:
            try:
                with open(source, encoding="utf-8") as stream:
                    published, rejected = asyncio.run(self._publish(stream))
            except OSError as exc:
                raise CommandError(f"Cannot read {source}: {exc.strerror}.") from None
        self.stdout.write(f"Published {published} tick(s); {rejected} line(s) rejected.")
        if rejected:
            raise CommandError(f"{rejected} line(s) were not valid ticks (see above).")

    async def _publish(self, stream: TextIO) -> tuple[int, int]:
        published = rejected = 0
        loop = asyncio.get_running_loop()
        number = 0
        while True:
            line = await loop.run_in_executor(None, stream.readline)
            if not line:
                break
            number += 1
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except ValueError as exc:
                self.stderr.write(f"line {number}: not JSON ({exc})")
                rejected += 1
                continue
            serializer = TickSerializer(data=data, many=isinstance(data, list))
            if not serializer.is_valid():
                self.stderr.write(f"line {number}: {json.dumps(serializer.errors)}")
                rejected += 1
                continue
            rows = (
                serializer.validated_data if isinstance(data, list) else [serializer.validated_data]
            )
            ticks = [TickSerializer.to_tick(row) for row in rows]
            await market_data.apublish(ticks)
            published += len(ticks)
        await database_sync_to_async(market_data.flush)()  # the last window's marks
        return published, rejected
