"""Field definitions shared by the domain models (money and quantities as exact decimals)."""

from __future__ import annotations

from typing import Any

from django.db import models

MAX_DIGITS = 28
DECIMAL_PLACES = 8


def decimal_field(**kwargs: Any) -> models.DecimalField:
    """A DecimalField wide enough for any price, quantity or amount this platform handles."""
    return models.DecimalField(max_digits=MAX_DIGITS, decimal_places=DECIMAL_PLACES, **kwargs)
