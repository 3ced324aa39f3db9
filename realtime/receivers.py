"""Signal receivers: thin glue from the domain models' post_save to the update services."""

from __future__ import annotations


def connect() -> None:
    """Connect every receiver, once (dispatch_uid), from RealtimeConfig.ready()."""
