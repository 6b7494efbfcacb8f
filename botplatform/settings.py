"""Settings, read from the environment (docs/settings.md).

Defaults run on one machine with SQLite and no Redis; production sets
DATABASE_URL, REDIS_URL, SECRET_KEY, ALLOWED_HOSTS and HTTPS=1.
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _
from redis.connection import parse_url as parse_redis_url

from botplatform.env import Env

env = Env()
BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env.bool("DEBUG", False)
SECRET_KEY = env.str("SECRET_KEY")
if SECRET_KEY is None:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY is required when DEBUG is off.")
    SECRET_KEY = "django-insecure-dev-only-key-never-use-in-production-4f7b2c9e1a"

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", ["localhost", "127.0.0.1"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", [])
for origin in CSRF_TRUSTED_ORIGINS:
    if not origin.startswith(("http://", "https://")):
        raise ImproperlyConfigured(f"CSRF_TRUSTED_ORIGINS={origin!r} is invalid: expected scheme://host origins.")

HTTPS = env.bool("HTTPS", False)
if HTTPS:
    SECURE_SSL_REDIRECT = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env.int("HSTS_SECONDS", 31536000, min=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    # Health probes come from the load balancer over plain HTTP.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "django_htmx",
    "ninja",
    "pool",
    "bots",
    "whatsapp",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "botplatform.api.json_errors_middleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "botplatform.urls"
ASGI_APPLICATION = "botplatform.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.i18n",
            ],
        },
    },
]

# --- Database --------------------------------------------------------------

DATABASE_URL = env.url("DATABASE_URL", ("postgres", "postgresql", "sqlite"))
if DATABASE_URL is None:
    DATABASE_URL = f"sqlite:///{BASE_DIR / 'db.sqlite3'}"
_db = dj_database_url.parse(DATABASE_URL)
# A pool of PostgreSQL connections in this process, and its size (docs/settings.md).
DATABASE_POOL = env.bool("DATABASE_POOL", False)
DATABASE_POOL_SIZE = env.int("DATABASE_POOL_SIZE", 33, min=2, max=1000)
if _db["ENGINE"] == "django.db.backends.sqlite3":
    if not _db["NAME"] or _db["NAME"] == ":memory:":
        raise ImproperlyConfigured("DATABASE_URL must name a SQLite file: the web and the pool share it.")
    _db["OPTIONS"] = {
        # WAL lets the web read while a shard writes; IMMEDIATE takes the write lock
        # at BEGIN so concurrent writers wait (busy timeout) instead of failing.
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    # Tests that start real processes need a database file they can all open.
    _db["TEST"] = {"NAME": str(Path(_db["NAME"]).with_name("test_" + Path(_db["NAME"]).name))}
else:
    _db["CONN_HEALTH_CHECKS"] = True
    if DATABASE_POOL:
        # The web's (botplatform/asgi.py turns it on): its sockets do their database work on whatever
        # thread is free, and borrow a connection from psycopg's pool for it instead of opening one
        # each time (a new PostgreSQL connection was half of a socket handshake's cost). The pool's
        # processes keep a connection per thread instead, their threads being few and long-lived.
        # At most as many as the web has threads that use them (the loop's executor: at most 32), so
        # a wait for a free one is short: a long one means the database is down, and /healthz says so.
        _db.setdefault("OPTIONS", {})["pool"] = {"min_size": 1, "max_size": DATABASE_POOL_SIZE, "timeout": 3}
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channels --------------------------------------------------------------

REDIS_URL = env.url("REDIS_URL", ("redis", "rediss", "unix"))
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            # The pub/sub layer is 2-5x faster than the core layer (docs/architecture.md, live events).
            # It keeps no queue, which is fine: events are hints, the DB is the truth.
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            # Redis pub/sub ignores database numbers: the prefix keeps deployments that share
            # a Redis server on different databases from hearing each other's events and nudges.
            "CONFIG": {"hosts": [REDIS_URL], "prefix": f"asgi:{parse_redis_url(REDIS_URL).get('db', 0)}:"},
        }
    }
else:
    # Without Redis the web's sockets listen on a layer of its own process; what the shards
    # write reaches it through one follower of the database (bots/follower.py).
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
# Open live sockets per user and web process; more are accepted, then closed with 4429.
WEBSOCKETS_PER_USER = env.int("WEBSOCKETS_PER_USER", 100, min=50, max=100_000)

# --- Auth, i18n, static ------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en"
LANGUAGES = [("en", _("English")), ("pt-br", _("Brazilian Portuguese"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "botplatform.storage.StaticFilesStorage"
        )
    },
}
# Static files are served from the finders when collectstatic has not run (tests, DEBUG=0 locally).
WHITENOISE_USE_FINDERS = True

# Request bodies over 1 MiB are refused with 413 (docs/api.md).
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024

# Logs carry the shard and bot ids (botplatform/logs.py); LOG_FORMAT=json writes a JSON object per line.
LOG_FORMAT = env.str("LOG_FORMAT", "text")
if LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r} is invalid: expected text or json.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "botplatform.logs.ContextFilter"}},
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(context)s%(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s %(shard)s %(bot)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["context"]}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.channels.server": {"level": "WARNING"},
        # A line per Gemini request otherwise; the SDK still logs its retries.
        "httpx2": {"level": "WARNING"},
        "aiohttp": {"level": "WARNING"},
    },
}

# /metrics answers loopback, or anyone with this bearer token.
METRICS_TOKEN = env.str("METRICS_TOKEN")

# --- Gemini ------------------------------------------------------------------

GEMINI_API_KEY = env.str("GEMINI_API_KEY")
GEMINI_BASE_URL = env.url("GEMINI_BASE_URL", ("http", "https"))
GEMINI_MODEL = env.str("GEMINI_MODEL", "gemini-2.5-flash")
GEMINI_REPLY_DEADLINE = env.float("GEMINI_REPLY_DEADLINE", 25.0, min=1, max=600)
# One HTTP request to Gemini; failed ones are retried within GEMINI_REPLY_DEADLINE.
GEMINI_REQUEST_TIMEOUT = env.float("GEMINI_REQUEST_TIMEOUT", 12.0, min=0.1, max=600)

# --- WhatsApp pool -------------------------------------------------------------

WHATSAPP_DEFAULT_PROVIDER = env.str("WHATSAPP_DEFAULT_PROVIDER", "neonize")
if WHATSAPP_DEFAULT_PROVIDER not in ("neonize", "simulator"):
    raise ImproperlyConfigured(
        f"WHATSAPP_DEFAULT_PROVIDER={WHATSAPP_DEFAULT_PROVIDER!r} is invalid: expected neonize or simulator."
    )
WHATSAPP_SIMULATOR = env.bool("WHATSAPP_SIMULATOR", DEBUG)
if WHATSAPP_DEFAULT_PROVIDER == "simulator" and not WHATSAPP_SIMULATOR:
    raise ImproperlyConfigured("WHATSAPP_DEFAULT_PROVIDER=simulator needs WHATSAPP_SIMULATOR=1.")
WHATSAPP_QR_TIMEOUT = env.int("WHATSAPP_QR_TIMEOUT", 120, min=10, max=160)
WHATSAPP_STORE_URL = env.url("WHATSAPP_STORE_URL", ("postgres", "postgresql", "sqlite", "file"))
WHATSAPP_LEASE_TTL = env.int("WHATSAPP_LEASE_TTL", 15, min=6, max=600)
WHATSAPP_AI_CONCURRENCY = env.int("WHATSAPP_AI_CONCURRENCY", 64, min=1, max=4096)
WHATSAPP_REPLY_MAX_AGE = env.int("WHATSAPP_REPLY_MAX_AGE", 900, min=1)
# Bots one shard hosts at most (it advertises the room left; placement shares bots by it).
WHATSAPP_SHARD_CAPACITY = env.int("WHATSAPP_SHARD_CAPACITY", 1000, min=1, max=100_000)
# neonize bots one shard hosts at most, and connect attempts before it recycles itself
# (each attempt leaks a store connection: docs/neonize.md, section 4).
WHATSAPP_NEONIZE_CAPACITY = env.int("WHATSAPP_NEONIZE_CAPACITY", 200, min=1, max=2000)
WHATSAPP_RECYCLE_AFTER = env.int("WHATSAPP_RECYCLE_AFTER", 50, min=1)
# Reconnect backoff: 2 s doubling to 60 s, full jitter (docs/invariants.md, connection lifecycle).
WHATSAPP_BACKOFF_BASE = env.float("WHATSAPP_BACKOFF_BASE", 2.0, min=0.01, max=60)
WHATSAPP_BACKOFF_CAP = env.float("WHATSAPP_BACKOFF_CAP", 60.0, min=0.01, max=3600)
WHATSAPP_CONNECT_RATE_BOT = env.rate("WHATSAPP_CONNECT_RATE_BOT", "5/60")
WHATSAPP_CONNECT_RATE_USER = env.rate("WHATSAPP_CONNECT_RATE_USER", "20/600")
