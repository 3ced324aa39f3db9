"""Shared REST pieces: contract-formatted fields, the error handler and documented error bodies."""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema_field
from rest_framework import serializers, status
from rest_framework.exceptions import APIException
from rest_framework.exceptions import ValidationError as ApiValidationError
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import exception_handler as drf_exception_handler

from tradingrt.errors import StateConflict
from tradingrt.formats import format_decimal, format_timestamp

_WIDE_CONTEXT = Context(prec=80)  # rounding a product of two amounts never overflows


class Conflict(APIException):
    """409: the object exists but cannot make that state change now."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "This change is not allowed in the object's current state."
    default_code = "conflict"


class ErrorDetailSerializer(serializers.Serializer):
    """DRF's error body for errors not tied to a field (401, 403, 404, 409)."""

    detail = serializers.CharField()


# Shared OpenAPI descriptions of the error answers.
BAD_REQUEST = OpenApiResponse(
    OpenApiTypes.OBJECT, description="Invalid body: field name -> list of messages."
)
NOT_FOUND = OpenApiResponse(ErrorDetailSerializer, description="Absent, or not yours.")
CONFLICT = OpenApiResponse(
    ErrorDetailSerializer, description="Not allowed in the object's current state."
)
FORBIDDEN = OpenApiResponse(ErrorDetailSerializer, description="Not allowed for this user.")


# The `version` of orders, positions and strategies (tradingrt.models.TracksLoadedValues).
VERSION_HELP = (
    "1 when created, one more with every committed change; every WebSocket update carries it "
    "too. Of two representations of the same object, the one with the higher version is newer."
)


# Decimals travel as strings so no client parses them into binary floats.
DECIMAL_STRING_SCHEMA = {"type": "string", "format": "decimal", "example": "101.25"}


@extend_schema_field(DECIMAL_STRING_SCHEMA)
class DecimalStringField(serializers.DecimalField):
    """A decimal read and written as a JSON string without trailing zeros."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_digits", 28)
        kwargs.setdefault("decimal_places", 8)
        super().__init__(**kwargs)

    def to_representation(self, value: Any) -> str | None:  # type: ignore[override]
        if value is None:
            return None
        # Products such as market value carry more places than are stored; round them alike.
        return format_decimal(
            Decimal(value).quantize(
                Decimal(1).scaleb(-(self.decimal_places or 0)),
                rounding=ROUND_HALF_EVEN,
                context=_WIDE_CONTEXT,
            )
        )


@extend_schema_field(OpenApiTypes.DATETIME)
class TimestampField(serializers.DateTimeField):
    """A datetime as ISO-8601 UTC with milliseconds and a Z."""

    def to_representation(self, value: datetime | None) -> str | None:  # type: ignore[override]
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


class ServiceErrorsUseApiNames:
    """Viewset mixin: re-keys a service's ValidationError from model field names to the API's.

    Services report problems against model fields (`order_type`, `stop_price`); the client sent
    `orderType` and `stopPrice`, so the 400 names those, read from the `source` of each field
    of the action's serializer. Errors not tied to a field go under `non_field_errors`.
    """

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, DjangoValidationError) and hasattr(exc, "error_dict"):
            names = api_field_names(self.get_serializer_class())  # type: ignore[attr-defined]
            exc = ApiValidationError(
                {names.get(field, field): messages for field, messages in exc.message_dict.items()}
            )
        return super().handle_exception(exc)  # type: ignore[misc]


def api_field_names(serializer_class: type[serializers.BaseSerializer]) -> dict[str, str]:
    """{model attribute: API field name} for a serializer's fields, plus Django's `__all__`."""
    names = {"__all__": api_settings.NON_FIELD_ERRORS_KEY}
    fields = getattr(serializer_class(), "fields", {})
    for name, field in fields.items():
        names.setdefault(field.source, name)
        if field.source.endswith("_id"):
            names.setdefault(field.source.removesuffix("_id"), name)
    return names
