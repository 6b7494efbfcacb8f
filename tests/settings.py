"""Settings for the test suite: the real settings, with what a test run must have.

The environment still chooses the database and Redis (DATABASE_URL, REDIS_URL),
so the same tests run on SQLite here and on PostgreSQL + Redis in CI.
"""

import os

os.environ.setdefault("SECRET_KEY", "test-secret-key-only-for-the-test-suite-0123456789abcdefghij")
os.environ.setdefault("WHATSAPP_SIMULATOR", "1")
os.environ.setdefault("GEMINI_API_KEY", "test-key")

from botplatform.settings import *  # noqa: F403

# Hashing passwords slowly protects nothing in tests.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
