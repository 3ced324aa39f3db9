"""Django settings: the only module that reads the environment (see docs/DEPLOYMENT.md)."""

from __future__ import annotations

import json
import os
import secrets
from datetime import timedelta
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("TRADINGRT_VAR_DIR", default=str(BASE_DIR / "var")))

env = environ.Env(
    DJANGO_DEBUG=(bool, False),
    DJANGO_ALLOWED_HOSTS=(list, ["localhost", "127.0.0.1", "[::1]"]),
    DJANGO_CSRF_TRUSTED_ORIGINS=(list, []),
    REDIS_URL=(str, ""),
    REDIS_PREFIX=(str, "tradingrt"),
    DATABASE_POOL_MAX_SIZE=(int, 20),
    JWT_ACCESS_TOKEN_MINUTES=(int, 15),
    JWT_REFRESH_TOKEN_DAYS=(int, 1),
    DJANGO_LOG_LEVEL=(str, "INFO"),
    DJANGO_LOG_FORMAT=(str, "plain"),
    METRICS_TOKEN=(str, ""),
    PROMETHEUS_MULTIPROC_DIR=(str, ""),
)


def _secret_key() -> str:
    """The configured key, or one generated once and kept in var/ so restarts keep sessions."""
    configured = env.str("DJANGO_SECRET_KEY", default="")
    if configured:
        return configured
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env("DJANGO_DEBUG")
ALLOWED_HOSTS = env("DJANGO_ALLOWED_HOSTS")
CSRF_TRUSTED_ORIGINS = env("DJANGO_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_simplejwt",
    "rest_framework_simplejwt.token_blacklist",  # revoking a user's sessions (realtime.sessions)
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "orders",
    "positions",
    "strategies",
    "market",
    "realtime",
    "tradingrt",
]

# Django's middleware, declared synchronous only so that ASGI requests enter the chain in one
# thread handoff instead of one per hook (tradingrt/middleware.py).
MIDDLEWARE = [
    "tradingrt.middleware.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "tradingrt.middleware.SessionMiddleware",
    "tradingrt.middleware.CommonMiddleware",
    "tradingrt.middleware.CsrfViewMiddleware",
    "tradingrt.middleware.AuthenticationMiddleware",
    "tradingrt.middleware.MessageMiddleware",
    "tradingrt.middleware.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "tradingrt.urls"
ASGI_APPLICATION = "tradingrt.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "tradingrt" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------------------
# Default: a SQLite file in WAL mode with a busy timeout and IMMEDIATE transactions, so the
# server's threads and a management command writing at once wait for each other instead of
# failing with "database is locked".
_SQLITE_OPTIONS = {
    "timeout": 30,  # seconds a writer waits for the lock
    "transaction_mode": "IMMEDIATE",
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
}
DATABASES = {"default": env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(_SQLITE_OPTIONS)
    # Keep each thread's connection open: opening one per query was 17% of the connect CPU.
    DATABASES["default"]["CONN_MAX_AGE"] = None
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}
    VAR_DIR.mkdir(parents=True, exist_ok=True)
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # psycopg's connection pool, shared by the threads that run ORM work for the consumers.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": env("DATABASE_POOL_MAX_SIZE"),
        "timeout": 10,
    }
    # The test database gets a name of its own (the test runner creates and drops it), so a
    # test run never touches a database it did not create.
    DATABASES["default"]["TEST"] = {
        "NAME": env.str("DATABASE_TEST_NAME", default="test_tradingrt"),
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channel layer ------------------------------------------------------------------------
REDIS_URL = env("REDIS_URL")
REDIS_SENTINELS = env.list("REDIS_SENTINELS", default=[])  # host:port,host:port
# channels-redis waits up to 5 s for a message; the socket timeout must be longer, or an idle
# process's wait fails (redis-py's default read timeout) and the next update comes late.
_REDIS_CONNECTION = {"socket_timeout": 15, "socket_connect_timeout": 5}
if REDIS_SENTINELS:
    _REDIS_HOST: dict[str, object] = {
        "sentinels": [
            (host.strip("[]"), int(port))
            for host, _, port in (s.rpartition(":") for s in REDIS_SENTINELS)
        ],
        "master_name": env.str("REDIS_SENTINEL_MASTER", default="mymaster"),
        "sentinel_kwargs": {"socket_timeout": 2},
        **_REDIS_CONNECTION,
    }
else:
    _REDIS_HOST = {"address": REDIS_URL, **_REDIS_CONNECTION}
if REDIS_URL or REDIS_SENTINELS:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [_REDIS_HOST],
                "prefix": env("REDIS_PREFIX"),
                # Messages queued per channel: each process's hub has one channel for every
                # topic it serves, so this is the burst a process can fall behind by.
                "capacity": env.int("REDIS_CHANNEL_CAPACITY", default=10000),
                "expiry": 60,  # seconds an undelivered message lives
                # Seconds; every process re-joins its groups hourly (realtime.hub).
                "group_expiry": env.int("REDIS_GROUP_EXPIRY", default=86400),
            },
        }
    }
else:
    # One process: the hub's channel must absorb bursts (the default capacity, 100, drops).
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": 10000},
        }
    }

# --- Cache --------------------------------------------------------------------------------
# DRF's throttles keep their counts here (the password-login limits, realtime.sessions): on Redis
# when it is configured, so every process shares them; in the process's memory otherwise.
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": f"{env('REDIS_PREFIX')}:cache",
            "OPTIONS": {"socket_timeout": 5, "socket_connect_timeout": 5},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Auth ---------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/admin/login/"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # simplejwt's, refusing access tokens issued before a revocation (realtime.sessions)
        "realtime.sessions.JWTAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": None,
    "EXCEPTION_HANDLER": "tradingrt.api.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "COERCE_DECIMAL_TO_STRING": True,
}

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env("JWT_ACCESS_TOKEN_MINUTES")),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env("JWT_REFRESH_TOKEN_DAYS")),
    "ALGORITHM": "HS256",
    "UPDATE_LAST_LOGIN": False,
    # Tokens from a password login carry `auth_time` (realtime.sessions: revocation by time).
    "TOKEN_OBTAIN_SERIALIZER": "realtime.sessions.LoginSerializer",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Trading platform real-time API",
    "DESCRIPTION": "REST API of the trading platform; the WebSocket protocol: docs/PROTOCOL.md.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI from the installed sidecar package, not a CDN: the API docs work offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
}


# --- Real-time module (defaults and meaning: realtime/conf.py) -----------------------------
# Any REALTIME key can be set from the environment as REALTIME_<KEY>, its value read as JSON
# (REALTIME_HEARTBEAT_INTERVAL_SECS=5, REALTIME_ALLOWED_ORIGINS='["https://app.example"]').
def _realtime_from_environment() -> dict[str, object]:
    configured: dict[str, object] = {}
    for name, raw in os.environ.items():
        if name.startswith("REALTIME_") and name != "REALTIME_":
            try:
                configured[name.removeprefix("REALTIME_")] = json.loads(raw)
            except ValueError:
                configured[name.removeprefix("REALTIME_")] = raw
    return configured


REALTIME: dict[str, object] = _realtime_from_environment()

# --- Metrics (realtime.metrics, docs/DEPLOYMENT.md) ----------------------------------------
# GET /metrics answers staff, and a bearer token equal to this (empty: staff only).
METRICS_TOKEN = env("METRICS_TOKEN")
# prometheus-client's multiprocess mode: every server process of a host writes its metrics in
# this directory (prometheus-client reads the variable itself), and /metrics on any of them
# reports the host. Unset: each process reports itself.
PROMETHEUS_MULTIPROC_DIR = env("PROMETHEUS_MULTIPROC_DIR")

# --- I18N, static -------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# Serve straight from the apps' static folders, so the default start needs no collectstatic.
WHITENOISE_USE_FINDERS = True

# DJANGO_LOG_FORMAT=json: one JSON object per line (tradingrt.logs). Either way every line of
# the real-time module names its connection, user and client IP, and tokens are redacted.
LOG_FORMAT = env("DJANGO_LOG_FORMAT").lower()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "tradingrt.logs.ContextFilter"}},
    "formatters": {
        "plain": {"()": "tradingrt.logs.PlainFormatter"},
        "json": {"()": "tradingrt.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "plain",
            "filters": ["context"],
        }
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "realtime": {"level": env("DJANGO_LOG_LEVEL"), "propagate": True},
        "django.channels.server": {"level": "WARNING"},
    },
}
