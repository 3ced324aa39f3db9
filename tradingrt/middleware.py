"""Django's middleware, entered in one thread handoff per request under ASGI.

Django's built-in middleware say they are async-capable, but under ASGI each of their hooks
then runs in a thread of its own (`MiddlewareMixin.__acall__` wraps `process_request`,
`process_view` and `process_response` in `sync_to_async`): about a dozen handoffs to a thread
and back per request with this project's chain, 1-2 ms of every REST request and of every
market-data publish (docs/BENCHMARKS.md). Declared synchronous only, as Django's ticket
#37177 proposes for Django itself, the whole chain runs in one thread, entered once. Each
class below is Django's, unchanged but for that flag, and takes its place in MIDDLEWARE (the
admin's checks accept subclasses). WhiteNoise's middleware is synchronous only already.
"""

from __future__ import annotations

from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.middleware import clickjacking, common, csrf, security


def _synchronous_only(django_class: type) -> type:
    """`django_class` itself, declared synchronous only."""
    return type(
        django_class.__name__,
        (django_class,),
        {"async_capable": False, "__module__": __name__, "__doc__": django_class.__doc__},
    )


SecurityMiddleware = _synchronous_only(security.SecurityMiddleware)
SessionMiddleware = _synchronous_only(sessions.SessionMiddleware)
CommonMiddleware = _synchronous_only(common.CommonMiddleware)
CsrfViewMiddleware = _synchronous_only(csrf.CsrfViewMiddleware)
AuthenticationMiddleware = _synchronous_only(auth.AuthenticationMiddleware)
MessageMiddleware = _synchronous_only(messages.MessageMiddleware)
XFrameOptionsMiddleware = _synchronous_only(clickjacking.XFrameOptionsMiddleware)
