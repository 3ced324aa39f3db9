"""Prometheus metrics of the real-time module, served by `GET /metrics` (CONTRACT section 13).

Labels hold only values from small fixed sets (message types, close codes, event kinds, resume
results, realtime.stats names): never a user, an IP or a topic.

Several server processes on one host: with `PROMETHEUS_MULTIPROC_DIR` set (the same directory
for all of them, emptied before they start: docs/DEPLOYMENT.md), prometheus-client's
multiprocess mode writes each process's values to files there, and `/metrics` on any process
reports the sum for the host (the connections gauge counts live processes only). Unset, each
process reports itself.

The hot paths stay cheap: a message handed to a connection and the counters of realtime.stats
are counted in plain per-process counters, added to the Prometheus counters on every scrape and,
in multiprocess mode, every second by a background thread (so another process's scrape sees
them). Publish-to-delivery latency is observed once per message and process, in `Hub.deliver`.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import logging
import os
import re
import threading
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.conf import settings
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from realtime import stats
from realtime.protocol import CloseCode, MessageType

logger = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Single-process mode: what /metrics reports. (Multiprocess mode reads the files instead.)
REGISTRY = CollectorRegistry(auto_describe=True)

CONNECTIONS = Gauge(
    "tradingrt_ws_connections",
    "Open WebSocket connections (of this host's live server processes in multiprocess mode).",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
MESSAGES_SENT = Counter(
    "tradingrt_ws_messages_sent",
    "Messages handed to WebSocket connections, by message type.",
    ["type"],
    registry=REGISTRY,
)
CLOSES = Counter(
    "tradingrt_ws_closes",
    "WebSocket connections closed, by close code (server's or client's; 'other' for the rest).",
    ["code"],
    registry=REGISTRY,
)
SECURITY_EVENTS = Counter(
    "tradingrt_ws_security_events",
    "Security events (docs/SECURITY.md), by kind.",
    ["kind"],
    registry=REGISTRY,
)
RESUMES = Counter(
    "tradingrt_ws_resumes",
    "Subscriptions with `since`: recovered, or reset with its reason (expired, epoch, "
    "unavailable).",
    ["result"],
    registry=REGISTRY,
)
PUBLISH_TO_DELIVERY = Histogram(
    "tradingrt_publish_to_delivery_seconds",
    "Seconds from an update's publish (its envelope timestamp) to its delivery by a server "
    "process to its local subscribers.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
REALTIME_STATS = Counter(
    "tradingrt_realtime_stats",
    "The real-time module's own counts of what it could not do or had to repair "
    "(realtime.stats: publish_failed, layer_lost, gap_repairs, slow_consumer_closes, ...).",
    ["name"],
    registry=REGISTRY,
)

# Close codes reported as themselves; any other (a client may send 3000-4999) is "other".
KNOWN_CLOSE_CODES = frozenset(
    {1000, 1001, 1005, 1006, 1009, 1011, *(int(code) for code in CloseCode), 4409, 4410}
)
_MESSAGE_TYPES = frozenset(MessageType)
_STAT_NAME = re.compile(r"^[a-z0-9_]{1,64}$")

# --- hot-path counts ---------------------------------------------------------------------------

_sent: collections.Counter[str] = collections.Counter()
_last_sent: tuple[str | None, str] = (None, "")


def message_sent(text: str, count: int = 1) -> None:
    """Count a message handed to `count` connections (the type is read once per distinct text:
    a broadcast hands the same object to every subscriber, and counts once per slice of them)."""
    global _last_sent
    last_text, kind = _last_sent
    if text is not last_text:
        end = text.find('"', 9)
        kind = text[9:end] if text.startswith('{"type":"') and end > 9 else "other"
        if kind not in _MESSAGE_TYPES:
            kind = "other"
        _last_sent = (text, kind)
    _sent[kind] += count


def observe_delivery(text: str) -> None:
    """Observe the seconds since `text` (an update's envelope) was published."""
    start = text.find(',"timestamp":"')
    if start < 0:
        return
    start += 14
    try:
        published = datetime.fromisoformat(text[start : start + 24]).timestamp()
    except ValueError:
        return
    PUBLISH_TO_DELIVERY.observe(max(0.0, time.time() - published))


def connection_opened() -> None:
    CONNECTIONS.inc()
    if _syncer is None:
        start_background_sync()


def connection_closed(code: int | None) -> None:
    CONNECTIONS.dec()
    label = str(code) if code in KNOWN_CLOSE_CODES else ("none" if code is None else "other")
    CLOSES.labels(label).inc()


def security_event(kind: str, count: int = 1) -> None:
    SECURITY_EVENTS.labels(kind).inc(count)


def resumes(results: Iterable[Any]) -> None:
    """Count the outcomes of subscriptions that asked to resume (`realtime.hub.Subscribed`)."""
    for result in results:
        if getattr(result, "recovered", False):
            RESUMES.labels("recovered").inc()
        elif getattr(result, "reset", None):
            RESUMES.labels(str(result.reset)).inc()


# --- moving the plain counts into Prometheus ------------------------------------------------

_sync_lock = threading.Lock()
_synced_sent: dict[str, int] = {}
_synced_stats: dict[str, int] = {}


def sync() -> None:
    """Add what the plain counters counted since the last sync to the Prometheus counters."""
    with _sync_lock:
        for source, synced, metric, label in (
            (_sent, _synced_sent, MESSAGES_SENT, None),
            (stats.counters, _synced_stats, REALTIME_STATS, _STAT_NAME),
        ):
            for name, value in dict(source).items():
                delta = value - synced.get(name, 0)
                if delta <= 0 or (label is not None and not label.match(name)):
                    continue
                metric.labels(name).inc(delta)
                synced[name] = value


def multiprocess_directory() -> str:
    return str(getattr(settings, "PROMETHEUS_MULTIPROC_DIR", "") or "")


class _Syncer(threading.Thread):
    """Multiprocess mode: syncs this process's plain counts every second, so a scrape served by
    another process of the host sees them."""

    interval_secs = 1.0

    def __init__(self) -> None:
        super().__init__(name="tradingrt-metrics", daemon=True)

    def run(self) -> None:
        while True:
            time.sleep(self.interval_secs)
            try:
                sync()
            except Exception:
                logger.exception("Syncing the metrics failed")


_syncer: _Syncer | None = None
_syncer_lock = threading.Lock()


def start_background_sync() -> None:
    """Start the syncing thread once per process (multiprocess mode only)."""
    global _syncer
    if _syncer is not None or not multiprocess_directory():
        return
    with _syncer_lock:
        if _syncer is None:
            _syncer = _Syncer()
            _syncer.start()


def _forget_dead_processes(directory: str) -> None:
    """Drop the live-gauge files of processes that are gone (a killed server's connections)."""
    from prometheus_client import multiprocess

    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        match = re.search(r"_(\d+)\.db$", path)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, directory)
        except PermissionError:  # alive, another user's
            continue


def render() -> bytes:
    """The metrics in Prometheus text format (this host's, in multiprocess mode)."""
    sync()
    directory = multiprocess_directory()
    if not directory:
        return generate_latest(REGISTRY)
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):
        _forget_dead_processes(directory)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return generate_latest(registry)
