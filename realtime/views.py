"""HTTP views of the real-time module: the connection status document and market-data intake."""

from __future__ import annotations

from rest_framework.views import APIView


class ConnectionStatusView(APIView):
    pass


class MarketDataView(APIView):
    pass
