"""Django admin for connection records (who is connected, from where, to what; disconnects) and for
security: the events, the IP blocks with an unblock action, and revoking a user's sessions."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from realtime import limits, publish
from realtime.clientip import request_client_ip
from realtime.connections import alive_q
from realtime.models import (
    Connection,
    IPBlock,
    PendingPublication,
    SecurityEvent,
    ServerProcess,
    SessionRevocation,
    Subscription,
)
from realtime.sessions import user_sessions_revoke


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records written by the servers themselves: staff look, and act through actions."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class TopicFilter(admin.SimpleListFilter):
    title = "topic"
    parameter_name = "topic"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        topics = Subscription.objects.values_list("topic", flat=True).distinct().order_by("topic")
        return [(topic, topic) for topic in topics[:200]]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value():
            if queryset.model is Subscription:
                return queryset.filter(topic=self.value())
            return queryset.filter(subscriptions__topic=self.value())
        return queryset


class ConnectedUserFilter(admin.SimpleListFilter):
    title = "user"
    parameter_name = "user"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        users = (
            Connection.objects.filter(user__isnull=False)
            .values_list("user_id", "user__username")
            .distinct()
            .order_by("user__username")
        )
        return [(str(pk), name) for pk, name in users[:200]]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value():
            return queryset.filter(user_id=self.value())
        return queryset


class AliveFilter(admin.SimpleListFilter):
    title = "process alive"
    parameter_name = "alive"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Alive"), ("no", "Dead (awaiting prune)")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        alive = alive_q("" if queryset.model is ServerProcess else "server__")
        if self.value() == "yes":
            return queryset.filter(alive)
        if self.value() == "no":
            return queryset.exclude(alive)
        return queryset


class SubscriptionInline(admin.TabularInline):
    model = Subscription
    extra = 0
    fields = ("topic", "subscribed_at")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.action(description="Disconnect selected (close with 4000)", permissions=["disconnect"])
def disconnect_selected(modeladmin: Any, request: HttpRequest, queryset: QuerySet[Any]) -> None:
    if queryset.model is ServerProcess:
        ids = list(Connection.objects.filter(server__in=queryset).values_list("pk", flat=True))
    else:
        ids = list(queryset.values_list("pk", flat=True))
    if not ids:
        modeladmin.message_user(request, "No connections selected.", messages.WARNING)
        return
    try:
        publish.disconnect(connection_ids=ids)
    except Exception as exc:  # the channel layer is down: say so rather than fail the page
        modeladmin.message_user(request, f"Could not reach the servers: {exc}", messages.ERROR)
        return
    note = (
        "" if publish.layer_is_shared() else " (on this server process; set REDIS_URL to reach all)"
    )
    modeladmin.message_user(
        request, f"Asked {len(ids)} connection(s) to close with code 4000{note}.", messages.SUCCESS
    )


class DisconnectPermissionMixin:
    def has_disconnect_permission(self, request: HttpRequest) -> bool:
        return request.user.is_staff and request.user.has_perm("realtime.delete_connection")


@admin.action(
    description="Revoke sessions (close connections with 4410, refuse older tokens)",
    permissions=["revoke"],
)
def revoke_sessions(modeladmin: Any, request: HttpRequest, queryset: QuerySet[Any]) -> None:
    if queryset.model is Connection:
        users = get_user_model().objects.filter(
            pk__in=queryset.filter(user__isnull=False).values("user_id")
        )
    else:
        users = queryset
    names = []
    try:
        for user in users:
            user_sessions_revoke(
                user=user, by=f"admin {request.user.get_username()}", ip=request_client_ip(request)
            )
            names.append(user.get_username())
    except Exception as exc:
        modeladmin.message_user(request, f"Revoking failed: {exc}", messages.ERROR)
        return
    if not names:
        modeladmin.message_user(request, "No users selected.", messages.WARNING)
        return
    note = (
        ""
        if publish.layer_is_shared()
        else " (connections on this server process only; set REDIS_URL to reach all)"
    )
    modeladmin.message_user(
        request, f"Revoked the sessions of {', '.join(names)}{note}.", messages.SUCCESS
    )


class RevokePermissionMixin:
    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return request.user.is_staff and request.user.has_perm("realtime.add_sessionrevocation")


@admin.register(Connection)
class ConnectionAdmin(DisconnectPermissionMixin, RevokePermissionMixin, ReadOnlyAdmin):
    list_display = (
        "id", "user", "client_address", "server", "connected_at", "authenticated_at",
        "topic_list", "alive",
    )  # fmt: skip
    list_filter = (AliveFilter, ConnectedUserFilter, TopicFilter, "server")
    search_fields = ("id", "user__username", "client_address", "user_agent")
    date_hierarchy = "connected_at"
    list_select_related = ("user", "server")
    inlines = (SubscriptionInline,)
    actions = (disconnect_selected, revoke_sessions)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Connection]:
        return super().get_queryset(request).prefetch_related("subscriptions")

    @admin.display(description="topics")
    def topic_list(self, connection: Connection) -> str:
        return ", ".join(s.topic for s in connection.subscriptions.all()) or "-"

    @admin.display(description="alive", boolean=True)
    def alive(self, connection: Connection) -> bool:
        return connection.server.expires_at >= timezone.now()


@admin.register(Subscription)
class SubscriptionAdmin(ReadOnlyAdmin):
    list_display = ("topic", "connection", "user", "subscribed_at")
    list_filter = (TopicFilter,)
    search_fields = ("topic", "connection__id", "connection__user__username")
    list_select_related = ("connection__user",)

    @admin.display(description="user", ordering="connection__user__username")
    def user(self, subscription: Subscription) -> Any:
        return subscription.connection.user


@admin.register(PendingPublication)
class PendingPublicationAdmin(ReadOnlyAdmin):
    """Committed updates not published yet: normally empty; a row lingering here means the
    history store (Redis) cannot be reached, and the servers' sweeps keep trying."""

    list_display = ("id", "created_at", "message_type", "key", "version", "topics", "attempts")
    list_filter = ("message_type",)
    search_fields = ("key",)


@admin.register(ServerProcess)
class ServerProcessAdmin(DisconnectPermissionMixin, ReadOnlyAdmin):
    list_display = (
        "id",
        "hostname",
        "pid",
        "started_at",
        "heartbeat_at",
        "expires_at",
        "connection_count",
        "alive",
    )
    list_filter = (AliveFilter, "hostname")
    search_fields = ("id", "hostname")
    actions = (disconnect_selected,)

    def get_queryset(self, request: HttpRequest) -> QuerySet[ServerProcess]:
        return super().get_queryset(request).annotate(connection_total=Count("connections"))

    @admin.display(description="connections", ordering="connection_total")
    def connection_count(self, server: Any) -> int:
        return int(server.connection_total)

    @admin.display(description="alive", boolean=True)
    def alive(self, server: ServerProcess) -> bool:
        return server.expires_at >= timezone.now()


# --- security ---------------------------------------------------------------------------------


@admin.register(SecurityEvent)
class SecurityEventAdmin(ReadOnlyAdmin):
    """Security events, counted per kind, client IP, user and minute (realtime.security)."""

    list_display = ("minute", "kind", "ip", "username", "count", "last_at", "detail")
    list_filter = ("kind", "minute")
    search_fields = ("ip", "username", "detail")
    date_hierarchy = "minute"


class BlockActiveFilter(admin.SimpleListFilter):
    title = "in force"
    parameter_name = "active"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "In force"), ("no", "Expired or lifted")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        active = Q(lifted_at__isnull=True, expires_at__gt=timezone.now())
        if self.value() == "yes":
            return queryset.filter(active)
        if self.value() == "no":
            return queryset.exclude(active)
        return queryset


@admin.action(description="Unblock the selected IP addresses", permissions=["unblock"])
def unblock_selected(modeladmin: Any, request: HttpRequest, queryset: QuerySet[Any]) -> None:
    addresses = sorted(set(queryset.values_list("ip", flat=True)))
    try:
        for ip in addresses:
            limits.ip_unblock(ip=ip, by=request.user.get_username())
    except Exception as exc:  # the limits store is down: say so rather than fail the page
        modeladmin.message_user(request, f"Could not reach the limits store: {exc}", messages.ERROR)
        return
    modeladmin.message_user(request, f"Unblocked {', '.join(addresses)}.", messages.SUCCESS)


@admin.register(IPBlock)
class IPBlockAdmin(ReadOnlyAdmin):
    """Client IPs blocked after too many failed authentications; unblock them here."""

    list_display = (
        "ip", "blocked_at", "expires_at", "failures", "reason", "in_force", "lifted_at",
        "lifted_by",
    )  # fmt: skip
    list_filter = (BlockActiveFilter,)
    search_fields = ("ip",)
    actions = (unblock_selected,)

    def has_unblock_permission(self, request: HttpRequest) -> bool:
        return request.user.is_staff and request.user.has_perm("realtime.change_ipblock")

    @admin.display(description="in force", boolean=True)
    def in_force(self, block: IPBlock) -> bool:
        return block.active


@admin.register(SessionRevocation)
class SessionRevocationAdmin(ReadOnlyAdmin):
    """When each user's sessions were last revoked; revoke from the Users list."""

    list_display = ("user", "revoked_at", "revoked_by")
    search_fields = ("user__username", "revoked_by")
    list_select_related = ("user",)


User = get_user_model()


class UserAdmin(RevokePermissionMixin, DjangoUserAdmin):
    """Django's user admin, with the action that revokes a user's sessions."""

    actions = (revoke_sessions,)


if admin.site.is_registered(User) and isinstance(admin.site._registry[User], DjangoUserAdmin):
    admin.site.unregister(User)
    admin.site.register(User, UserAdmin)
