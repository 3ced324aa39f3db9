"""Django admin for connection records: who is connected, from where, to what; and disconnects."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from realtime import publish
from realtime.connections import alive_q
from realtime.models import Connection, PendingPublication, ServerProcess, Subscription


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


@admin.register(Connection)
class ConnectionAdmin(DisconnectPermissionMixin, ReadOnlyAdmin):
    list_display = (
        "id", "user", "client_address", "server", "connected_at", "authenticated_at",
        "topic_list", "alive",
    )  # fmt: skip
    list_filter = (AliveFilter, ConnectedUserFilter, TopicFilter, "server")
    search_fields = ("id", "user__username", "client_address", "user_agent")
    date_hierarchy = "connected_at"
    list_select_related = ("user", "server")
    inlines = (SubscriptionInline,)
    actions = (disconnect_selected,)

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
