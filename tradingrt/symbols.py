"""Instrument symbols: one spelling everywhere, safe to embed in topic names (`market:BTC-USD`)."""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError

SYMBOL_PATTERN = re.compile(r"^[A-Z0-9._-]{1,32}$")


def symbol_normalize(value: object, *, field: str = "symbol") -> str:
    """`value` stripped and upper-cased; ValidationError({field: ...}) unless a valid symbol."""
    if not isinstance(value, str):
        raise ValidationError({field: "Enter the symbol as text, like BTC-USD."})
    symbol = value.strip().upper()
    if not SYMBOL_PATTERN.fullmatch(symbol):
        raise ValidationError(
            {
                field: (
                    f"{value!r} is not a valid symbol: use 1 to 32 letters, digits, '.', '_' or "
                    "'-', like BTC-USD."
                )
            }
        )
    return symbol
