"""Strategy writes: creation, bounded edits and the lifecycle (orders.services keeps metrics)."""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from strategies.models import Strategy, StrategyStatus
from tradingrt.errors import StateConflict

NAME_MAX_LENGTH = Strategy._meta.get_field("name").max_length or 100
# Every STRATEGY_UPDATE carries the name, description and parameters, and Daphne silently
# drops an outbound WebSocket message over 1 MiB: so the free-form fields are bounded here,
# where the API and the admin both pass, keeping the largest update near 140 KiB (under a
# seventh of the limit, whatever the encoding).
DESCRIPTION_MAX_LENGTH = 2000  # characters; at most 6 bytes each on the wire (JSON escapes)
# The parameters as compact UTF-8 JSON, as the wire sends them: room for real configuration
# (and for updates past 64 KiB, which the transport tests exercise), an eighth of the limit.
PARAMETERS_MAX_BYTES = 128 * 1024
# Nesting levels of the parameters: MessagePack encoders refuse deep nesting (msgpack-python at
# 512) and JSON ones recurse, so a deeper object would fail to encode when it is published.
PARAMETERS_MAX_DEPTH = 32
EDITABLE_FIELDS = frozenset({"name", "description", "parameters"})

_S = StrategyStatus
# action -> (statuses it may start from, status it leads to, past participle for messages)
LIFECYCLE: dict[str, tuple[tuple[str, ...], str, str]] = {
    "start": ((_S.DRAFT, _S.PAUSED), _S.RUNNING, "started"),
    "pause": ((_S.RUNNING,), _S.PAUSED, "paused"),
    "stop": ((_S.DRAFT, _S.RUNNING, _S.PAUSED, _S.ERROR), _S.STOPPED, "stopped"),
}


def strategy_create(
    *,
    owner: Any,
    name: str,
    description: str = "",
    parameters: dict[str, Any] | None = None,
) -> Strategy:
    """A new DRAFT strategy of `owner`."""
    fields = _clean_fields(
        {"name": name, "description": description, "parameters": parameters or {}}
    )
    strategy = Strategy(owner=owner, **fields)
    strategy.save()
    return strategy


def strategy_update(*, strategy: Strategy, **fields: Any) -> Strategy:
    """Change the strategy's name, description and/or parameters (a JSON object)."""
    unknown = set(fields) - EDITABLE_FIELDS
    if unknown:
        raise TypeError(f"strategy_update() cannot change {', '.join(sorted(unknown))}")
    cleaned = _clean_fields(fields)
    with transaction.atomic():
        # The caller's copy may be stale (an edit form loaded before a fill): writing all of it
        # back would undo the metrics and status saved meanwhile and reuse their version.
        _lock(strategy)
        changed = [name for name, value in cleaned.items() if getattr(strategy, name) != value]
        if not changed:
            return strategy  # nothing to change: no save, so no "updated" event either
        for name in changed:
            setattr(strategy, name, cleaned[name])
        strategy.save(update_fields=[*changed, "updated_at"])
    return strategy


def _clean_fields(fields: dict[str, Any]) -> dict[str, Any]:
    cleaned: dict[str, Any] = {}
    errors: dict[str, str] = {}
    if "name" in fields:
        name = fields["name"].strip() if isinstance(fields["name"], str) else ""
        if not name:
            errors["name"] = "Give the strategy a name."
        elif len(name) > NAME_MAX_LENGTH:
            errors["name"] = f"Use at most {NAME_MAX_LENGTH} characters."
        cleaned["name"] = name
    if "description" in fields:
        description = fields["description"]
        if description is not None and not isinstance(description, str):
            errors["description"] = "The description must be text."
        elif description and len(description) > DESCRIPTION_MAX_LENGTH:
            errors["description"] = (
                f"Use at most {DESCRIPTION_MAX_LENGTH} characters; this has {len(description)}."
            )
        else:
            cleaned["description"] = description or ""
    if "parameters" in fields:
        problem = _parameters_problem(fields["parameters"])
        if problem:
            errors["parameters"] = problem
        else:
            cleaned["parameters"] = fields["parameters"]
    if errors:
        raise ValidationError(errors)
    return cleaned


def _parameters_problem(parameters: Any) -> str | None:
    """Why `parameters` cannot be stored and published, or None when they can."""
    if not isinstance(parameters, dict):
        return 'Parameters must be a JSON object, like {"window": 20}.'
    depth = json_depth(parameters)
    if depth > PARAMETERS_MAX_DEPTH:
        return f"Nest parameters at most {PARAMETERS_MAX_DEPTH} levels deep; these nest {depth}."
    try:
        encoded = json.dumps(
            parameters, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()
    except (TypeError, ValueError):
        return "Parameters must be plain JSON: objects, arrays, text, finite numbers, booleans."
    if _contains_nul(parameters):
        # PostgreSQL's jsonb cannot store \u0000 (found by the REST fuzzer: it was a 500).
        return "Parameters cannot contain the NUL character (\\u0000), in keys or in text."
    if len(encoded) > PARAMETERS_MAX_BYTES:
        return (
            f"Parameters take at most {PARAMETERS_MAX_BYTES} bytes as compact JSON; these take "
            f"{len(encoded)}. Keep large data elsewhere and refer to it."
        )
    return None


def _contains_nul(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def json_depth(value: Any) -> int:
    """How deeply a JSON value nests objects and arrays (a scalar is 0), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if isinstance(item, dict | list | tuple):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in children)
    return deepest


def strategy_start(*, strategy: Strategy) -> Strategy:
    """DRAFT or PAUSED -> RUNNING."""
    return _transition(strategy, "start")


def strategy_pause(*, strategy: Strategy) -> Strategy:
    """RUNNING -> PAUSED."""
    return _transition(strategy, "pause")


def strategy_stop(*, strategy: Strategy) -> Strategy:
    """DRAFT, RUNNING, PAUSED or ERROR -> STOPPED (final)."""
    return _transition(strategy, "stop")


def _transition(strategy: Strategy, action: str) -> Strategy:
    allowed_from, target, done = LIFECYCLE[action]
    with transaction.atomic():
        _lock(strategy)
        if strategy.status not in allowed_from:
            raise StateConflict(
                f"Cannot {action} strategy {strategy.pk}: it is {strategy.status}, and only "
                f"{' or '.join(allowed_from)} strategies can be {done}."
            )
        strategy.status = target
        strategy.save(update_fields=["status", "updated_at"])
    return strategy


def _lock(strategy: Strategy) -> None:
    """Reload the strategy under a row lock, so concurrent changes queue up behind each other."""
    strategy.refresh_from_db(from_queryset=Strategy.objects.select_for_update())
    strategy.remember_loaded_values()
