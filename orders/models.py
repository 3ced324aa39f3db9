"""Order and Fill models: what a trader asked for and each execution against it."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models

from tradingrt.formats import format_decimal
from tradingrt.models import TracksLoadedValues, decimal_field


class OrderSide(models.TextChoices):
    BUY = "BUY"
    SELL = "SELL"


class OrderType(models.TextChoices):
    MARKET = "MARKET"
    LIMIT = "LIMIT"
    STOP = "STOP"
    STOP_LIMIT = "STOP_LIMIT"


class OrderStatus(models.TextChoices):
    NEW = "NEW"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELED = "CANCELED"
    REJECTED = "REJECTED"


OPEN_STATUSES = (OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED)


class Order(TracksLoadedValues):
    tracked_fields = ("status", "filled_quantity")

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="orders"
    )
    # RESTRICT: a strategy with orders cannot be deleted on its own (its orders' attribution is
    # history, and clearing it would change every order without a save or a new version);
    # deleting the owner deletes both, the orders first.
    strategy = models.ForeignKey(
        "strategies.Strategy",
        on_delete=models.RESTRICT,
        null=True,
        blank=True,
        related_name="orders",
    )
    symbol = models.CharField(max_length=32)
    side = models.CharField(max_length=4, choices=OrderSide.choices)
    order_type = models.CharField(max_length=10, choices=OrderType.choices)
    quantity = decimal_field()
    price = decimal_field(null=True, blank=True)
    stop_price = decimal_field(null=True, blank=True)
    status = models.CharField(max_length=16, choices=OrderStatus.choices, default=OrderStatus.NEW)
    filled_quantity = decimal_field(default=Decimal("0"))
    average_fill_price = decimal_field(null=True, blank=True)
    reject_reason = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["user", "-created_at"]),
            models.Index(fields=["strategy", "status"]),
            models.Index(fields=["symbol", "status"]),
        ]

    def __str__(self) -> str:
        return (
            f"#{self.pk} {self.side} {format_decimal(self.quantity)} {self.symbol} "
            f"{self.order_type} ({self.status})"
        )

    @property
    def remaining_quantity(self) -> Decimal:
        return self.quantity - self.filled_quantity

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


class Fill(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="fills")
    quantity = decimal_field()
    price = decimal_field()
    executed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["executed_at", "id"]

    def __str__(self) -> str:
        return (
            f"{format_decimal(self.quantity)} @ {format_decimal(self.price)} "
            f"for order #{self.order_id}"
        )
