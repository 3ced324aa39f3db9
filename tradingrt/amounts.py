"""Exact decimal amounts: turning service input into stored-precision decimals, and rounding."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation

from django.core.exceptions import ValidationError

from tradingrt.models import DECIMAL_PLACES, MAX_DIGITS

ZERO = Decimal("0")
# The precision every quantity, price and amount is stored with (tradingrt.models.decimal_field).
AMOUNT_QUANTUM = Decimal(1).scaleb(-DECIMAL_PLACES)
# Ratios (portfolio weight, win rate): six places tell 0.0001 % apart, which is plenty to read.
RATIO_QUANTUM = Decimal("0.000001")
MAX_INTEGER_DIGITS = MAX_DIGITS - DECIMAL_PLACES
# Wide enough that quantizing any stored-size value, or a product of two, never overflows.
_WIDE = Context(prec=2 * MAX_DIGITS + DECIMAL_PLACES)


def to_amount(value: object, *, field: str) -> Decimal:
    """`value` (Decimal, int or numeric string) as a Decimal at the stored precision.

    Raises ValidationError({field: ...}) when it is not a finite number that fits the column,
    so a service can report bad input against the field that carried it.
    """
    if isinstance(value, bool):
        raise ValidationError({field: "Enter a number."})
    try:
        number = Decimal(str(value).strip()) if not isinstance(value, Decimal) else value
    except (InvalidOperation, ValueError):
        raise ValidationError({field: "Enter a number."}) from None
    if not number.is_finite():
        raise ValidationError({field: "Enter a finite number."})
    if number != 0:
        if -number.normalize(_WIDE).as_tuple().exponent > DECIMAL_PLACES:  # type: ignore[operator]
            raise ValidationError(
                {field: f"Use at most {DECIMAL_PLACES} decimal places (got {number})."}
            )
        if number.adjusted() + 1 > MAX_INTEGER_DIGITS:
            raise ValidationError(
                {field: f"Use at most {MAX_INTEGER_DIGITS} digits before the decimal point."}
            )
    return round_amount(number)


def round_amount(value: Decimal) -> Decimal:
    """`value` rounded (half to even) to the stored precision of 8 decimal places."""
    return value.quantize(AMOUNT_QUANTUM, rounding=ROUND_HALF_EVEN, context=_WIDE)


def round_ratio(value: Decimal) -> Decimal:
    """A ratio rounded (half to even) to 6 decimal places."""
    return value.quantize(RATIO_QUANTUM, rounding=ROUND_HALF_EVEN, context=_WIDE)
