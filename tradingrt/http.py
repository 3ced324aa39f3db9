"""Django's ASGI handler, with each request's thread lent from a pool instead of started for it.

Under ASGI, Django runs every request's synchronous parts (the `request_started` receivers, the
middleware chain, `process_view`, rendering, `close`) in a thread of the request's own: its
`ThreadSensitiveContext` makes a one-thread executor per request, so each request starts a
thread, and on exit starts another to join it. A fresh thread also opens a fresh database
connection (SQLite keeps one per thread). That is most of what a small request costs here
(docs/BENCHMARKS.md, "Where a delivery's CPU goes").

`PooledASGIHandler` is Django's handler but for that: each request still has one thread to
itself for all of its synchronous work, as Django requires (asgiref's documented
`ThreadSensitiveContext(executor=...)`), but the thread is lent from `RequestThreads` and given
back once everything the request queued on it has run, so threads and their database
connections live across requests. Where asgiref's context takes no executor (before 3.13), the
handler is Django's own, unchanged.
"""

from __future__ import annotations

import collections
import inspect
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import django
from asgiref.sync import ThreadSensitiveContext
from django.core.handlers.asgi import ASGIHandler

logger = logging.getLogger(__name__)

# Idle request threads kept for the next requests; past this, a thread given back ends. A burst
# of concurrent requests beyond it starts threads as Django would, and leaves this many behind.
IDLE_REQUEST_THREADS = 16


class RequestThreads:
    """One-thread executors, each lent to one request at a time and reused after it.

    An executor comes back to the pool only once the work its request queued has run (a
    request cancelled by its client's disconnect may leave a synchronous call running, which
    Python cannot stop): the next request must never wait behind another's work.
    """

    def __init__(self, keep: int = IDLE_REQUEST_THREADS) -> None:
        self.keep = keep
        self._idle: collections.deque[ThreadPoolExecutor] = collections.deque()
        self._lock = threading.Lock()
        self.started = 0  # threads made (observability, tests)

    def lend(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            self.started += 1
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="http-request")

    def give_back(self, executor: ThreadPoolExecutor) -> None:
        """Return `executor` when what is queued on it has run (now, if nothing is)."""
        try:
            marker = executor.submit(_nothing)
        except RuntimeError:  # shut down meanwhile
            return
        marker.add_done_callback(lambda _: self._keep_or_end(executor))

    def _keep_or_end(self, executor: ThreadPoolExecutor) -> None:
        with self._lock:
            if len(self._idle) < self.keep:
                self._idle.append(executor)
                return
        executor.shutdown(wait=False)

    def idle(self) -> int:
        with self._lock:
            return len(self._idle)


def _nothing() -> None:
    return None


def _context_takes_an_executor() -> bool:
    try:
        return "executor" in inspect.signature(ThreadSensitiveContext).parameters
    except (TypeError, ValueError):
        return False


class PooledASGIHandler(ASGIHandler):
    """Django's ASGIHandler; each request's thread is lent from `threads`, not started for it."""

    def __init__(self, threads: RequestThreads | None = None) -> None:
        super().__init__()
        self.threads = threads or RequestThreads()
        self.pooled = _context_takes_an_executor()
        if not self.pooled:
            logger.debug("asgiref's ThreadSensitiveContext takes no executor: a thread a request")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not self.pooled or scope["type"] != "http":
            await super().__call__(scope, receive, send)  # Django's own, and its refusals
            return
        executor = self.threads.lend()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            self.threads.give_back(executor)


def get_asgi_application() -> PooledASGIHandler:
    """`django.core.asgi.get_asgi_application`, with the pooled handler."""
    django.setup(set_prefix=False)
    return PooledASGIHandler()
