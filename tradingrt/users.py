"""The user directory: usernames for user ids, read-only and for staff (rows carry only ids)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tradingrt.api import FORBIDDEN

MAX_IDS_PER_REQUEST = 200  # a page's worth of rows names at most this many users at once


class CanListUsers(BasePermission):
    """Staff, or holders of auth.view_user: who else trades here is not a trader's business."""

    def has_permission(self, request: Any, view: Any) -> bool:
        user = request.user
        return bool(
            user and user.is_authenticated and (user.is_staff or user.has_perm("auth.view_user"))
        )


def user_directory(*, ids: list[int] | None = None) -> list[dict[str, Any]]:
    """`{"id", "username"}` of the users with `ids` (every user when None), ordered by id."""
    users = get_user_model().objects.order_by("pk")
    if ids is not None:
        users = users.filter(pk__in=ids)
    rows = users.values_list("pk", "username")
    return [{"id": pk, "username": username} for pk, username in rows]


class UserSerializer(serializers.Serializer):
    """A user as the directory shows one: the id the API's rows carry, and the username."""

    id = serializers.IntegerField(read_only=True)
    username = serializers.CharField(read_only=True)


class UserFilterSerializer(serializers.Serializer):
    """Optional query parameters of GET /api/users/."""

    # One comma-separated parameter rather than a repeated one: its length bounds the URL.
    ids = serializers.CharField(
        required=False,
        max_length=MAX_IDS_PER_REQUEST * 20,  # 19 digits and a comma each
        help_text=f"Only these users: comma-separated ids (?ids=1,2), at most "
        f"{MAX_IDS_PER_REQUEST}. Unknown ids are left out of the answer.",
    )

    def validate_ids(self, value: str) -> list[int]:
        parts = value.split(",")
        if len(parts) > MAX_IDS_PER_REQUEST:
            raise serializers.ValidationError(f"Ask for at most {MAX_IDS_PER_REQUEST} ids at once.")
        if not all(part.isascii() and part.isdigit() and 0 < int(part) < 2**63 for part in parts):
            raise serializers.ValidationError(
                "Give user ids as positive integers separated by commas, like 1,2,3."
            )
        return [int(part) for part in parts]


class UserDirectoryView(APIView):
    """GET /api/users/: ids to usernames, so a staff view can name the owners of rows."""

    permission_classes = [CanListUsers]

    @extend_schema(
        parameters=[UserFilterSerializer],
        responses={200: UserSerializer(many=True), 403: FORBIDDEN},
        operation_id="users_list",
        description="Users' ids and usernames, ordered by id (staff, or permission "
        "auth.view_user). The dashboard names the users of orders, positions and strategies "
        "with it.",
    )
    def get(self, request: Request) -> Response:
        filters = UserFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        return Response(user_directory(ids=filters.validated_data.get("ids")))
