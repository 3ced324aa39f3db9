"""REST helpers for end-to-end tests: an authenticated client of a live server, placing orders."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
from rest_framework_simplejwt.tokens import AccessToken


def api(server: Any, token: str) -> httpx.AsyncClient:
    """An async HTTP client of `server` (a tests.live.LiveServer) with a bearer token."""
    return httpx.AsyncClient(
        base_url=server.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


def short_token(user: Any, seconds: float) -> str:
    """An access token for `user` that expires `seconds` from now."""
    token = AccessToken.for_user(user)
    token.set_exp(lifetime=timedelta(seconds=seconds))
    return str(token)


async def place(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    """Place an order (a LIMIT buy of 10 AAPL at 100 unless told otherwise); the 201 body."""
    body = {
        "symbol": "AAPL",
        "side": "BUY",
        "orderType": "LIMIT",
        "quantity": "10",
        "price": "100",
    } | body
    response = await client.post("/api/orders/", json=body)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result
