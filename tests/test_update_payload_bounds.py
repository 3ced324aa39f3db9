"""The largest ORDER_UPDATE and STRATEGY_UPDATE the domain allows stay far below Daphne's 1 MiB."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from orders.services import REJECT_REASON_MAX_LENGTH, order_create, order_fill, order_reject
from realtime.topics import group_name
from strategies.services import (
    DESCRIPTION_MAX_LENGTH,
    NAME_MAX_LENGTH,
    PARAMETERS_MAX_BYTES,
    PARAMETERS_MAX_DEPTH,
    strategy_create,
    strategy_start,
)
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

DAPHNE_MAX_MESSAGE_BYTES = 1024 * 1024  # autobahn's default, which Daphne keeps
# "Well below": a quarter of the limit leaves room for envelopes, encodings and growth.
WELL_BELOW_BYTES = DAPHNE_MAX_MESSAGE_BYTES // 4
# The character JSON spells longest (\u0001, 6 bytes): the worst case for a text field.
WORST_CHAR = "\x01"
# A long amount (SQLite keeps decimals as REAL, so not the full 28 digits).
BIG = Decimal("987654321.12345678")


def worst_case_parameters() -> dict:
    """Parameters at the depth limit whose compact JSON takes exactly PARAMETERS_MAX_BYTES."""
    inner: dict = {}
    for _ in range(PARAMETERS_MAX_DEPTH - 2):
        inner = {"n": inner}
    parameters = {"deep": inner, "blob": ""}
    used = len(json.dumps(parameters, separators=(",", ":"), ensure_ascii=False).encode())
    # Escaped to 6 bytes each; pad the remainder with plain characters.
    parameters["blob"] = WORST_CHAR * ((PARAMETERS_MAX_BYTES - used) // 6)
    used = len(json.dumps(parameters, separators=(",", ":"), ensure_ascii=False).encode())
    parameters["blob"] += "x" * (PARAMETERS_MAX_BYTES - used)
    return parameters


def published_texts(django_capture_on_commit_callbacks, topic: str, write) -> list[str]:
    """The messages `write` publishes to `topic`, as the channel layer carries them."""
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(group_name(topic), channel)

    async def drain() -> list[str]:
        texts = []
        while True:
            try:
                message = await asyncio.wait_for(layer.receive(channel), timeout=0.5)
            except TimeoutError:
                return texts
            texts.append(message["text"])

    try:
        with django_capture_on_commit_callbacks(execute=True):
            write()
        return async_to_sync(drain)()
    finally:
        async_to_sync(layer.group_discard)(group_name(topic), channel)


def test_the_largest_strategy_update_stays_well_below_the_websocket_limit(
    django_capture_on_commit_callbacks,
):
    owner = UserFactory()
    parameters = worst_case_parameters()

    def write() -> None:
        strategy = strategy_create(
            owner=owner,
            name="N" * NAME_MAX_LENGTH,
            description=WORST_CHAR * DESCRIPTION_MAX_LENGTH,
            parameters=parameters,
        )
        strategy_start(strategy=strategy)
        order = order_create(
            user=owner,
            strategy=strategy,
            symbol="X" * 32,
            side="BUY",
            order_type="MARKET",
            quantity=BIG,
        )
        order_fill(
            order=order,
            quantity=BIG,
            price=Decimal("0.00000001"),
        )

    text = published_texts(django_capture_on_commit_callbacks, "strategies", write)[-1]

    assert '"event":"execution"' in text
    print(f"largest STRATEGY_UPDATE: {len(text.encode())} bytes")
    assert len(text.encode()) < WELL_BELOW_BYTES


def test_the_largest_order_update_stays_well_below_the_websocket_limit(
    django_capture_on_commit_callbacks,
):
    owner = UserFactory()

    def write() -> None:
        order = order_create(
            user=owner,
            symbol="X" * 32,
            side="BUY",
            order_type="STOP_LIMIT",
            quantity=BIG,
            price=BIG,
            stop_price=BIG,
        )
        order_reject(order=order, reason=WORST_CHAR * REJECT_REASON_MAX_LENGTH)

    texts = published_texts(django_capture_on_commit_callbacks, "orders", write)

    assert '"rejectReason"' in texts[-1]
    print(f"largest ORDER_UPDATE: {max(len(text.encode()) for text in texts)} bytes")
    assert max(len(text.encode()) for text in texts) < WELL_BELOW_BYTES
