"""System checks of the real-time module: its settings are valid before anything is served."""

from __future__ import annotations

from typing import Any

from django.core import checks

from realtime.conf import realtime_settings


@checks.register("realtime")
def check_realtime_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Every REALTIME value has the right type and lies within its bounds (realtime.conf.SPEC)."""
    realtime_settings.reload()
    return [
        checks.Error(
            problem, hint="See realtime/conf.py for each setting's meaning.", id="realtime.E001"
        )
        for problem in realtime_settings.problems()
    ]


def fail_on_bad_settings() -> None:
    """Raise ImproperlyConfigured listing every invalid REALTIME value (servers, at start)."""
    from django.core.exceptions import ImproperlyConfigured

    problems = realtime_settings.problems()
    if problems:
        raise ImproperlyConfigured("Invalid real-time settings:\n  " + "\n  ".join(problems))
