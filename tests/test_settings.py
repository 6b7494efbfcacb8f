"""Settings from the environment (DESIGN.md section 8).

Settings are read once, at import, so each configuration is tried in a fresh
Python process started the way the web and the pool start: `django.setup()`
with `botplatform.settings` and a controlled environment.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from botplatform.env import Env

PROJECT = Path(__file__).resolve().parent.parent
# Everything the settings read, so the suite's own environment never leaks in.
SETTINGS_VARIABLES = {
    "DEBUG",
    "SECRET_KEY",
    "ALLOWED_HOSTS",
    "CSRF_TRUSTED_ORIGINS",
    "HTTPS",
    "HSTS_SECONDS",
    "DATABASE_URL",
    "REDIS_URL",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "DJANGO_SETTINGS_MODULE",
}
A_SECRET_KEY = secrets.token_urlsafe(50)


def environment(**values: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in SETTINGS_VARIABLES and not name.startswith(("GEMINI_", "WHATSAPP_"))
    }
    env["DJANGO_SETTINGS_MODULE"] = "botplatform.settings"
    env.update(values)
    return env


def start(code: str, **values: str) -> subprocess.CompletedProcess:
    """A process that starts Django with the given environment, then runs `code`."""
    return subprocess.run(
        [sys.executable, "-c", "import django\ndjango.setup()\n" + code],
        env=environment(**values),
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def started(code: str, **values: str) -> Any:
    """What `code` prints as JSON on its last line, in a process that started cleanly."""
    result = start(code, **values)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def error_of(result: subprocess.CompletedProcess) -> str:
    """The message a failed start-up ends with (not the traceback's source lines)."""
    assert result.returncode != 0, result.stdout
    return result.stderr.strip().splitlines()[-1]


# --- Bad values stop start-up -----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DEBUG", "maybe"),
        ("WHATSAPP_QR_TIMEOUT", "5"),
        ("WHATSAPP_LEASE_TTL", "abc"),
        ("WHATSAPP_CONNECT_RATE_BOT", "five"),
        ("DATABASE_URL", "mysql://x"),
        ("REDIS_URL", "http://x"),
        ("WHATSAPP_DEFAULT_PROVIDER", "telegram"),
        ("CSRF_TRUSTED_ORIGINS", "bots.example.com"),
        ("LOG_FORMAT", "xml"),
        ("WHATSAPP_SHARD_CAPACITY", "0"),
    ],
)
def test_it_refuses_to_start_with_a_bad_value_naming_the_variable(name, value):
    result = start("", **{"SECRET_KEY": A_SECRET_KEY, name: value})

    message = error_of(result)
    assert message.startswith("django.core.exceptions.ImproperlyConfigured: ")
    assert name in message
    assert value in message


def test_it_needs_a_secret_key_unless_debugging():
    production = start("", DEBUG="0")
    debugging = started(
        "import json\nfrom django.conf import settings as s\n"
        "print(json.dumps([s.DEBUG, len(s.SECRET_KEY), s.WHATSAPP_SIMULATOR]))",
        DEBUG="1",
    )

    assert "SECRET_KEY" in error_of(production)
    debug, secret_key_length, simulator = debugging
    assert debug is True
    assert secret_key_length >= 50
    assert simulator is True  # WHATSAPP_SIMULATOR follows DEBUG


# --- The embedded default ----------------------------------------------------------------


def test_it_defaults_to_sqlite_without_redis_and_to_the_documented_values():
    shown = started(
        """
import json
from channels.layers import get_channel_layer
from django.conf import settings as s
db = s.DATABASES["default"]
print(json.dumps({
    "engine": db["ENGINE"], "name": str(db["NAME"]), "options": db["OPTIONS"],
    "channel_layers": s.CHANNEL_LAYERS, "layer": repr(get_channel_layer()),
    "debug": s.DEBUG, "allowed_hosts": s.ALLOWED_HOSTS, "ssl_redirect": s.SECURE_SSL_REDIRECT,
    "gemini": [s.GEMINI_MODEL, s.GEMINI_REPLY_DEADLINE],
    "whatsapp": [s.WHATSAPP_DEFAULT_PROVIDER, s.WHATSAPP_SIMULATOR, s.WHATSAPP_QR_TIMEOUT, s.WHATSAPP_LEASE_TTL,
                 s.WHATSAPP_AI_CONCURRENCY, s.WHATSAPP_REPLY_MAX_AGE],
    "rates": [s.WHATSAPP_CONNECT_RATE_BOT, s.WHATSAPP_CONNECT_RATE_USER],
}))
""",
        SECRET_KEY=A_SECRET_KEY,
    )

    assert shown["engine"] == "django.db.backends.sqlite3"
    assert shown["name"] == str(PROJECT / "db.sqlite3")
    assert shown["options"]["transaction_mode"] == "IMMEDIATE"
    assert shown["options"]["timeout"] >= 5
    assert "journal_mode=WAL" in shown["options"]["init_command"]
    # Without Redis, the web's sockets hear its own process only; the rest comes through bots/follower.py.
    assert shown["channel_layers"] == {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    assert shown["layer"].startswith("<channels.layers.InMemoryChannelLayer")
    assert shown["debug"] is False
    assert shown["allowed_hosts"] == ["localhost", "127.0.0.1"]
    assert shown["ssl_redirect"] is False
    assert shown["gemini"] == ["gemini-2.5-flash", 25.0]
    assert shown["whatsapp"] == ["neonize", False, 120, 15, 64, 900]
    assert shown["rates"] == [[5, 60], [20, 600]]


def test_it_opens_sqlite_in_wal_mode_with_a_busy_timeout(tmp_path):
    path = tmp_path / "platform.sqlite3"

    shown = started(
        """
import json
from django.db import connection
with connection.cursor() as cursor:
    cursor.execute("PRAGMA journal_mode")
    journal = cursor.fetchone()[0]
    cursor.execute("PRAGMA busy_timeout")
    busy = cursor.fetchone()[0]
print(json.dumps([journal, busy]))
""",
        SECRET_KEY=A_SECRET_KEY,
        DATABASE_URL=f"sqlite:///{path}",
    )

    journal, busy_timeout_ms = shown
    assert journal == "wal"
    assert busy_timeout_ms >= 5000
    assert path.exists()


def test_it_uses_postgresql_and_redis_when_their_urls_are_set():
    shown = started(
        """
import json
from channels.layers import get_channel_layer
from channels_redis.utils import create_pool, decode_hosts
from django.conf import settings
db = settings.DATABASES["default"]
layer = settings.CHANNEL_LAYERS["default"]
pool = create_pool(decode_hosts(layer["CONFIG"]["hosts"])[0])
print(json.dumps({
    "engine": db["ENGINE"], "name": db["NAME"], "host": db["HOST"], "port": db["PORT"],
    "backend": layer["BACKEND"], "hosts": layer["CONFIG"]["hosts"], "layer": type(get_channel_layer()).__name__,
    "prefix": layer["CONFIG"]["prefix"],
    "redis": [pool.connection_kwargs["host"], pool.connection_kwargs["port"], pool.connection_kwargs["db"]],
}))
""",
        SECRET_KEY=A_SECRET_KEY,
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/x",
        REDIS_URL="redis://127.0.0.1:6379/3",
    )

    assert shown["engine"] == "django.db.backends.postgresql"
    assert (shown["name"], shown["host"], shown["port"]) == ("x", "127.0.0.1", 5432)
    assert shown["backend"] == "channels_redis.pubsub.RedisPubSubChannelLayer"
    assert shown["hosts"] == ["redis://127.0.0.1:6379/3"]
    assert shown["layer"] == "RedisPubSubChannelLayer"
    assert shown["redis"] == ["127.0.0.1", 6379, 3]
    # Pub/sub channels are shared by all databases of a Redis server: the database number keeps them apart.
    assert shown["prefix"] == "asgi:3:"


# --- HTTPS -------------------------------------------------------------------------------

VISIT = """
import json
from django.conf import settings as s
from django.core.management import call_command
from django.test import Client
call_command("migrate", verbosity=0)  # a healthy deployment is a migrated one
login = Client().get("/login/")
health = Client().get("/healthz")
print(json.dumps({
    "login": [login.status_code, login.get("Location")], "health": health.status_code,
    "flags": [s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE,
              s.SECURE_PROXY_SSL_HEADER],
}))
"""


def test_it_redirects_to_https_and_secures_cookies_with_https_on(tmp_path):
    shown = started(
        VISIT,
        DEBUG="0",
        HTTPS="1",
        SECRET_KEY=A_SECRET_KEY,
        ALLOWED_HOSTS="testserver",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
    )

    assert shown["login"] == [301, "https://testserver/login/"]
    assert shown["health"] == 200  # load balancers probe over plain HTTP
    ssl_redirect, hsts_seconds, session_secure, csrf_secure, proxy_header = shown["flags"]
    assert ssl_redirect is True
    assert hsts_seconds >= 31536000
    assert session_secure is True and csrf_secure is True
    assert proxy_header == ["HTTP_X_FORWARDED_PROTO", "https"]


def test_it_serves_plain_http_with_debug_off_and_https_unset(tmp_path):
    shown = started(
        VISIT,
        DEBUG="0",
        SECRET_KEY=A_SECRET_KEY,
        ALLOWED_HOSTS="testserver",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
    )

    assert shown["login"] == [200, None]
    assert shown["health"] == 200
    assert shown["flags"] == [False, 0, False, False, None]


def test_it_passes_the_deployment_checklist_with_https_on():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        env=environment(
            DEBUG="0", HTTPS="1", SECRET_KEY=A_SECRET_KEY, ALLOWED_HOSTS="bots.example.com", GEMINI_API_KEY="a-key"
        ),
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_it_warns_a_deployment_without_a_gemini_key():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        env=environment(DEBUG="0", HTTPS="1", SECRET_KEY=A_SECRET_KEY, ALLOWED_HOSTS="bots.example.com"),
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "bots.W001" in result.stderr + result.stdout
    assert "GEMINI_API_KEY" in result.stderr + result.stdout


# --- The Env helpers ---------------------------------------------------------------------


def test_it_reads_booleans_strictly():
    env = Env({"ON": "yes", "OFF": " 0 ", "EMPTY": "", "BAD": "maybe"})

    assert env.bool("ON", False) is True
    assert env.bool("OFF", True) is False
    assert env.bool("EMPTY", True) is True
    assert env.bool("UNSET", False) is False
    with pytest.raises(ImproperlyConfigured, match="BAD='maybe' is invalid: expected 1 or 0"):
        env.bool("BAD", False)


def test_it_reads_whole_numbers_within_their_range():
    env = Env({"TIMEOUT": "120", "LOW": "5", "HIGH": "999", "WORD": "abc", "DECIMAL": "1.5"})

    assert env.int("TIMEOUT", 60, min=10, max=160) == 120
    assert env.int("UNSET", 60, min=10, max=160) == 60
    with pytest.raises(ImproperlyConfigured, match="LOW='5' is invalid: expected a whole number from 10 to 160"):
        env.int("LOW", 60, min=10, max=160)
    with pytest.raises(ImproperlyConfigured, match=r"HIGH='999'.*from 10 to 160"):
        env.int("HIGH", 60, min=10, max=160)
    with pytest.raises(ImproperlyConfigured, match="WORD='abc' is invalid: expected a whole number"):
        env.int("WORD", 60)
    with pytest.raises(ImproperlyConfigured, match="DECIMAL"):
        env.int("DECIMAL", 60)


def test_it_reads_numbers_within_their_range():
    env = Env({"DEADLINE": "2.5", "ZERO": "0", "NAN": "nan", "WORD": "soon"})

    assert env.float("DEADLINE", 25.0, min=1, max=600) == 2.5
    assert env.float("UNSET", 25.0, min=1, max=600) == 25.0
    with pytest.raises(ImproperlyConfigured, match="ZERO='0' is invalid: expected a number from 1 to 600"):
        env.float("ZERO", 25.0, min=1, max=600)
    with pytest.raises(ImproperlyConfigured, match="NAN"):
        env.float("NAN", 25.0, min=1, max=600)
    with pytest.raises(ImproperlyConfigured, match="WORD='soon' is invalid: expected a number"):
        env.float("WORD", 25.0)


def test_it_reads_comma_separated_lists():
    env = Env({"HOSTS": " bots.example.com, ,api.example.com ", "COMMAS": ",,"})

    assert env.list("HOSTS", []) == ["bots.example.com", "api.example.com"]
    assert env.list("UNSET", ["localhost"]) == ["localhost"]
    with pytest.raises(ImproperlyConfigured, match="COMMAS"):
        env.list("COMMAS", [])


def test_it_reads_rates_as_count_per_seconds():
    env = Env({"RATE": "3/10", "WORD": "five", "ZERO": "0/60", "HALF": "5/"})

    assert env.rate("RATE", "5/60") == (3, 10)
    assert env.rate("UNSET", "5/60") == (5, 60)
    with pytest.raises(ImproperlyConfigured, match="WORD='five' is invalid: expected COUNT/SECONDS"):
        env.rate("WORD", "5/60")
    with pytest.raises(ImproperlyConfigured, match="ZERO='0/60' is invalid: expected COUNT/SECONDS with both"):
        env.rate("ZERO", "5/60")
    with pytest.raises(ImproperlyConfigured, match="HALF"):
        env.rate("HALF", "5/60")


def test_it_reads_urls_with_the_expected_schemes():
    env = Env({"DB": "postgres://db/x", "MYSQL": "mysql://db/x", "BARE": "db.example.com"})
    schemes = ("postgres", "postgresql", "sqlite")

    assert env.url("DB", schemes) == "postgres://db/x"
    assert env.url("UNSET", schemes) is None
    assert env.url("UNSET", schemes, "sqlite:///tmp/x") == "sqlite:///tmp/x"
    with pytest.raises(ImproperlyConfigured, match="MYSQL='mysql://db/x' is invalid: expected a URL starting with"):
        env.url("MYSQL", schemes)
    with pytest.raises(ImproperlyConfigured, match="BARE"):
        env.url("BARE", schemes)


def test_it_reads_strings_and_treats_blank_as_unset():
    env = Env({"MODEL": " gemini-2.5-pro ", "BLANK": "   "})

    assert env.str("MODEL") == "gemini-2.5-pro"
    assert env.str("BLANK", "gemini-2.5-flash") == "gemini-2.5-flash"
    assert env.str("UNSET") is None
