"""Request and response bodies of the real-time module's HTTP endpoints."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from market.ticks import Tick
from tradingrt.api import DecimalStringField, TimestampField
from tradingrt.symbols import symbol_normalize

MAX_TICKS_PER_REQUEST = 1000


class TickSerializer(serializers.Serializer):
    """One market-data tick: `{"symbol","last","bid"?,"ask"?,"volume"?,"timestamp"?}`."""

    symbol = serializers.CharField(max_length=64)
    last = DecimalStringField()
    bid = DecimalStringField(required=False, allow_null=True)
    ask = DecimalStringField(required=False, allow_null=True)
    volume = DecimalStringField(required=False, allow_null=True)
    timestamp = TimestampField(required=False, allow_null=True)

    def validate_symbol(self, value: str) -> str:
        try:
            return symbol_normalize(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict["symbol"]) from None

    def validate_last(self, value: Any) -> Any:
        if value <= 0:
            raise serializers.ValidationError("The last price must be above 0.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        for field in ("bid", "ask", "volume"):
            if attrs.get(field) is not None and attrs[field] < 0:
                raise serializers.ValidationError({field: "Must not be negative."})
        bid, ask = attrs.get("bid"), attrs.get("ask")
        if bid is not None and ask is not None and bid > ask:
            raise serializers.ValidationError({"bid": "The bid must not be above the ask."})
        return attrs

    @staticmethod
    def to_tick(validated: dict[str, Any]) -> Tick:
        return Tick(**validated)


class MarketDataAcceptedSerializer(serializers.Serializer):
    accepted = serializers.IntegerField(help_text="How many ticks were published.")


class ServerStatusSerializer(serializers.Serializer):
    id = serializers.CharField()
    hostname = serializers.CharField()
    pid = serializers.IntegerField()
    connections = serializers.IntegerField()
    startedAt = serializers.CharField()
    heartbeatAt = serializers.CharField()
    expiresAt = serializers.CharField(help_text="Past this, without a heartbeat, it is dead.")


class ConnectionStatusSerializer(serializers.Serializer):
    """The status document (CONTRACT section 6), plus per-server and per-user counts."""

    activeConnections = serializers.IntegerField()
    authenticatedConnections = serializers.IntegerField()
    usersOnline = serializers.IntegerField()
    topicSubscriptions = serializers.DictField(child=serializers.IntegerField())
    servers = ServerStatusSerializer(many=True)
    timestamp = serializers.CharField()


class SecurityEventSerializer(serializers.Serializer):
    kind = serializers.CharField(help_text="auth_failed, login_failed, ... (docs/SECURITY.md)")
    ip = serializers.CharField(help_text="The client IP; empty when unknown.")
    userId = serializers.IntegerField(allow_null=True)
    username = serializers.CharField(help_text="The user's name, or the name a login tried.")
    minute = serializers.CharField(help_text="The minute these events fell in.")
    count = serializers.IntegerField()
    lastAt = serializers.CharField()
    detail = serializers.CharField(help_text="The latest event's detail.")


class IPBlockSerializer(serializers.Serializer):
    ip = serializers.CharField()
    blockedAt = serializers.CharField()
    expiresAt = serializers.CharField()
    failures = serializers.IntegerField()
    reason = serializers.CharField()


class SecurityReportSerializer(serializers.Serializer):
    """The last hour's security events and the IP blocks in force (CONTRACT section 13)."""

    since = serializers.CharField()
    timestamp = serializers.CharField()
    totals = serializers.DictField(child=serializers.IntegerField(), help_text="Per kind.")
    events = SecurityEventSerializer(many=True)
    blocks = IPBlockSerializer(many=True)
