"""A live copy of each topic's objects, built from the client's events."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .messages import Event, Reset, Revoked, Snapshot, Update, object_key


class Book:
    """Per topic, its objects by id (orders, positions, strategies) or by symbol (ticks).

    Feed it every event: a snapshot replaces the topic's state once its last page arrives;
    an update replaces its object only when its `version` is newer than the one held (the
    snapshot and the stream may overlap, docs/PROTOCOL.md section 7.5); a `deleted` update
    removes the object. A reset without a snapshot, or a revoked topic, empties the topic.

    ::

        book = Book()
        async for event in client.updates():
            if book.apply(event):
                positions = book.objects("user:2:positions")
    """

    def __init__(self) -> None:
        self._objects: dict[str, dict[Any, dict[str, Any]]] = {}
        self._pages: dict[str, dict[Any, dict[str, Any]]] = {}  # a snapshot being received

    def apply(self, event: Event) -> bool:
        """Take one event; True when the book changed."""
        if isinstance(event, Snapshot):
            return self._snapshot(event)
        if isinstance(event, Update):
            objects = self._pages.get(event.topic)
            if objects is None:
                objects = self._objects.setdefault(event.topic, {})
            return self._update(objects, event)
        if (isinstance(event, Reset) and not event.snapshot) or isinstance(event, Revoked):
            self._pages.pop(event.topic, None)
            return self._objects.pop(event.topic, None) is not None
        return False

    def objects(self, topic: str) -> Mapping[Any, dict[str, Any]]:
        """The topic's objects now, keyed by `id` (or `symbol`); a read-only live view."""
        return MappingProxyType(self._objects.setdefault(topic, {}))

    def get(self, topic: str, key: Any) -> dict[str, Any] | None:
        return self._objects.get(topic, {}).get(key)

    def ready(self, topic: str) -> bool:
        """Whether the topic's state is complete: a whole snapshot has arrived."""
        return topic in self._objects and topic not in self._pages

    @property
    def topics(self) -> list[str]:
        return sorted(self._objects)

    def _snapshot(self, snapshot: Snapshot) -> bool:
        pages = self._pages.setdefault(snapshot.topic, {})
        for item in snapshot.items:
            pages[object_key(item)] = item
        if snapshot.last:
            self._objects[snapshot.topic] = self._pages.pop(snapshot.topic)
            return True
        return False

    @staticmethod
    def _update(objects: dict[Any, dict[str, Any]], update: Update) -> bool:
        key = update.key
        held = objects.get(key)
        version = update.version
        if held is not None and version is not None:
            held_version = held.get("version")
            if isinstance(held_version, int) and version <= held_version:
                return False  # already newer: a change both in a snapshot and after it
        if update.event == "deleted":
            return objects.pop(key, None) is not None
        objects[key] = update.payload
        return True
