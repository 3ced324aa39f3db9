"""MarketQuote moves here from realtime, keeping its rows: the state moves, the table is renamed."""

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("realtime", "0001_initial"),  # created realtime_marketquote, which this takes over
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="MarketQuote",
                    fields=[
                        (
                            "symbol",
                            models.CharField(max_length=32, primary_key=True, serialize=False),
                        ),
                        ("last", models.DecimalField(decimal_places=8, max_digits=28)),
                        (
                            "bid",
                            models.DecimalField(
                                blank=True, decimal_places=8, max_digits=28, null=True
                            ),
                        ),
                        (
                            "ask",
                            models.DecimalField(
                                blank=True, decimal_places=8, max_digits=28, null=True
                            ),
                        ),
                        (
                            "volume",
                            models.DecimalField(
                                blank=True, decimal_places=8, max_digits=28, null=True
                            ),
                        ),
                        ("timestamp", models.DateTimeField()),
                    ],
                    options={"ordering": ["symbol"], "db_table": "realtime_marketquote"},
                ),
            ],
            database_operations=[],
        ),
        # Now a real rename of the existing table, rows and all, to this app's name.
        migrations.AlterModelTable(name="marketquote", table=None),
    ]
