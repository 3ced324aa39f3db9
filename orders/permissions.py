"""Who may act as the execution gateway: record fills and reject orders."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission

RECORD_FILLS_PERMISSION = "orders.add_fill"


class CanRecordFills(BasePermission):
    """Staff, or holders of orders.add_fill (the execution gateway), for any user's order.

    The same users may reject orders: both are the gateway reporting what the venue did.
    """

    message = "Recording fills and rejecting orders needs staff status or orders.add_fill."

    def has_permission(self, request: Any, view: Any) -> bool:
        return bool(
            request.user
            and request.user.is_authenticated
            and (request.user.is_staff or request.user.has_perm(RECORD_FILLS_PERMISSION))
        )
