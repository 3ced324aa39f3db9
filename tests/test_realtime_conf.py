"""Real-time settings: validated once, at start-up, with a message that says how to fix them."""

from __future__ import annotations

import subprocess
import sys

import pytest
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from realtime.conf import DEFAULTS, SPEC, realtime_settings
from tests.live import ROOT, server_environment


def test_every_setting_has_a_type_and_bounds():
    assert set(SPEC) == set(DEFAULTS)
    assert realtime_settings.problems() == []


@pytest.mark.parametrize(
    ("configured", "says"),
    [
        ({"HEARTBEAT_INTERVAL_SECS": "soon"}, "HEARTBEAT_INTERVAL_SECS must be a number"),
        ({"HEARTBEAT_INTERVAL_SECS": -1}, "HEARTBEAT_INTERVAL_SECS must be between"),
        ({"MAX_TOPICS_PER_CONNECTION": 2.5}, "MAX_TOPICS_PER_CONNECTION must be a whole number"),
        ({"RATE_LIMIT_BURST": True}, "RATE_LIMIT_BURST must be a whole number"),
        ({"ALLOWED_ORIGINS": "https://a.example"}, "ALLOWED_ORIGINS must be a list"),
        ({"NO_SUCH_SETTING": 1}, "Unknown REALTIME setting"),
    ],
)
def test_a_bad_value_fails_the_system_check_and_its_first_use(settings, configured, says):
    settings.REALTIME = configured
    errors = checks.run_checks(tags=["realtime"])
    assert [e.id for e in errors] == ["realtime.E001"]
    assert says in errors[0].msg
    name = next(iter(configured))
    if name in DEFAULTS:
        with pytest.raises(ImproperlyConfigured, match=says):
            getattr(realtime_settings, name)


def test_whole_numbers_are_read_as_floats_where_seconds_are_meant(settings):
    settings.REALTIME = {"HEARTBEAT_INTERVAL_SECS": 5}
    assert realtime_settings.HEARTBEAT_INTERVAL_SECS == 5.0
    assert isinstance(realtime_settings.HEARTBEAT_INTERVAL_SECS, float)


def test_a_server_does_not_start_with_a_bad_environment_value():
    env = server_environment(realtime={}, extra={"REALTIME_PRUNE_INTERVAL_SECS": "often"})
    result = subprocess.run(
        [sys.executable, "-c", "import tradingrt.asgi"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "Invalid real-time settings" in result.stderr
    assert "PRUNE_INTERVAL_SECS must be a number, not 'often'" in result.stderr
