"""App configuration of realtime: connects the domain models' signals to the update services."""

from django.apps import AppConfig


class RealtimeConfig(AppConfig):
    name = "realtime"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from realtime import checks, receivers  # noqa: F401 - checks registers itself
        from realtime.outbound import defer_autobahn_debug_formatting

        receivers.connect()
        defer_autobahn_debug_formatting()  # under Daphne: a fifth of each connect's CPU
