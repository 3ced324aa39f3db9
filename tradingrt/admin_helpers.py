"""Admin glue shared by the domain apps: forms and actions that change objects through services."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from tradingrt.amounts import round_amount
from tradingrt.errors import StateConflict
from tradingrt.formats import format_decimal


def decimal_column(attribute: str, description: str, *, ordering: str | None = None) -> Any:
    """A ModelAdmin attribute showing a decimal as the API does ("42000", not "42000.00000000").

    Assign it in the class body and name it in list_display, fields or fieldsets.
    """

    @admin.display(description=description, ordering=ordering)
    def column(model_admin: Any, obj: Any) -> str:
        value = getattr(obj, attribute)
        return "-" if value is None else format_decimal(round_amount(value)) or "-"

    return column


def error_text(error: ValidationError | StateConflict) -> str:
    """A service error as one line for an admin message."""
    if isinstance(error, ValidationError):
        return " ".join(error.messages)
    return str(error)


class ServiceModelForm(forms.ModelForm):
    """A ModelForm whose save is a service call, made once the form's own validation passes.

    Subclasses implement `save_through_service()`, returning the saved object. Calling it while
    the form validates puts the service's ValidationError (keyed by model field) or
    StateConflict on the form, instead of a 500 after the admin has declared success. The
    admin's changeform view runs in a transaction, so nothing is left half-done. ModelAdmin
    .save_model must not save again (see SavesThroughServices).
    """

    def save_through_service(self) -> Any:
        raise NotImplementedError

    def _post_clean(self) -> None:
        # ModelForm's (undocumented but long-stable) last validation step, after the model's.
        super()._post_clean()  # type: ignore[misc]
        if self.errors:
            return
        try:
            self.instance = self.save_through_service()
        except ValidationError as error:
            for field, field_messages in error.message_dict.items():
                self.add_error(field if field in self.fields else None, field_messages)
        except StateConflict as conflict:
            self.add_error(None, str(conflict))

    def save(self, commit: bool = True) -> Any:
        self.save_m2m = lambda: None  # type: ignore[method-assign]  # nothing left to save
        return self.instance


class ReadOnlyAdmin(admin.ModelAdmin):
    """A ModelAdmin that lists and shows, never adds, changes or deletes (history, derived rows)."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class SavesThroughServices(admin.ModelAdmin):
    """A ModelAdmin whose forms already saved through a service while validating."""

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        """Saved by the form's service call; saving again would bypass the service's rules."""


def run_service_action(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    objects: Iterable[Any],
    service: Callable[[Any], Any],
    *,
    done: str,
) -> None:
    """Apply `service` to each object; report successes and each refusal as admin messages.

    `done` is the past tense for the success message ("cancelled"). Each object is its own
    change, so one refusal does not undo the others.
    """
    succeeded = 0
    for obj in objects:
        try:
            service(obj)
        except (ValidationError, StateConflict) as error:
            model_admin.message_user(request, f"{obj}: {error_text(error)}", messages.ERROR)
        else:
            succeeded += 1
    if succeeded:
        noun = model_admin.model._meta.verbose_name
        plural = model_admin.model._meta.verbose_name_plural
        model_admin.message_user(
            request,
            f"{succeeded} {noun if succeeded == 1 else plural} {done}.",
            messages.SUCCESS,
        )
