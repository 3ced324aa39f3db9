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
    response = staff_client.get("/api/users/", {"ids": f"{other_trader.pk},{trader.pk},999999"})
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
    response = trader_client.get("/api/users/", {"ids": str(other_trader.pk)})
    assert response.status_code == 403
    assert "username" not in response.content.decode()


def test_anonymous_requests_are_refused(api_client, trader):
    assert api_client.get("/api/users/").status_code == 401


def test_the_view_user_permission_is_enough(trader):
    auditor: Any = UserFactory(username="auditor")
    auditor.user_permissions.add(Permission.objects.get(codename="view_user"))
    response = _client_for(auditor).get("/api/users/", {"ids": str(trader.pk)})
    assert response.status_code == 200
    assert response.json() == [{"id": trader.pk, "username": trader.username}]


NOT_IDS = ["x", "0", "-3", "1,,2", "1, 2", "1.5", str(2**63), "31539044724722352128"]
NOT_IDS.append("\u0661")  # an Arabic-Indic 1: a digit to str.isdigit, not to us


@pytest.mark.parametrize("ids", NOT_IDS)
def test_ids_that_are_not_positive_integers_answer_400(staff_client, ids):
    response = staff_client.get("/api/users/", {"ids": ids})
    assert response.status_code == 400
    assert response.json() == {
        "ids": ["Give user ids as positive integers separated by commas, like 1,2,3."]
    }


def test_too_many_ids_at_once_answer_400(staff_client):
    ids = ",".join(str(n) for n in range(1, MAX_IDS_PER_REQUEST + 2))
    response = staff_client.get("/api/users/", {"ids": ids})
    assert response.status_code == 400
    assert response.json() == {"ids": [f"Ask for at most {MAX_IDS_PER_REQUEST} ids at once."]}


def test_as_many_ids_as_allowed_are_answered(staff_client, trader):
    ids = ",".join(str(n) for n in range(trader.pk, trader.pk + MAX_IDS_PER_REQUEST))
    response = staff_client.get("/api/users/", {"ids": ids})
    assert response.status_code == 200
    assert {"id": trader.pk, "username": trader.username} in response.json()


def test_an_id_past_the_largest_database_id_is_a_400_not_a_500(staff_client):
    response = staff_client.get("/api/users/", {"ids": "1,31539044724722352128"})
    assert response.status_code == 400  # found by the REST fuzzer: SQLite cannot bind it
    assert "ids" in response.json()
