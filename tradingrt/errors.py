"""Domain errors the services raise; the API turns them into HTTP statuses (tradingrt.api)."""

from __future__ import annotations


class StateConflict(Exception):
    """The object cannot make this state change now (HTTP 409): cancel a filled order, say."""
