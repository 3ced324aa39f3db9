"""The strategies REST API: fields, edits, lifecycle actions, isolation and status codes."""

from __future__ import annotations

import re

import pytest

from strategies.models import Strategy, StrategyStatus
from tests.factories import StrategyFactory

pytestmark = pytest.mark.django_db

S = StrategyStatus
STRATEGY_FIELDS = {
    "id",
    "ownerId",
    "name",
    "description",
    "parameters",
    "status",
    "metrics",
    "createdAt",
    "updatedAt",
    "version",
}
CONTRACT_METRICS = {
    "orderCount",
    "filledOrderCount",
    "realizedPnl",
    "unrealizedPnl",
    "totalPnl",
    "winRate",
}
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture
def alice_strategy(trader):
    return StrategyFactory(owner=trader)


@pytest.fixture
def bob_strategy(other_trader):
    return StrategyFactory(owner=other_trader, status=S.RUNNING)


def test_create_answers_201_with_a_draft(trader, trader_client):
    response = trader_client.post(
        "/api/strategies/",
        {"name": "Momentum", "description": "Breakouts.", "parameters": {"window": 20}},
        format="json",
    )

    assert response.status_code == 201
    body = response.json()
    assert set(body) == STRATEGY_FIELDS
    assert body["ownerId"] == trader.pk
    assert (body["name"], body["description"], body["status"]) == (
        "Momentum",
        "Breakouts.",
        "DRAFT",
    )
    assert body["parameters"] == {"window": 20}
    assert set(body["metrics"]) >= CONTRACT_METRICS
    assert body["metrics"]["winRate"] is None
    assert body["metrics"]["realizedPnl"] == "0"
    assert TIMESTAMP.match(body["createdAt"])
    assert TIMESTAMP.match(body["updatedAt"])


def test_create_with_only_a_name(trader_client):
    response = trader_client.post("/api/strategies/", {"name": "Bare"}, format="json")

    assert response.status_code == 201
    assert (response.json()["description"], response.json()["parameters"]) == ("", {})


def test_create_ignores_a_status_in_the_body(trader_client):
    response = trader_client.post(
        "/api/strategies/", {"name": "Sneaky", "status": "RUNNING"}, format="json"
    )
    assert response.json()["status"] == "DRAFT"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "Listy", "parameters": [1, 2]}, "parameters"),
        ({"name": "Texty", "parameters": "window=20"}, "parameters"),
    ],
)
def test_create_refuses_an_invalid_body_with_400(trader_client, body, field):
    response = trader_client.post("/api/strategies/", body, format="json")

    assert response.status_code == 400
    assert field in response.json()
    assert not Strategy.objects.exists()


def test_patch_changes_the_given_fields(trader_client, alice_strategy):
    response = trader_client.patch(
        f"/api/strategies/{alice_strategy.pk}/", {"parameters": {"window": 50}}, format="json"
    )

    assert response.status_code == 200
    assert response.json()["parameters"] == {"window": 50}
    assert response.json()["name"] == alice_strategy.name


def test_patch_cannot_change_the_status(trader_client, alice_strategy):
    response = trader_client.patch(
        f"/api/strategies/{alice_strategy.pk}/", {"status": "RUNNING"}, format="json"
    )

    assert response.status_code == 200
    alice_strategy.refresh_from_db()
    assert alice_strategy.status == S.DRAFT


def test_patch_with_non_object_parameters_is_400(trader_client, alice_strategy):
    response = trader_client.patch(
        f"/api/strategies/{alice_strategy.pk}/", {"parameters": [1]}, format="json"
    )
    assert response.status_code == 400
    assert set(response.json()) == {"parameters"}


def test_put_is_not_allowed(trader_client, alice_strategy):
    response = trader_client.put(
        f"/api/strategies/{alice_strategy.pk}/", {"name": "Whole"}, format="json"
    )
    assert response.status_code == 405


def test_patching_another_users_strategy_is_404(trader_client, bob_strategy):
    response = trader_client.patch(
        f"/api/strategies/{bob_strategy.pk}/", {"name": "Mine now"}, format="json"
    )

    assert response.status_code == 404
    bob_strategy.refresh_from_db()
    assert bob_strategy.name != "Mine now"


def test_traders_list_their_own_strategies_and_staff_list_all(
    trader_client, staff_client, alice_strategy, bob_strategy
):
    assert [s["id"] for s in trader_client.get("/api/strategies/").json()] == [alice_strategy.pk]
    assert {s["id"] for s in staff_client.get("/api/strategies/").json()} == {
        alice_strategy.pk,
        bob_strategy.pk,
    }


def test_list_filters_by_status(staff_client, alice_strategy, bob_strategy):
    response = staff_client.get("/api/strategies/?status=RUNNING")
    assert [s["id"] for s in response.json()] == [bob_strategy.pk]


def test_retrieve_another_users_strategy_is_404(trader_client, bob_strategy):
    assert trader_client.get(f"/api/strategies/{bob_strategy.pk}/").status_code == 404


def test_start_pause_start_stop(trader_client, alice_strategy):
    base = f"/api/strategies/{alice_strategy.pk}"
    statuses = [
        trader_client.post(f"{base}/{action}/").json()["status"]
        for action in ("start", "pause", "start", "stop")
    ]
    assert statuses == ["RUNNING", "PAUSED", "RUNNING", "STOPPED"]


def test_each_change_answers_with_the_next_version(trader_client):
    created = trader_client.post("/api/strategies/", {"name": "Momentum"}, format="json").json()
    base = f"/api/strategies/{created['id']}"
    renamed = trader_client.patch(f"{base}/", {"name": "Breakout"}, format="json").json()
    started = trader_client.post(f"{base}/start/").json()

    assert [created["version"], renamed["version"], started["version"]] == [1, 2, 3]
    assert trader_client.get(f"{base}/").json()["version"] == 3
    assert Strategy.objects.get(pk=created["id"]).version == 3


@pytest.mark.parametrize(
    ("status", "action"),
    [(S.DRAFT, "pause"), (S.RUNNING, "start"), (S.STOPPED, "start"), (S.STOPPED, "stop")],
)
def test_an_illegal_transition_is_409(trader, trader_client, status, action):
    strategy = StrategyFactory(owner=trader, status=status)

    response = trader_client.post(f"/api/strategies/{strategy.pk}/{action}/")

    assert response.status_code == 409
    assert status in response.json()["detail"]


def test_trader_cannot_stop_another_users_strategy(trader_client, bob_strategy):
    assert trader_client.post(f"/api/strategies/{bob_strategy.pk}/stop/").status_code == 404
    bob_strategy.refresh_from_db()
    assert bob_strategy.status == S.RUNNING


def test_staff_stop_any_strategy(staff_client, bob_strategy):
    response = staff_client.post(f"/api/strategies/{bob_strategy.pk}/stop/")
    assert (response.status_code, response.json()["status"]) == (200, "STOPPED")


def test_anonymous_is_401(api_client, alice_strategy):
    assert api_client.get("/api/strategies/").status_code == 401
    assert api_client.post(f"/api/strategies/{alice_strategy.pk}/start/").status_code == 401


# --- bounded free-form fields (every STRATEGY_UPDATE carries them) ----------------------------


def _parameters_of_bytes(size: int) -> dict:
    """A parameters object whose compact JSON takes exactly `size` bytes."""
    overhead = len('{"blob":""}')
    return {"blob": "x" * (size - overhead)}


def test_create_refuses_parameters_over_the_byte_limit_naming_it(trader_client):
    from strategies.services import PARAMETERS_MAX_BYTES

    response = trader_client.post(
        "/api/strategies/",
        {"name": "Big", "parameters": _parameters_of_bytes(PARAMETERS_MAX_BYTES + 1)},
        format="json",
    )

    assert response.status_code == 400
    assert set(response.json()) == {"parameters"}
    assert str(PARAMETERS_MAX_BYTES) in response.json()["parameters"][0]
    assert not Strategy.objects.exists()


def test_create_accepts_parameters_of_exactly_the_byte_limit(trader_client):
    from strategies.services import PARAMETERS_MAX_BYTES

    parameters = _parameters_of_bytes(PARAMETERS_MAX_BYTES)
    response = trader_client.post(
        "/api/strategies/", {"name": "Full", "parameters": parameters}, format="json"
    )

    assert response.status_code == 201
    assert response.json()["parameters"] == parameters


def test_patch_refuses_too_large_parameters_and_keeps_the_old_ones(trader_client, alice_strategy):
    from strategies.services import PARAMETERS_MAX_BYTES

    response = trader_client.patch(
        f"/api/strategies/{alice_strategy.pk}/",
        {"parameters": _parameters_of_bytes(PARAMETERS_MAX_BYTES + 1)},
        format="json",
    )

    assert response.status_code == 400
    assert "bytes" in response.json()["parameters"][0]
    alice_strategy.refresh_from_db()
    assert alice_strategy.parameters == {"window": 20}


def test_patch_refuses_parameters_nested_too_deep(trader_client, alice_strategy):
    from strategies.services import PARAMETERS_MAX_DEPTH

    nested: dict = {}
    for _ in range(PARAMETERS_MAX_DEPTH):  # the outer object makes it one level deeper
        nested = {"n": nested}

    response = trader_client.patch(
        f"/api/strategies/{alice_strategy.pk}/", {"parameters": nested}, format="json"
    )

    assert response.status_code == 400
    assert str(PARAMETERS_MAX_DEPTH) in response.json()["parameters"][0]


def test_create_refuses_a_description_over_the_limit_naming_it(trader_client):
    from strategies.services import DESCRIPTION_MAX_LENGTH

    response = trader_client.post(
        "/api/strategies/",
        {"name": "Wordy", "description": "x" * (DESCRIPTION_MAX_LENGTH + 1)},
        format="json",
    )

    assert response.status_code == 400
    assert str(DESCRIPTION_MAX_LENGTH) in response.json()["description"][0]


def test_schema_documents_the_limits(api_client):
    from strategies.services import DESCRIPTION_MAX_LENGTH, PARAMETERS_MAX_BYTES

    schema = api_client.get("/api/schema/", {"format": "json"}).json()
    body = schema["components"]["schemas"]["StrategyWriteRequest"]["properties"]

    assert body["description"]["maxLength"] == DESCRIPTION_MAX_LENGTH
    assert str(PARAMETERS_MAX_BYTES) in body["parameters"]["description"]


def test_schema_documents_version_as_a_read_only_integer(api_client):
    schemas = api_client.get("/api/schema/", {"format": "json"}).json()["components"]["schemas"]

    for name in ("Order", "Position", "Strategy"):
        assert schemas[name]["properties"]["version"]["type"] == "integer"
        assert schemas[name]["properties"]["version"]["readOnly"] is True
        assert "version" in schemas[name]["required"]


@pytest.mark.parametrize(
    "parameters",
    [{"name": "a\x00b"}, {"k\x00ey": 1}, {"nested": [{"deep": "\x00"}]}],
)
def test_create_refuses_parameters_with_a_nul_character(trader_client, parameters):
    # PostgreSQL's jsonb cannot store \u0000: this was a 500 there (found by the REST fuzzer).
    response = trader_client.post(
        "/api/strategies/", {"name": "Nul", "parameters": parameters}, format="json"
    )
    assert response.status_code == 400
    assert "NUL" in response.json()["parameters"][0]
    assert not Strategy.objects.exists()
