"""Settings for the test suite: the real settings, with what a test run must have.

The environment still chooses the database and Redis (DATABASE_URL, REDIS_URL),
so the same tests run on SQLite here and on PostgreSQL + Redis in CI.
"""

import os
import tempfile

os.environ.setdefault("SECRET_KEY", "test-secret-key-only-for-the-test-suite-0123456789abcdefghij")
os.environ.setdefault("WHATSAPP_SIMULATOR", "1")
os.environ.setdefault("GEMINI_API_KEY", "test-key")
# The shards' inbound journals, one directory per test run (the processes a run starts inherit it).
os.environ.setdefault("WHATSAPP_JOURNAL_DIR", tempfile.mkdtemp(prefix="bots-journal-"))
# No test reaches Google: a process that is not pointed at a fake Gemini server gets "connection
# refused" at once (and sends the bot's fallback text).
os.environ.setdefault("GEMINI_BASE_URL", "http://127.0.0.1:9")
# The fake Gemini server is on loopback: never through a proxy (the SDK honours *_PROXY).
os.environ["NO_PROXY"] = ",".join(
    dict.fromkeys(["127.0.0.1", "localhost", *filter(None, os.environ.get("NO_PROXY", "").split(","))])
)

from botplatform.settings import *  # noqa: F403

# Hashing passwords slowly protects nothing in tests.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
