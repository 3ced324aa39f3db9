"""REST views of positions: read-only, a user's own (staff: everyone's)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, viewsets
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from positions.models import Position
from positions.selectors import position_list, total_exposure_by_user
from positions.serializers import (
    TOTAL_EXPOSURE_BY_USER,
    PositionFilterSerializer,
    PositionSerializer,
)
from tradingrt.api import NOT_FOUND


class PositionViewSet(mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """A user's own positions (staff: everyone's); others' positions answer 404."""

    permission_classes = [IsAuthenticated]
    serializer_class = PositionSerializer

    def get_queryset(self) -> QuerySet[Position]:
        if getattr(self, "swagger_fake_view", False):
            return Position.objects.none()
        return position_list(user=self._owner_filter())

    def _owner_filter(self) -> Any:
        user = self.request.user
        return None if user.is_staff else user

    @extend_schema(
        parameters=[PositionFilterSerializer], responses={200: PositionSerializer(many=True)}
    )
    def list(self, request: Request) -> Response:
        filters = PositionFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        positions = position_list(user=self._owner_filter(), **filters.validated_data)
        # Weights divide by each owner's total over all their positions, not just those listed.
        totals = total_exposure_by_user(user_ids=positions.values("user_id"))
        context = {**self.get_serializer_context(), TOTAL_EXPOSURE_BY_USER: totals}
        return Response(PositionSerializer(positions, many=True, context=context).data)

    @extend_schema(responses={200: PositionSerializer, 404: NOT_FOUND})
    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().retrieve(request, *args, **kwargs)
