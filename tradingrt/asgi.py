"""ASGI entry point: one application serving HTTP (Django) and WebSockets (realtime).

Runs unchanged under Daphne (the default) and uvicorn (see docs/DEPLOYMENT.md).
"""

import gc
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tradingrt.settings")

from tradingrt.http import get_asgi_application

# Django's handler, each request's thread lent from a pool (tradingrt/http.py); this sets Django
# up before the realtime imports.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402

from realtime.checks import fail_on_bad_settings  # noqa: E402

# Daphne and uvicorn run no system checks: a bad REALTIME_* value must stop the server here, with
# its reason, not kill a background loop an hour later.
fail_on_bad_settings()

from realtime.lifespan import lifespan_application  # noqa: E402
from realtime.market_data_http import MarketDataEndpoint  # noqa: E402
from realtime.routing import websocket_application  # noqa: E402

# The application is built: what exists now lives as long as the process. Keep the cyclic
# garbage collector from walking it on every full collection (with 10,000 connections a full
# pass took 700-800 ms, stalling every socket), and collect the young generation less often;
# docs/BENCHMARKS.md has the measurements. The young generations are also collected on a beat
# (realtime.collector: generation 1 about once a second), so a full collection waits for 10,000
# of those rather than 100: it stays as rare as it was (cycles die young, on the beat).
gc.collect()
gc.freeze()
gc.set_threshold(10_000, 10, 10_000)

application = ProtocolTypeRouter(
    {
        # A feed's market-data POST on the event loop; every other request Django's.
        "http": MarketDataEndpoint(django_asgi_app),
        "websocket": websocket_application(),
        "lifespan": lifespan_application,
    }
)
