"""Django's middleware declared synchronous only (tradingrt.middleware): the same behaviour,
entered in one thread handoff per ASGI request instead of one per hook."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.test import AsyncClient

from tests.conftest import access_token_for

STOCK = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]


def test_the_chain_is_djangos_own_in_the_same_order():
    from django.utils.module_loading import import_string

    ours = [import_string(path) for path in django_settings.MIDDLEWARE]
    stock = [import_string(path) for path in STOCK]
    assert len(ours) == len(stock)
    for mine, django_class in zip(ours, stock, strict=True):
        assert issubclass(mine, django_class)
        assert not getattr(mine, "async_capable", False)
        if mine is not django_class:  # nothing changed but the flag
            assert mine.__dict__.keys() <= {
                "async_capable",
                "__module__",
                "__doc__",
                "__qualname__",
            }


async def handoffs_per_request(thread_handoffs, token: str) -> int:
    """Thread handoffs of one GET /ws/status through the ASGI request path."""
    before = thread_handoffs()
    response = await AsyncClient().get("/ws/status", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response["X-Frame-Options"] == "DENY"  # the chain ran
    assert response["X-Content-Type-Options"] == "nosniff"
    return thread_handoffs() - before


@pytest.mark.django_db(transaction=True)
async def test_an_asgi_request_enters_the_chain_once_not_once_per_hook(
    staff, settings, thread_handoffs
):
    token = await sync_to_async(access_token_for)(staff)
    ours = await handoffs_per_request(thread_handoffs, token)
    settings.MIDDLEWARE = STOCK
    stock = await handoffs_per_request(thread_handoffs, token)
    assert ours <= 6, ours  # request_started, the chain, CSRF's process_view, the view, ...
    assert stock >= ours + 8, (ours, stock)  # two per process_request/process_response hook
