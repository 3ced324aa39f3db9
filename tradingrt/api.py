"""Shared REST pieces: contract-formatted serializer fields and the API error handler."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers, status
from rest_framework.exceptions import APIException
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from tradingrt.errors import StateConflict
from tradingrt.formats import format_decimal, format_timestamp


class Conflict(APIException):
    """409: the object exists but cannot make that state change now."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "This change is not allowed in the object's current state."
    default_code = "conflict"


@extend_schema_field(OpenApiTypes.STR)
class DecimalStringField(serializers.DecimalField):
    """A decimal read and written as a JSON string without trailing zeros."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_digits", 28)
        kwargs.setdefault("decimal_places", 8)
        super().__init__(**kwargs)

    def to_representation(self, value: Any) -> str | None:
        if value is None:
            return None
        return format_decimal(Decimal(value))


@extend_schema_field(OpenApiTypes.DATETIME)
class TimestampField(serializers.DateTimeField):
    """A datetime as ISO-8601 UTC with milliseconds and a Z."""

    def to_representation(self, value: datetime | None) -> str | None:
        return format_timestamp(value)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus the services' ValidationError (400) and StateConflict (409)."""
    if isinstance(exc, StateConflict):
        exc = Conflict(str(exc) or None)
    if isinstance(exc, DjangoValidationError):
        if hasattr(exc, "message_dict"):
            detail: Any = exc.message_dict
        else:
            detail = {"detail": exc.messages}
        return Response(detail, status=status.HTTP_400_BAD_REQUEST)
    return drf_exception_handler(exc, context)
