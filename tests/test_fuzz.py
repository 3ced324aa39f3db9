"""Fuzzing against running servers: the WebSocket protocol with hypothesis (random and mutated
envelopes, wrong types, unicode edge cases, huge numbers, deep nesting, binary frames, floods)
and the REST API with schemathesis against /api/schema/.

What must hold: every frame is answered by an ERROR or a valid reply, the connection stays open
unless a limit closes it with its code, the server logs no traceback, and its memory stays flat;
no REST request gets a 500, and every response matches the schema.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import websockets
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.conftest import access_token_for
from tests.live import live_server

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

REPLY_TYPES = {"AUTHENTICATION", "SUBSCRIPTION", "HEARTBEAT", "ERROR"}
ERROR_CODES = {
    "invalid_json",
    "invalid_message",
    "unknown_type",
    "unauthenticated",
    "rate_limited",
    "message_too_large",
}
HEALTH = list(HealthCheck)
# How long a reply may take: a liveness bound (a CI machine under load once took over 5 s for
# one reply of the long fuzz; the failure now names the frame and shows the server's log).
REPLY_WAIT_SECS = 15
FUZZ_LIMITS = {
    "RATE_LIMIT_PER_SEC": 100_000,
    "RATE_LIMIT_BURST": 100_000,
    "MAX_MESSAGE_BYTES": 16 * 1024,
    "AUTH_TIMEOUT_SECS": 60,
    # No server HEARTBEAT during a run: every HEARTBEAT a client gets is the reply to its own.
    "HEARTBEAT_INTERVAL_SECS": 3600,
}


@pytest.fixture(scope="module")
def fuzz_server(django_db_setup):
    with live_server(realtime=FUZZ_LIMITS) as server:
        yield server


# --- what a client might send -----------------------------------------------------------------

edge_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            "\x00",
            "\ud800",  # a lone surrogate: valid JSON escape, not valid UTF-8
            "\udfff\ud800",
            "\u202e\u2066",
            "\ufeff",
            "🂡" * 10,
            "a" * 129,
            "orders\n",
            "market:AAPL",
            "market:" + "A" * 40,
            "user:1:orders",
            "strategy:99999999999999999999999",
            "user:-1:orders",
            "é" * 5000,
        ]
    ),
)
huge_numbers = st.sampled_from([10**30, -(10**30), 2**63, 2**64 + 1, 1e308, -1e308, 5e-324, 0.0])
scalars = st.one_of(st.none(), st.booleans(), st.integers(), huge_numbers, edge_text)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(edge_text, children, max_size=4)
    ),
    max_leaves=12,
)
message_types = st.one_of(
    st.sampled_from(
        ["AUTHENTICATION", "SUBSCRIPTION", "HEARTBEAT", "ORDER_UPDATE", "ERROR", "heartbeat", ""]
    ),
    json_values,
)
known_topics = st.sampled_from(["market:AAPL", "orders", "user:1:orders"])
seqs = st.one_of(st.integers(), huge_numbers)
topic_entries = st.one_of(
    edge_text,
    json_values,
    st.fixed_dictionaries(
        {
            "topic": st.one_of(
                st.sampled_from(["market:AAPL", "orders", "user:1:orders"]), edge_text
            )
        },
        optional={
            "since": st.one_of(
                json_values,
                st.fixed_dictionaries(
                    {"epoch": edge_text, "seq": st.one_of(st.integers(), huge_numbers)}
                ),
            ),
            "snapshot": json_values,
            "filter": json_values,
            "throttleMs": st.one_of(st.integers(), huge_numbers),
            "presence": json_values,
        },
    ),
)
payloads = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {
            "action": st.one_of(
                st.sampled_from(["subscribe", "unsubscribe", "list", "presence", "SUBSCRIBE"]),
                json_values,
            ),
            "topics": st.one_of(st.lists(topic_entries, max_size=5), json_values),
        }
    ),
    st.fixed_dictionaries({"token": json_values}),
)
ids = st.one_of(json_values, huge_numbers)
envelopes = st.fixed_dictionaries(
    {"type": message_types},
    optional={
        "payload": payloads,
        "id": st.one_of(json_values, huge_numbers),
        "extra": json_values,
    },
)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


raw_texts = st.one_of(
    st.text(max_size=200),
    st.sampled_from(
        [
            nested(100_000),  # deeper than the JSON parser recurses
            '{"type":"HEARTBEAT","payload":' + '{"a":' * 2000 + "1" + "}" * 2000 + "}",
            '{"type":"HEARTBEAT","id":' + "9" * 5000 + "}",  # past Python's int-parsing limit
            '{"type":"HEARTBEAT","id":1e400}',
            '{"type":"HEARTBEAT","id":NaN}',
            '{"type":"HEARTBEAT"} trailing',
            "x" * 20_000,  # over MAX_MESSAGE_BYTES
            "null",
            "[]",
            '"HEARTBEAT"',
        ]
    ),
)


def as_frame(envelope: dict[str, Any], ascii_only: bool) -> str:
    """The envelope as JSON text; escaped where it holds a lone surrogate, which a text frame
    cannot carry (it must be UTF-8), but a JSON escape (`"\\ud800"`) can."""
    text = json.dumps(envelope, ensure_ascii=ascii_only)
    try:
        text.encode()
    except UnicodeEncodeError:
        text = json.dumps(envelope)
    return text


frames = st.one_of(
    st.builds(as_frame, envelopes, st.booleans()),
    raw_texts,
    st.binary(max_size=300),
)


# --- the protocol fuzzer ---------------------------------------------------------------------


async def exchange(server: Any, token: str, authenticated: bool, batch: list[str | bytes]) -> None:
    url = f"{server.ws_url}?token={token}" if authenticated else server.ws_url
    async with websockets.connect(url, open_timeout=5, max_size=None) as ws:
        if authenticated:
            hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert hello["type"] == "AUTHENTICATION"
        for frame in batch:
            await ws.send(frame)
            try:
                reply = await next_reply(ws)
            except TimeoutError:
                shown = frame[:200] if len(frame) <= 200 else f"{frame[:200]!r}... ({len(frame)})"
                raise AssertionError(
                    f"no reply within {REPLY_WAIT_SECS} s to {shown!r}; the server's log ends:\n"
                    + server.log()[-3000:]
                ) from None
            assert_valid(reply, frame)
        await ws.send(json.dumps({"type": "HEARTBEAT", "id": "still-there"}))
        reply = await next_reply(ws)
        assert reply["type"] == "HEARTBEAT" and reply["id"] == "still-there", reply


async def next_reply(ws: Any) -> dict[str, Any]:
    """The next reply or ERROR, past snapshots and replays (the server sends no heartbeat of its
    own: FUZZ_LIMITS)."""
    async with asyncio.timeout(REPLY_WAIT_SECS):
        while True:
            message = json.loads(await ws.recv())
            assert isinstance(message, dict) and isinstance(message.get("payload"), dict), message
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", message["timestamp"])
            if message["type"] in REPLY_TYPES:
                return message


def assert_valid(reply: dict[str, Any], frame: str | bytes) -> None:
    assert reply["type"] in REPLY_TYPES, (frame, reply)
    if reply["type"] == "ERROR":
        assert reply["payload"]["code"] in ERROR_CODES, (frame, reply)
        assert isinstance(reply["payload"]["message"], str)
    elif reply["type"] == "SUBSCRIPTION":
        assert reply["payload"]["action"] in ("subscribed", "unsubscribed", "list", "presence")


@settings(
    max_examples=60,
    derandomize=True,  # the same frames every run: a CI run does not turn on a new find
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(authenticated=st.booleans(), batch=st.lists(frames, min_size=1, max_size=12))
@example(  # found by this fuzzer: an unhashable action was an internal_error
    authenticated=True,
    batch=['{"type":"SUBSCRIPTION","payload":{"action":[],"topics":[]}}', b"\xff\x00"],
)
def test_every_frame_gets_an_error_or_a_valid_reply_and_the_connection_lives(
    fuzz_server, staff, authenticated, batch
):
    token = access_token_for(staff)
    asyncio.run(exchange(fuzz_server, token, authenticated, batch))


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))


def test_a_long_fuzz_leaves_the_servers_memory_flat_and_its_log_clean(fuzz_server, staff):
    token = access_token_for(staff)
    big = json.dumps({"type": "HEARTBEAT", "payload": {"blob": "y" * 15_000}, "id": 1})
    sent = []

    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        suppress_health_check=HEALTH,
        derandomize=True,
        # No shrinking: this test is about memory and the log over many batches, and a failure
        # names its frame (shrinking one of these batches took over five minutes).
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
    )
    @given(authenticated=st.booleans(), batch=st.lists(frames, min_size=10, max_size=25))
    def fuzz(authenticated: bool, batch: list[str | bytes]) -> None:
        batch = [*batch, big, b"\x00" * 1000]
        asyncio.run(exchange(fuzz_server, token, authenticated, batch))
        sent.append(len(batch))

    fuzz()  # warm up: caches, pools, the first of everything
    before = rss_kib(fuzz_server.process.pid)
    fuzz()
    fuzz()
    after = rss_kib(fuzz_server.process.pid)
    assert sum(sent) > 2 * 60 * 12  # the runs were not cut short
    # Thousands of frames, some of 15 KiB: a leak of even a few KiB a frame would be many MiB.
    assert after - before < 16 * 1024, f"RSS grew from {before} KiB to {after} KiB"
    log = fuzz_server.log()
    assert "Traceback" not in log, log


def test_a_flood_is_refused_then_closed_with_4429_and_the_server_serves_on(staff):
    token = access_token_for(staff)
    limits = {
        "RATE_LIMIT_PER_SEC": 20,
        "RATE_LIMIT_BURST": 60,
        "RATE_LIMIT_MAX_STRIKES": 20,
        "HEARTBEAT_INTERVAL_SECS": 3600,
    }

    async def flood(server: Any) -> None:
        async with websockets.connect(f"{server.ws_url}?token={token}", open_timeout=5) as ws:
            await ws.recv()
            for _ in range(500):
                await ws.send('{"type":"HEARTBEAT"}')
            codes = []
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    message = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    if message["type"] == "ERROR":
                        codes.append(message["payload"]["code"])
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429
            assert set(codes) == {"rate_limited"} and len(codes) == 20
        await exchange(server, token, True, ['{"type":"HEARTBEAT","id":1}'])

    with live_server(realtime=limits) as server:
        asyncio.run(flood(server))
        assert "Traceback" not in server.log()


# --- the REST API ----------------------------------------------------------------------------


def test_the_rest_api_never_answers_500_and_always_matches_its_schema(live, staff):
    """schemathesis against the served /api/schema/: every operation, with valid and invalid
    inputs, as staff (who may call all of them)."""
    from schemathesis import GenerationMode

    log_start = live.log_path.stat().st_size
    schema = schemathesis.openapi.from_url(f"{live.http_url}/api/schema/")
    headers = {"Authorization": f"Bearer {access_token_for(staff)}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, operations
    called = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=8,
                deadline=None,
                database=None,
                suppress_health_check=HEALTH,
                derandomize=True,  # the same cases every run: CI does not turn on a new find
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def call(case: Any) -> None:
                response = case.call(base_url=live.http_url, headers=headers, timeout=10)
                called.append(response.status_code)
                if response.status_code == 400 and not response.content:
                    # Django's ASGI handler refuses a request it cannot even decode (before any
                    # URL, view or API code) with a bare 400: not the API's answer to check.
                    return
                case.validate_response(
                    response, checks=[not_a_server_error, response_schema_conformance]
                )

            call()
    assert len(called) > 10 * len(operations)
    with live.log_path.open(errors="replace") as log:
        log.seek(log_start)
        written = log.read()
    assert "Traceback" not in written, written[-5000:]
