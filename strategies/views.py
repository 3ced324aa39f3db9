"""REST views of strategies: a user's own (staff: everyone's), edits and the lifecycle actions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from strategies.models import Strategy
from strategies.selectors import strategy_list
from strategies.serializers import (
    StrategyFilterSerializer,
    StrategySerializer,
    StrategyWriteSerializer,
)
from strategies.services import (
    strategy_create,
    strategy_pause,
    strategy_start,
    strategy_stop,
    strategy_update,
)
from tradingrt.api import BAD_REQUEST, CONFLICT, NOT_FOUND, ServiceErrorsUseApiNames


def _lifecycle_schema(summary: str) -> Callable[[Any], Any]:
    return extend_schema(
        request=None,
        responses={200: StrategySerializer, 404: NOT_FOUND, 409: CONFLICT},
        description=f"{summary} An illegal transition answers 409.",
    )


class StrategyViewSet(ServiceErrorsUseApiNames, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """A user's own strategies (staff: everyone's); others' strategies answer 404. No PUT."""

    permission_classes = [IsAuthenticated]
    serializer_class = StrategySerializer

    def get_serializer_class(self) -> Any:
        if self.action in ("create", "partial_update"):
            return StrategyWriteSerializer
        return StrategySerializer

    def get_queryset(self) -> QuerySet[Strategy]:
        if getattr(self, "swagger_fake_view", False):
            return Strategy.objects.none()
        return strategy_list(owner=self._owner_filter())

    def _owner_filter(self) -> Any:
        user = self.request.user
        return None if user.is_staff else user

    @extend_schema(
        parameters=[StrategyFilterSerializer], responses={200: StrategySerializer(many=True)}
    )
    def list(self, request: Request) -> Response:
        filters = StrategyFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        strategies = strategy_list(owner=self._owner_filter(), **filters.validated_data)
        return Response(StrategySerializer(strategies, many=True).data)

    @extend_schema(
        request=StrategyWriteSerializer,
        responses={201: StrategySerializer, 400: BAD_REQUEST},
        description="Create a DRAFT strategy owned by the requesting user.",
    )
    def create(self, request: Request) -> Response:
        body = self.get_serializer(data=request.data)
        body.is_valid(raise_exception=True)
        strategy = strategy_create(owner=request.user, **body.validated_data)
        return Response(StrategySerializer(strategy).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={200: StrategySerializer, 404: NOT_FOUND})
    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(
        request=StrategyWriteSerializer,
        responses={200: StrategySerializer, 400: BAD_REQUEST, 404: NOT_FOUND},
        description="Change name, description and/or parameters. The status changes only "
        "through start, pause and stop.",
    )
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        strategy = self.get_object()
        body = self.get_serializer(data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        strategy = strategy_update(strategy=strategy, **body.validated_data)
        return Response(StrategySerializer(strategy).data)

    @_lifecycle_schema("DRAFT or PAUSED -> RUNNING.")
    @action(detail=True, methods=["post"])
    def start(self, request: Request, pk: str | None = None) -> Response:
        return Response(StrategySerializer(strategy_start(strategy=self.get_object())).data)

    @_lifecycle_schema("RUNNING -> PAUSED.")
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str | None = None) -> Response:
        return Response(StrategySerializer(strategy_pause(strategy=self.get_object())).data)

    @_lifecycle_schema("DRAFT, RUNNING, PAUSED or ERROR -> STOPPED.")
    @action(detail=True, methods=["post"])
    def stop(self, request: Request, pk: str | None = None) -> Response:
        return Response(StrategySerializer(strategy_stop(strategy=self.get_object())).data)
