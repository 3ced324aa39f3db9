"""GET /api/users/ (tradingrt.users): usernames for ids, for staff and auth.view_user only."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission

from tests.conftest import _client_for
from tests.factories import UserFactory
from tradingrt.users import MAX_IDS_PER_REQUEST

pytestmark = pytest.mark.django_db


def test_staff_get_usernames_for_the_ids_they_ask_for(staff_client, trader, other_trader):
    response = staff_client.get("/api/users/", {"id": [other_trader.pk, trader.pk, 999_999]})
    assert response.status_code == 200, response.content
    assert response.json() == [
        {"id": trader.pk, "username": trader.username},
        {"id": other_trader.pk, "username": other_trader.username},
    ]


def test_without_ids_staff_get_every_user_ordered_by_id(staff, staff_client, trader):
    body = staff_client.get("/api/users/").json()
    assert body == sorted(body, key=lambda user: user["id"])
    assert {"id": trader.pk, "username": trader.username} in body
    assert {"id": staff.pk, "username": staff.username} in body
    assert all(set(user) == {"id", "username"} for user in body)  # no e-mail, no flags


def test_a_trader_may_not_list_users(trader_client, other_trader):
    response = trader_client.get("/api/users/", {"id": [other_trader.pk]})
    assert response.status_code == 403
    assert "username" not in response.content.decode()


def test_anonymous_requests_are_refused(api_client, trader):
    assert api_client.get("/api/users/").status_code == 401


def test_the_view_user_permission_is_enough(trader):
    auditor: Any = UserFactory(username="auditor")
    auditor.user_permissions.add(Permission.objects.get(codename="view_user"))
    response = _client_for(auditor).get("/api/users/", {"id": [trader.pk]})
    assert response.status_code == 200
    assert response.json() == [{"id": trader.pk, "username": trader.username}]


@pytest.mark.parametrize("ids", [["x"], ["0"], ["-3"]])
def test_ids_that_are_not_positive_integers_answer_400(staff_client, ids):
    response = staff_client.get("/api/users/", {"id": ids})
    assert response.status_code == 400
    assert "id" in response.json()


def test_too_many_ids_at_once_answer_400(staff_client):
    ids = list(range(1, MAX_IDS_PER_REQUEST + 2))
    response = staff_client.get("/api/users/", {"id": ids})
    assert response.status_code == 400
    assert str(MAX_IDS_PER_REQUEST) in str(response.json()["id"])


def test_an_id_past_the_largest_database_id_is_a_400_not_a_500(staff_client):
    response = staff_client.get("/api/users/", {"id": [1, 31539044724722352128]})
    assert response.status_code == 400  # found by the REST fuzzer: SQLite cannot bind it
    assert "id" in response.json()
