"""Admin of orders and fills: browse, place, cancel, reject and record fills via the services."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from orders.models import Fill, Order
from orders.permissions import RECORD_FILLS_PERMISSION
from orders.services import order_cancel, order_create, order_fill, order_reject
from tradingrt.admin_helpers import (
    ReadOnlyAdmin,
    SavesThroughServices,
    ServiceModelForm,
    decimal_column,
    error_text,
    run_service_action,
)
from tradingrt.errors import StateConflict
from tradingrt.models import DECIMAL_PLACES, MAX_DIGITS

ADMIN_REJECT_REASON = "Rejected by an operator in the admin."
NEW_ORDER_FIELDS = (
    "user",
    "strategy",
    "symbol",
    "side",
    "order_type",
    "quantity",
    "price",
    "stop_price",
)


class OrderAddForm(ServiceModelForm):
    """Places the order with orders.services.order_create."""

    class Meta:
        model = Order
        fields = NEW_ORDER_FIELDS

    def save_through_service(self) -> Order:
        return order_create(**{name: self.cleaned_data[name] for name in NEW_ORDER_FIELDS})


class RecordFillForm(forms.Form):
    quantity = forms.DecimalField(max_digits=MAX_DIGITS, decimal_places=DECIMAL_PLACES)
    price = forms.DecimalField(max_digits=MAX_DIGITS, decimal_places=DECIMAL_PLACES)


class FillInline(admin.TabularInline):
    model = Fill
    fields = ("quantity_shown", "price_shown", "executed_at")
    readonly_fields = fields
    quantity_shown = decimal_column("quantity", "quantity")
    price_shown = decimal_column("price", "price")
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Order)
class OrderAdmin(SavesThroughServices):
    """Orders are placed with a form and changed only by actions; their fields stay read-only."""

    list_display = (
        "id",
        "symbol",
        "side",
        "order_type",
        "quantity_shown",
        "price_shown",
        "stop_price_shown",
        "status",
        "filled_quantity_shown",
        "average_fill_price_shown",
        "user",
        "strategy",
        "created_at",
    )
    list_display_links = ("id", "symbol")
    list_filter = ("status", "side", "order_type", "created_at")
    search_fields = ("=id", "symbol", "user__username", "strategy__name")
    date_hierarchy = "created_at"
    list_select_related = ("user", "strategy")
    actions = ("cancel_orders", "reject_orders")
    fieldsets = (
        (None, {"fields": ("user", "strategy", "symbol", "side", "order_type")}),
        (
            "Quantities and prices",
            {"fields": ("quantity_shown", "price_shown", "stop_price_shown")},
        ),
        (
            "Execution",
            {
                "fields": (
                    "status",
                    "filled_quantity_shown",
                    "remaining_quantity_shown",
                    "average_fill_price_shown",
                    "reject_reason",
                    "record_fill_link",
                )
            },
        ),
        ("Times", {"fields": ("created_at", "updated_at")}),
    )

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is None:
            kwargs["form"] = OrderAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return ((None, {"fields": NEW_ORDER_FIELDS}),)
        return self.fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return ()
        return [name for _, options in self.fieldsets for name in options["fields"]]

    def get_inlines(self, request: HttpRequest, obj: Any) -> Any:
        return [FillInline] if obj is not None else []

    # An order's fields never change by editing: only through cancel, reject and fills.
    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("orders.change_order")

    def has_record_fill_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(RECORD_FILLS_PERMISSION)

    quantity_shown = decimal_column("quantity", "quantity", ordering="quantity")
    price_shown = decimal_column("price", "price", ordering="price")
    stop_price_shown = decimal_column("stop_price", "stop price", ordering="stop_price")
    filled_quantity_shown = decimal_column(
        "filled_quantity", "filled quantity", ordering="filled_quantity"
    )
    remaining_quantity_shown = decimal_column("remaining_quantity", "remaining quantity")
    average_fill_price_shown = decimal_column(
        "average_fill_price", "average fill price", ordering="average_fill_price"
    )

    @admin.display(description="fills")
    def record_fill_link(self, order: Order) -> str:
        if not order.is_open:
            return "No more fills: the order is closed."
        url = reverse("admin:orders_order_record_fill", args=[order.pk])
        return format_html('<a class="button" href="{}">Record a fill</a>', url)

    @admin.action(description="Cancel selected orders", permissions=["cancel"])
    def cancel_orders(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        run_service_action(
            self, request, queryset, lambda order: order_cancel(order=order), done="cancelled"
        )

    @admin.action(description="Reject selected orders", permissions=["record_fill"])
    def reject_orders(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        run_service_action(
            self,
            request,
            queryset,
            lambda order: order_reject(order=order, reason=ADMIN_REJECT_REASON),
            done="rejected",
        )

    def get_urls(self) -> list[URLPattern]:
        record_fill = path(
            "<path:object_id>/record-fill/",
            self.admin_site.admin_view(self.record_fill_view),
            name="orders_order_record_fill",
        )
        return [record_fill, *super().get_urls()]

    def record_fill_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """A small form recording one fill with orders.services.order_fill."""
        if not self.has_record_fill_permission(request):
            raise PermissionDenied
        order = self.get_object(request, unquote(object_id))
        if order is None:
            self.message_user(request, f"There is no order {object_id}.", messages.WARNING)
            return redirect("admin:orders_order_changelist")
        form = RecordFillForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                fill = order_fill(order=order, **form.cleaned_data)
            except ValidationError as error:
                for field, field_messages in error.message_dict.items():
                    form.add_error(field if field in form.fields else None, field_messages)
            except StateConflict as conflict:
                form.add_error(None, error_text(conflict))
            else:
                self.message_user(request, f"Recorded a fill of {fill}.", messages.SUCCESS)
                return redirect("admin:orders_order_change", order.pk)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Record a fill of order #{order.pk}",
            "opts": self.opts,
            "order": order,
            "form": form,
        }
        return TemplateResponse(request, "admin/orders/order/record_fill.html", context)


@admin.register(Fill)
class FillAdmin(ReadOnlyAdmin):
    """Fills are history: listed and searched, recorded only from an order's page."""

    list_display = ("id", "order", "quantity_shown", "price_shown", "executed_at")
    list_select_related = ("order",)
    search_fields = ("=order__id", "order__symbol", "order__user__username")
    list_filter = ("executed_at",)
    date_hierarchy = "executed_at"
    fields = ("order", "quantity_shown", "price_shown", "executed_at")
    readonly_fields = fields
    quantity_shown = decimal_column("quantity", "quantity", ordering="quantity")
    price_shown = decimal_column("price", "price", ordering="price")
