"""REST views of orders: list, place, cancel; and the execution gateway's fills and rejections."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from orders.models import Order
from orders.permissions import CanRecordFills
from orders.selectors import fill_list, order_list
from orders.serializers import (
    FillCreateSerializer,
    FillSerializer,
    OrderCreateSerializer,
    OrderFilterSerializer,
    OrderRejectSerializer,
    OrderSerializer,
    RecordedFillSerializer,
)
from orders.services import order_cancel, order_create, order_fill, order_reject
from tradingrt.api import BAD_REQUEST, CONFLICT, FORBIDDEN, NOT_FOUND, ServiceErrorsUseApiNames

# Actions of the execution gateway: they reach every user's orders, and need CanRecordFills.
GATEWAY_ACTIONS = frozenset({"record_fill", "reject"})


class OrderViewSet(
    ServiceErrorsUseApiNames,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """A user's own orders (staff: everyone's); others' orders answer 404."""

    permission_classes = [IsAuthenticated]
    serializer_class = OrderSerializer
    serializer_classes: dict[str, Any] = {
        "list": OrderSerializer,
        "create": OrderCreateSerializer,
        "fills": FillSerializer,
        "record_fill": FillCreateSerializer,
        "reject": OrderRejectSerializer,
    }

    def get_permissions(self) -> list[Any]:
        if self.action in GATEWAY_ACTIONS:
            return [CanRecordFills()]
        return list(super().get_permissions())

    def get_serializer_class(self) -> Any:
        return self.serializer_classes.get(self.action, OrderSerializer)

    def get_queryset(self) -> QuerySet[Order]:
        if getattr(self, "swagger_fake_view", False):
            return Order.objects.none()
        return order_list(user=self._owner_filter())

    def _owner_filter(self) -> Any:
        """None (every user's orders) for staff and the gateway's actions, else the user."""
        user = self.request.user
        return None if user.is_staff or self.action in GATEWAY_ACTIONS else user

    @extend_schema(parameters=[OrderFilterSerializer], responses={200: OrderSerializer(many=True)})
    def list(self, request: Request) -> Response:
        filters = OrderFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        orders = order_list(user=self._owner_filter(), **filters.validated_data)
        return Response(OrderSerializer(orders, many=True).data)

    @extend_schema(
        request=OrderCreateSerializer,
        responses={201: OrderSerializer, 400: BAD_REQUEST, 409: CONFLICT},
        description="Place an order for the requesting user. strategyId must be one of the "
        "user's own strategies; one that is STOPPED or in ERROR answers 409.",
    )
    def create(self, request: Request) -> Response:
        body = self.get_serializer(data=request.data)
        body.is_valid(raise_exception=True)
        order = order_create(user=request.user, **body.validated_data)
        return Response(OrderSerializer(order).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={200: OrderSerializer, 404: NOT_FOUND})
    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(
        request=None,
        responses={200: OrderSerializer, 404: NOT_FOUND, 409: CONFLICT},
        description="Cancel a NEW or PARTIALLY_FILLED order; any other status answers 409.",
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        order = order_cancel(order=self.get_object())
        return Response(OrderSerializer(order).data)

    @extend_schema(
        responses={200: FillSerializer(many=True), 404: NOT_FOUND},
        description="The order's fills in execution order (owner or staff).",
    )
    @action(detail=True, methods=["get"])
    def fills(self, request: Request, pk: str | None = None) -> Response:
        return Response(FillSerializer(fill_list(order=self.get_object()), many=True).data)

    @extend_schema(
        request=FillCreateSerializer,
        responses={
            201: RecordedFillSerializer,
            400: BAD_REQUEST,
            403: FORBIDDEN,
            404: NOT_FOUND,
            409: CONFLICT,
        },
        description="Record an execution against any user's open order (staff, or permission "
        "orders.add_fill). Updates the order, the user's position and the strategy in one "
        "transaction. A quantity above the remaining quantity answers 400; a closed order 409.",
    )
    @fills.mapping.post
    def record_fill(self, request: Request, pk: str | None = None) -> Response:
        order = self.get_object()
        body = self.get_serializer(data=request.data)
        body.is_valid(raise_exception=True)
        fill = order_fill(order=order, **body.validated_data)
        return Response(RecordedFillSerializer(fill).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=OrderRejectSerializer,
        responses={
            200: OrderSerializer,
            400: BAD_REQUEST,
            403: FORBIDDEN,
            404: NOT_FOUND,
            409: CONFLICT,
        },
        description="Reject a NEW order with a reason (staff, or permission orders.add_fill: "
        "the execution gateway). An extension beyond the wire contract.",
    )
    @action(detail=True, methods=["post"])
    def reject(self, request: Request, pk: str | None = None) -> Response:
        order = self.get_object()
        body = self.get_serializer(data=request.data)
        body.is_valid(raise_exception=True)
        order = order_reject(order=order, reason=body.validated_data["reject_reason"])
        return Response(OrderSerializer(order).data)
