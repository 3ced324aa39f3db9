"""Migrating an existing database moves MarketQuote to market with its rows and its grants."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from tests.factories import UserFactory

BEFORE = [("realtime", "0001_initial"), ("market", None)]
AFTER = [("realtime", "0002_marketquote_moves_to_market"), ("market", "0001_initial")]


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state([t for t in targets if t[1] is not None]).apps


def _migrate_to_latest() -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_migrating_forward_keeps_the_quotes_and_the_publish_permission_grants():
    old_apps = _migrate(BEFORE)
    try:
        # The database as it was: quotes in realtime, the permission on realtime.MarketQuote.
        ContentType.objects.filter(app_label="market").delete()
        ContentType.objects.filter(app_label="realtime", model="marketdatafeed").delete()
        ContentType.objects.clear_cache()
        old_type, _ = ContentType.objects.get_or_create(app_label="realtime", model="marketquote")
        Permission.objects.filter(content_type=old_type).delete()
        granted = Permission.objects.create(
            content_type=old_type, codename="publish_market_data", name="Can publish"
        )
        feed = UserFactory()
        feed.user_permissions.add(granted)
        old_apps.get_model("realtime", "MarketQuote").objects.create(
            symbol="BTC-USD", last="101.5", timestamp="2026-01-02T03:04:05Z"
        )
    finally:
        _migrate(AFTER)
        _migrate_to_latest()  # the rest of the suite needs every later migration back
    ContentType.objects.clear_cache()

    from market.models import MarketQuote

    quote = MarketQuote.objects.get(symbol="BTC-USD")
    assert str(quote.last.normalize()) == "101.5"
    permission = Permission.objects.get(pk=granted.pk)
    assert (permission.content_type.app_label, permission.content_type.model) == (
        "realtime",
        "marketdatafeed",
    )
    assert type(feed).objects.get(pk=feed.pk).has_perm("realtime.publish_market_data")
    assert ContentType.objects.get(app_label="market", model="marketquote").pk == old_type.pk
