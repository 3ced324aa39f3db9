"""HTTP views of the real-time module: the connection status document and market-data intake."""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from realtime.market_data import market_data
from realtime.permissions import CanPublishMarketData, CanViewConnections
from realtime.selectors import connection_status
from realtime.serializers import (
    MAX_TICKS_PER_REQUEST,
    ConnectionStatusSerializer,
    MarketDataAcceptedSerializer,
    TickSerializer,
)


class ConnectionStatusView(APIView):
    """Live WebSocket connections across every server process (CONTRACT section 6)."""

    permission_classes = [CanViewConnections]

    @extend_schema(responses=ConnectionStatusSerializer, operation_id="ws_status")
    def get(self, request: Request) -> Response:
        return Response(connection_status())


class MarketDataView(APIView):
    """Publish market-data ticks to `market:{SYMBOL}` and mark positions to market."""

    permission_classes = [CanPublishMarketData]

    @extend_schema(
        request=TickSerializer(many=True),
        responses={202: MarketDataAcceptedSerializer},
        examples=[
            OpenApiExample("One tick", value={"symbol": "AAPL", "last": "189.5"}),
            OpenApiExample(
                "Several ticks",
                value=[
                    {"symbol": "AAPL", "last": "189.5", "bid": "189.49", "ask": "189.51"},
                    {"symbol": "MSFT", "last": "411.2", "volume": "1200"},
                ],
            ),
        ],
    )
    def post(self, request: Request) -> Response:
        many = isinstance(request.data, list)
        if many and not 1 <= len(request.data) <= MAX_TICKS_PER_REQUEST:
            raise serializers.ValidationError(
                {"detail": f"Send between 1 and {MAX_TICKS_PER_REQUEST} ticks per request."}
            )
        serializer = TickSerializer(data=request.data, many=many)
        serializer.is_valid(raise_exception=True)
        rows: list[dict[str, Any]] = (
            serializer.validated_data if many else [serializer.validated_data]
        )
        ticks = [TickSerializer.to_tick(row) for row in rows]
        async_to_sync(market_data.apublish)(ticks)
        return Response({"accepted": len(ticks)}, status=status.HTTP_202_ACCEPTED)
