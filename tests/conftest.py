"""Shared fixtures: users, authenticated API clients and tokens."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken

from tests.factories import UserFactory


@pytest.fixture
def staff(db):
    return UserFactory(username="staff", is_staff=True)


@pytest.fixture
def trader(db):
    return UserFactory(username="alice")


@pytest.fixture
def other_trader(db):
    return UserFactory(username="bob")


def access_token_for(user) -> str:
    return str(AccessToken.for_user(user))


@pytest.fixture
def api_client():
    return APIClient()


def _client_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_for(user)}")
    return client


@pytest.fixture
def staff_client(staff):
    return _client_for(staff)


@pytest.fixture
def trader_client(trader):
    return _client_for(trader)


@pytest.fixture
def other_client(other_trader):
    return _client_for(other_trader)


# --- Real-time fixtures -------------------------------------------------------------------

@pytest.fixture(scope="session")
def live(django_db_setup):
    """A real Daphne serving the whole project, on the test database, for the session.

    Tests that use it must commit their data: mark them django_db(transaction=True).
    """
    from tests.live import live_server

    with live_server(
        realtime={"AUTH_TIMEOUT_SECS": 1.5, "RATE_LIMIT_PER_SEC": 5, "RATE_LIMIT_BURST": 10,
                  "RATE_LIMIT_MAX_STRIKES": 3, "MAX_TOPICS_PER_CONNECTION": 5}
    ) as server:
        yield server


@pytest.fixture
def trader_token(trader):
    return access_token_for(trader)


@pytest.fixture
def other_token(other_trader):
    return access_token_for(other_trader)


@pytest.fixture
def staff_token(staff):
    return access_token_for(staff)


# --- Domain fixtures (orders, positions, strategies) --------------------------------------


@pytest.fixture
def gateway(db):
    """The execution gateway: no staff status, only the orders.add_fill permission."""
    from django.contrib.auth.models import Permission

    user = UserFactory(username="gateway")
    user.user_permissions.add(Permission.objects.get(codename="add_fill"))
    return user


@pytest.fixture
def gateway_client(gateway):
    return _client_for(gateway)
