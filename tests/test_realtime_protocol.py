"""The envelope: encoding once, splicing per topic, and inbound validation."""

from __future__ import annotations

import json

import pytest

from realtime.protocol import (
    ErrorCode,
    MessageType,
    ProtocolError,
    encode,
    encode_payload,
    envelope_for_topic,
    parse,
)


def test_topic_envelope_is_the_contract_envelope_with_the_payload_spliced_in():
    payload = {"id": 1, "symbol": "AAPL", "price": "101.25", "note": 'quote " and ü'}
    envelope = envelope_for_topic(
        "ORDER_UPDATE", "user:1:orders", encode_payload(payload), "2026-11-25T10:15:30.123Z"
    )
    text = envelope.text(58, "h7Kp2-_x")
    assert json.loads(text) == {
        "type": "ORDER_UPDATE",
        "topic": "user:1:orders",
        "seq": 58,
        "epoch": "h7Kp2-_x",
        "timestamp": "2026-11-25T10:15:30.123Z",
        "payload": payload,
    }


def test_replies_echo_the_client_id_and_carry_a_millisecond_utc_timestamp():
    message = json.loads(encode(MessageType.HEARTBEAT, {"serverTime": "x"}, reply_to="abc"))
    assert message["id"] == "abc"
    assert message["timestamp"].endswith("Z") and len(message["timestamp"]) == 24


@pytest.mark.parametrize("message_id", [3, 1.5, -7, "abc", "x" * 128, 10**30])
def test_any_json_number_or_short_string_is_a_valid_id(message_id):
    assert parse(json.dumps({"type": "HEARTBEAT", "id": message_id})).id == message_id


def test_before_authentication_every_other_type_is_unauthenticated():
    for message_type in ("SUBSCRIPTION", "MARKET_DATA", "NONSENSE"):
        with pytest.raises(ProtocolError) as refused:
            parse(json.dumps({"type": message_type, "id": 9}), authenticated=False)
        assert refused.value.code is ErrorCode.UNAUTHENTICATED
        assert refused.value.reply_to == 9
    assert parse('{"type": "HEARTBEAT"}', authenticated=False).type is MessageType.HEARTBEAT


def test_parse_accepts_a_minimal_message_and_keeps_its_id():
    message = parse('{"type":"HEARTBEAT","id":3}')
    assert message.type is MessageType.HEARTBEAT
    assert message.payload == {}
    assert message.id == 3


@pytest.mark.parametrize(
    ("text", "code", "echoed"),
    [
        ("nope", ErrorCode.INVALID_JSON, None),
        ("[]", ErrorCode.INVALID_MESSAGE, None),
        ("null", ErrorCode.INVALID_MESSAGE, None),
        ('{"id": "q"}', ErrorCode.INVALID_MESSAGE, "q"),
        ('{"type": ["x"], "id": 1}', ErrorCode.INVALID_MESSAGE, 1),
        ('{"type": "HEARTBEAT", "payload": 5, "id": 2}', ErrorCode.INVALID_MESSAGE, 2),
        ('{"type": "HEARTBEAT", "id": {"a": 1}}', ErrorCode.INVALID_MESSAGE, None),
        ('{"type": "HEARTBEAT", "id": true}', ErrorCode.INVALID_MESSAGE, None),
        ('{"type": "MARKET_DATA", "id": "m"}', ErrorCode.UNKNOWN_TYPE, "m"),
        ('{"type": "heartbeat"}', ErrorCode.UNKNOWN_TYPE, None),
    ],
)
def test_parse_refuses_with_the_contract_error_code(text, code, echoed):
    with pytest.raises(ProtocolError) as refused:
        parse(text)
    assert refused.value.code is code
    error = json.loads(refused.value.encode())
    assert error["type"] == "ERROR"
    assert error["payload"]["code"] == code.value
    assert error.get("id") == echoed
