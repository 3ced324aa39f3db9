"""Field definitions shared by the domain models (money and quantities as exact decimals)."""

from __future__ import annotations

from typing import Any

from django.db import models

MAX_DIGITS = 28
DECIMAL_PLACES = 8


def decimal_field(**kwargs: Any) -> models.DecimalField:
    """A DecimalField wide enough for any price, quantity or amount this platform handles."""
    return models.DecimalField(max_digits=MAX_DIGITS, decimal_places=DECIMAL_PLACES, **kwargs)


class TracksLoadedValues(models.Model):
    """Remembers the values of `tracked_fields` as last loaded or saved, and counts saves.

    Lets a post_save receiver tell what a save changed (an order's previous status, a position
    going flat) without a second query and without the domain app knowing who asks. `version`
    goes up by one with every save; writers of a row hold its lock, so versions follow commit
    order and a reader can put the changes of one object back in order.
    """

    tracked_fields: tuple[str, ...] = ()

    version = models.PositiveBigIntegerField(default=0, editable=False)

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.version = (self.version or 0) + 1
        if kwargs.get("update_fields") is not None:
            kwargs["update_fields"] = {*kwargs["update_fields"], "version"}
        super().save(*args, **kwargs)  # post_save receivers still see the previous values
        self.remember_loaded_values()

    @classmethod
    def from_db(cls, db: Any, field_names: Any, values: Any) -> Any:
        instance = super().from_db(db, field_names, values)
        instance.remember_loaded_values()
        return instance

    def remember_loaded_values(self) -> None:
        self.loaded_values = {name: self.__dict__.get(name) for name in self.tracked_fields}

    def previous_value(self, name: str) -> Any:
        """The field's value before this unsaved change (None for a new object)."""
        return getattr(self, "loaded_values", {}).get(name)
