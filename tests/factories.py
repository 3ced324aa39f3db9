"""factory_boy factories for the domain models."""

from __future__ import annotations

import functools
from decimal import Decimal

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password

PASSWORD = "correct-horse-battery"


@functools.cache
def hashed_password(raw: str) -> str:
    """One real hash per password per session: hashing is slow on purpose, tests need not be."""
    return make_password(raw)


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"trader{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")

    @factory.post_generation
    def password(obj, create, extracted, **kwargs):
        obj.password = hashed_password(extracted or PASSWORD)

    @factory.post_generation
    def saved(obj, create, extracted, **kwargs):
        if create:
            obj.save()


class StrategyFactory(factory.django.DjangoModelFactory):
    """A DRAFT strategy; pass status= for another (factories skip the lifecycle rules)."""

    class Meta:
        model = "strategies.Strategy"

    owner = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"Strategy {n}")
    parameters = factory.LazyFunction(lambda: {"window": 20})


class OrderFactory(factory.django.DjangoModelFactory):
    """A NEW LIMIT buy of 10 BTC-USD at 100, owned by its strategy's owner when it has one.

    Fills belong in orders.services.order_fill, so positions and metrics stay consistent.
    """

    class Meta:
        model = "orders.Order"

    strategy = None
    user = factory.LazyAttribute(
        lambda order: order.strategy.owner if order.strategy else UserFactory()
    )
    symbol = "BTC-USD"
    side = "BUY"
    order_type = "LIMIT"
    quantity = Decimal("10")
    price = Decimal("100")


class PositionFactory(factory.django.DjangoModelFactory):
    """A flat BTC-USD position; set quantity, average_price and market_price as needed."""

    class Meta:
        model = "positions.Position"
        django_get_or_create = ("user", "symbol")

    user = factory.SubFactory(UserFactory)
    symbol = "BTC-USD"
