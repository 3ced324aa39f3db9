"""MarketQuote leaves realtime (its table now belongs to market); its permission stays here.

`realtime.publish_market_data` moves onto MarketDataFeed (no table), keeping its row and so
every grant of it; the content type of the quotes follows the model to `market`.
"""

from typing import Any

from django.db import migrations

OLD = ("realtime", "marketquote")
NEW = ("market", "marketquote")
HOLDER = ("realtime", "marketdatafeed")
CODENAME = "publish_market_data"


def _move(
    apps: Any,
    *,
    source: tuple[str, str],
    target: tuple[str, str],
    holder_from: tuple[str, str],
    holder_to: tuple[str, str],
) -> None:
    content_type = apps.get_model("contenttypes", "ContentType")
    permission = apps.get_model("auth", "Permission")
    moving = content_type.objects.filter(app_label=source[0], model=source[1]).first()
    if moving is None:
        return  # a new database: post_migrate creates the content types and permissions
    permission_from = content_type.objects.filter(
        app_label=holder_from[0], model=holder_from[1]
    ).first()
    if permission_from is not None:
        permission_to, _ = content_type.objects.get_or_create(
            app_label=holder_to[0], model=holder_to[1]
        )
        permission.objects.filter(content_type=permission_from, codename=CODENAME).update(
            content_type=permission_to
        )
    if not content_type.objects.filter(app_label=target[0], model=target[1]).exists():
        moving.app_label, moving.model = target
        moving.save(update_fields=["app_label", "model"])


def forwards(apps: Any, schema_editor: Any) -> None:
    _move(apps, source=OLD, target=NEW, holder_from=OLD, holder_to=HOLDER)


def backwards(apps: Any, schema_editor: Any) -> None:
    _move(apps, source=NEW, target=OLD, holder_from=HOLDER, holder_to=OLD)


class Migration(migrations.Migration):
    dependencies = [
        ("realtime", "0001_initial"),
        ("market", "0001_initial"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="MarketQuote")],
            database_operations=[],  # the table is market's now
        ),
        migrations.CreateModel(
            name="MarketDataFeed",
            fields=[],
            options={
                "managed": False,
                "default_permissions": (),
                "permissions": [("publish_market_data", "Can publish market data ticks")],
            },
        ),
        migrations.RunPython(forwards, backwards),
    ]
