"""Permissions of the real-time module's HTTP endpoints, each a yes/no question."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from rest_framework.permissions import BasePermission


class StaffOrPermission(BasePermission):
    """Staff, or holders of the model permission `permission` (an "app_label.codename")."""

    permission = ""

    def has_permission(self, request: Any, view: Any) -> bool:
        user = request.user
        return bool(
            user and user.is_authenticated and (user.is_staff or user.has_perm(self.permission))
        )

    async def ahas_permission(self, request: Any, view: Any) -> bool:
        """The same, on the event loop: only a non-staff user's permissions need the database."""
        user = request.user
        if not (user and user.is_authenticated):
            return False
        return bool(user.is_staff or await sync_to_async(user.has_perm)(self.permission))


class CanViewConnections(StaffOrPermission):
    """Staff, or holders of realtime.view_connection (monitoring systems)."""

    permission = "realtime.view_connection"


class CanPublishMarketData(StaffOrPermission):
    """Staff, or holders of realtime.publish_market_data (the market-data feed)."""

    permission = "realtime.publish_market_data"
