"""Where whatsmeow keeps a neonize bot's auth state: the store's address, its devices, its schema.

The whatsmeow store is the main PostgreSQL database by default, or wherever
``WHATSAPP_STORE_URL`` points (docs/settings.md); with SQLite, a file per bot beside
the main database (or beside the file ``WHATSAPP_STORE_URL`` names). Plain sync
functions, run on a shard's threads. They open their own short connections: the
store need not be Django's database.
"""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from django.conf import settings
from django.db import connection

LOOPBACK = {"localhost", "127.0.0.1", "::1", ""}
ADVISORY_LOCK_KEY = 0x5741_0001  # "WA" + 1: the whatsmeow schema migration


def store_dsn() -> str:
    """The whatsmeow store for this process, derived when the shard starts.

    ``WHATSAPP_STORE_URL`` wins; otherwise the main database: PostgreSQL (its
    ``whatsmeow_*`` tables beside Django's), or for SQLite a file of its own
    next to the main one. Derived from the live connection settings, so tests
    get the test database.
    """
    url = settings.WHATSAPP_STORE_URL
    if url:
        if url.startswith(("postgres://", "postgresql://")):
            return with_sslmode(url)
        # A plain absolute path: whatsmeow builds "file:<path>?_foreign_keys=on" itself.
        return "/" + url.removeprefix("sqlite:").removeprefix("file:").lstrip("/")
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        main = Path(db["NAME"])
        return str(main.with_name(main.stem + ".whatsmeow.sqlite3"))
    return with_sslmode(postgres_url(db))


def bot_store(dsn: str, bot_id: uuid.UUID, jid: str = "") -> str:
    """One bot's store: PostgreSQL's shared one, or on SQLite a file of its own beside ``dsn``.

    One file per bot: SQLite lets one writer in at a time, and every client of a shared file
    waited on the others' writes (whatsmeow writes on every message: sessions, keys). A device
    linked while the store was one shared file stays there.
    """
    if dsn.startswith("postgres"):
        return dsn
    if jid and store_has_device(dsn, jid):
        return dsn
    shared = Path(dsn)
    return str(shared.with_name(f"{shared.stem}-{bot_id}{shared.suffix}"))


def postgres_url(db: dict) -> str:
    """A ``postgres://`` URL for a Django PostgreSQL connection's settings (its sslmode kept)."""
    user = quote(db.get("USER") or "postgres", safe="")
    password = f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    sslmode = (db.get("OPTIONS") or {}).get("sslmode")
    query = f"?{urlencode({'sslmode': sslmode})}" if sslmode else ""
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}{query}"


def for_go(dsn: str) -> str:
    """The store's address as whatsmeow's driver (lib/pq) takes it: PostgreSQL with
    ``binary_parameters=yes``.

    lib/pq otherwise prepares an unnamed statement for every query with parameters, which a
    PgBouncer in transaction mode (Debian's 1.18) may run on another server connection than the
    prepare: "unnamed prepared statement does not exist (26000)". With binary parameters it sends
    each query in one round trip, through PgBouncer or straight to PostgreSQL alike. Python's
    drivers do not know the parameter: they get the address without it.
    """
    if not dsn.startswith("postgres"):
        return dsn
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    query.setdefault("binary_parameters", "yes")
    return urlunsplit(parts._replace(query=urlencode(query)))


def with_sslmode(url: str) -> str:
    """Keep the URL's sslmode; lib/pq defaults to require, so loopback gets disable."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    if "sslmode" not in query and (parts.hostname or "") in LOOPBACK:
        query["sslmode"] = "disable"
    return urlunsplit(parts._replace(query=urlencode(query)))


def _pg_connect(dsn: str) -> psycopg.Connection:
    # No server-side prepared statements: the store may be behind a PgBouncer in transaction mode.
    return psycopg.connect(dsn, autocommit=True, connect_timeout=10, prepare_threshold=None)


def store_has_device(dsn: str, jid: str) -> bool:
    """Is this device row in whatsmeow's store? (A client built for a missing one aborts the process.)"""
    if dsn.startswith("postgres"):
        with _pg_connect(dsn) as conn:
            row = conn.execute(
                "SELECT 1 FROM information_schema.tables WHERE table_name = 'whatsmeow_device'"
            ).fetchone()
            return bool(row) and bool(conn.execute("SELECT 1 FROM whatsmeow_device WHERE jid = %s", [jid]).fetchone())
    if not Path(dsn).exists():
        return False
    with contextlib.closing(sqlite3.connect(dsn, timeout=20)) as conn:
        try:
            return bool(conn.execute("SELECT 1 FROM whatsmeow_device WHERE jid = ?", [jid]).fetchone())
        except sqlite3.OperationalError:
            return False


def delete_device(dsn: str, jid: str) -> None:
    """Forget a device without a connection (a logout of a bot that is offline)."""
    if dsn.startswith("postgres"):
        with _pg_connect(dsn) as conn:
            with contextlib.suppress(Exception):
                conn.execute("DELETE FROM whatsmeow_device WHERE jid = %s", [jid])
        return
    if Path(dsn).exists():
        with contextlib.closing(sqlite3.connect(dsn, timeout=20)) as conn:
            # whatsmeow's other tables refer to the device ON DELETE CASCADE, which SQLite applies
            # only with foreign keys on (whatsmeow opens its files so; Python's sqlite3 does not).
            conn.execute("PRAGMA foreign_keys = ON")
            with contextlib.suppress(sqlite3.OperationalError):
                conn.execute("DELETE FROM whatsmeow_device WHERE jid = ?", [jid])
                conn.commit()


@contextlib.contextmanager
def migration_lock(dsn: str):
    """One migration at a time across shards and hosts: an advisory lock, or a file lock."""
    if dsn.startswith("postgres"):
        # A transaction's lock, held by its open transaction: through a PgBouncer in transaction
        # mode a session lock and its unlock could land on two server connections (and never end).
        with _pg_connect(dsn) as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [ADVISORY_LOCK_KEY])
            yield
        return
    Path(dsn).parent.mkdir(parents=True, exist_ok=True)
    with open(dsn + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def migrate_store(dsn: str) -> None:
    """Create or upgrade whatsmeow's schema once, before any client connects."""
    from neonize.client import ClientFactory

    with migration_lock(dsn):
        try:
            ClientFactory.get_all_devices_from_db(for_go(dsn))
        except ValueError:
            # Listing the devices can fail on a push name with a comma; the schema is migrated by then.
            pass
