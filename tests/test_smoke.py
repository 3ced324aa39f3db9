"""The project boots: settings load, migrations apply and the schema renders."""

import pytest


@pytest.mark.django_db
def test_openapi_schema_is_public(api_client):
    response = api_client.get("/api/schema/")
    assert response.status_code == 200
