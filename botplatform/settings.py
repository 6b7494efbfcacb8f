"""Settings, read from the environment (docs/settings.md).

Defaults run on one machine with SQLite and no Redis; production sets
DATABASE_URL, REDIS_URL, SECRET_KEY, ALLOWED_HOSTS and HTTPS=1.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _
from redis.connection import parse_url as parse_redis_url

from botplatform import outbound_proxy as proxies
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
    # Health probes come from the load balancer, scrapes from a Prometheus on loopback, both plain HTTP.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "axes",
    "channels",
    "django_htmx",
    "ninja",
    "pool",
    "bots",
    "whatsapp",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "botplatform.api.json_errors_middleware",
    "botplatform.guards.refuse_nul_middleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: it turns a locked login into the lock page (AXES_LOCKOUT_TEMPLATE).
    "axes.middleware.AxesMiddleware",
]

# A Content-Security-Policy on every page (django-csp): only this site's own scripts, styles and
# connections (WebSockets are same-origin; the QR code is a data: PNG), nothing inline, no framing.
# The pages need nothing more: no inline script or style, and htmx without eval (templates/base.html).
# /api/docs alone adds inline styles, which Swagger UI sets on its elements (botplatform/urls.py).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "style-src": ["'self'"],
        "script-src": ["'self'"],
        "connect-src": ["'self'"],
        "frame-ancestors": ["'none'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
    }
}

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
# WAL lets the web read while a shard writes; IMMEDIATE takes the write lock
# at BEGIN so concurrent writers wait (busy timeout) instead of failing.
SQLITE_OPTIONS = {
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    "transaction_mode": "IMMEDIATE",
    "timeout": 20,
}
if _db["ENGINE"] == "django.db.backends.sqlite3":
    if not _db["NAME"] or _db["NAME"] == ":memory:":
        raise ImproperlyConfigured("DATABASE_URL must name a SQLite file: the web and the pool share it.")
    _db["OPTIONS"] = dict(SQLITE_OPTIONS)
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

# WhatsApp's side of the simulator (pending inbound, sent messages, devices) in a store of its own,
# as WhatsApp's servers are not the platform's database: with that database stopped, messages still
# arrive (docs/simulator.md). Default: a SQLite file beside the main database (one host).
WHATSAPP_SIMULATOR_URL = env.url("WHATSAPP_SIMULATOR_URL", ("postgres", "postgresql", "sqlite"))
if WHATSAPP_SIMULATOR_URL is None:
    _beside = Path(_db["NAME"]) if _db["ENGINE"] == "django.db.backends.sqlite3" else BASE_DIR / "db.sqlite3"
    WHATSAPP_SIMULATOR_URL = f"sqlite:///{_beside.with_name(_beside.stem + '-simulator.sqlite3')}"
_simulator_db = dj_database_url.parse(WHATSAPP_SIMULATOR_URL)
if _simulator_db["ENGINE"] == "django.db.backends.sqlite3":
    _simulator_db["OPTIONS"] = dict(SQLITE_OPTIONS)
    _name = Path(_simulator_db["NAME"])
    _simulator_db["TEST"] = {"NAME": str(_name.with_name("test_" + _name.name))}
else:
    _simulator_db["CONN_HEALTH_CHECKS"] = True
DATABASES["simulator"] = _simulator_db
DATABASE_ROUTERS = ["whatsapp.routers.SimulatorRouter"]
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
# Messages to show on the next page are kept in the session, server side: Django's default puts
# them in a cookie, signed but readable, and the admin shows a new API token's secret as one.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"
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
        # Its "AXES: BEGIN version ..." at every start of every command; lockouts are logged by axes.handlers.
        "axes.apps": {"level": "WARNING"},
    },
}

# /metrics answers loopback, or anyone with this bearer token.
METRICS_TOKEN = env.str("METRICS_TOKEN")
# The header by which the proxy in front of the web (nginx: deploy/nginx.conf) names the client; a
# request relayed by it counts as loopback for /metrics only if that client is. "none": no proxy.
PROXY_CLIENT_HEADER = env.str("PROXY_CLIENT_HEADER", "X-Forwarded-For")
if PROXY_CLIENT_HEADER.lower() == "none":
    PROXY_CLIENT_HEADER = ""
elif not re.fullmatch(r"[A-Za-z0-9-]{1,64}", PROXY_CLIENT_HEADER):
    raise ImproperlyConfigured(
        f"PROXY_CLIENT_HEADER={PROXY_CLIENT_HEADER!r} is invalid: expected a header name or none."
    )

# --- Login throttling (django-axes) -----------------------------------------------
# Failed logins, on /login/ and /admin/login/ alike, are counted in the database (AccessAttempt rows:
# every web process sees them). An account is locked after 10 failures, from any addresses; an
# address after 50, across accounts. A lock refuses the right password too, with a page in the
# operator's language (templates/registration/locked_out.html, 429). Staff unlock with
# `manage.py axes_reset_username NAME` or `axes_reset_ip ADDRESS`, or delete the admin's access attempts.
AUTHENTICATION_BACKENDS = [
    # Refuses a locked login before any password is checked. It logs nobody in and has no get_user: a
    # session names ModelBackend, the one that logged it in, and get_user asks that one (bots/sockets.py).
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
# Two separate criteria (a list of lists would be one combined criterion): either one locks.
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
LOGIN_FAILURES_PER_ACCOUNT = 10
LOGIN_FAILURES_PER_ADDRESS = 50
# botplatform/logins.py: 10 for an account that has 10 failures already, else 50 (the address's limit).
AXES_FAILURE_LIMIT = "botplatform.logins.failure_limit"
# What axes counts is not a sliding window: it keeps a row per username, address and user agent, with its
# failures and the time of the last one, and a row counts (all its failures) while that last one is less
# than 15 minutes old; then it is deleted. Failures further apart still add up while each comes within 15
# minutes of the one before on its row, yet no more than 10 of one account (50 of one address) fit in any
# 15 minutes. A lock holds until enough rows age out: 15 minutes after the failure that set it when the
# failures came from one address and browser, sooner when they came from several (each row leaves on its own).
AXES_COOLOFF_TIME = datetime.timedelta(minutes=15)
# Refused attempts during a lock are not counted, so they do not prolong it: retrying the right password
# does not keep an operator out longer.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# A success does not wipe the failures: axes would delete every row of the username *and of the address*
# (both criteria), so anyone with an account could log in to it between guesses at another's password and
# never reach either limit. Failures simply age out.
AXES_RESET_ON_SUCCESS = False
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_HTTP_RESPONSE_CODE = 429
# The address: REMOTE_ADDR, unless HTTPS=1 says nginx is in front (deploy/): then, for a request it relays
# from loopback, the last address of its PROXY_CLIENT_HEADER, the one nginx appended (what the client sent
# comes before it; botplatform/logins.py). axes' AXES_IPWARE_* settings need django-ipware, which is not
# installed; this callable is what axes asks first.
LOGIN_CLIENT_HEADER = PROXY_CLIENT_HEADER if HTTPS else ""
AXES_CLIENT_IP_CALLABLE = "botplatform.logins.client_address"

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
# Each shard's inbound journal (pool/journal.py): messages WhatsApp counts delivered, on disk until
# stored. Local to the host: the next shard process there replays a dead one's.
WHATSAPP_JOURNAL_DIR = Path(env.str("WHATSAPP_JOURNAL_DIR", str(BASE_DIR / "var" / "journal")))
WHATSAPP_LEASE_TTL = env.int("WHATSAPP_LEASE_TTL", 15, min=6, max=600)
WHATSAPP_AI_CONCURRENCY = env.int("WHATSAPP_AI_CONCURRENCY", 64, min=1, max=4096)
WHATSAPP_REPLY_MAX_AGE = env.int("WHATSAPP_REPLY_MAX_AGE", 900, min=1)
# Bots one shard hosts at most (it advertises the room left; placement shares bots by it).
WHATSAPP_SHARD_CAPACITY = env.int("WHATSAPP_SHARD_CAPACITY", 1000, min=1, max=100_000)
# neonize bots one shard hosts at most, and connect attempts before it recycles itself
# (each attempt leaks a store connection: docs/neonize.md, section 4).
WHATSAPP_NEONIZE_CAPACITY = env.int("WHATSAPP_NEONIZE_CAPACITY", 200, min=1, max=2000)
WHATSAPP_RECYCLE_AFTER = env.int("WHATSAPP_RECYCLE_AFTER", 50, min=1)
# A proxy for every neonize dial whose bot has none of its own, in the form a bot's `proxy` takes
# (whatsmeow dials http://, https:// and socks5://: botplatform/outbound_proxy.py). Refused at start-up
# without its password in the message.
try:
    WHATSAPP_PROXY = proxies.proxy_url(env.str("WHATSAPP_PROXY", ""))
except ValueError as _error:
    _proxy = env.str("WHATSAPP_PROXY", "")
    raise ImproperlyConfigured(f"WHATSAPP_PROXY={proxies.masked(_proxy, _proxy)!r} is invalid: {_error}") from None
# Reconnect backoff: 2 s doubling to 60 s, full jitter (docs/invariants.md, connection lifecycle).
WHATSAPP_BACKOFF_BASE = env.float("WHATSAPP_BACKOFF_BASE", 2.0, min=0.01, max=60)
WHATSAPP_BACKOFF_CAP = env.float("WHATSAPP_BACKOFF_CAP", 60.0, min=0.01, max=3600)
WHATSAPP_CONNECT_RATE_BOT = env.rate("WHATSAPP_CONNECT_RATE_BOT", "5/60")
WHATSAPP_CONNECT_RATE_USER = env.rate("WHATSAPP_CONNECT_RATE_USER", "20/600")
# neonize dials per bot owner (every start, retry and reconnect of a client): each leaks a store
# connection, so one account's failing dials must not recycle a shard again and again.
WHATSAPP_DIAL_RATE_USER = env.rate("WHATSAPP_DIAL_RATE_USER", "30/600")
