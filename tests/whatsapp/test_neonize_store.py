"""On SQLite, each neonize bot keeps its auth state in a file of its own: shown on the real library.

SQLite lets one writer in at a time, and whatsmeow writes on every message (sessions, keys): one
file shared by every bot of a host made each client wait on the others. A device's rows go with it
when it is deleted (whatsmeow's ON DELETE CASCADE, which SQLite applies with foreign keys on).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from pathlib import Path

import pytest

from tests.whatsapp.test_proxy import Listener, dial
from whatsapp.providers.base import Device
from whatsapp.providers.store import bot_store, delete_device, migrate_store

pytest.importorskip("neonize.events")

JID = "5511987654321:7@s.whatsapp.net"


def tables(path: str) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


async def test_each_bot_dials_with_a_store_file_of_its_own(provider, settings):
    first, second = uuid.uuid4(), uuid.uuid4()
    for bot_id in (first, second):
        proxy = Listener()
        settings.WHATSAPP_PROXY = f"http://127.0.0.1:{proxy.port}"
        await dial(provider, Device(bot_id=bot_id), proxy)

    shared = Path(provider.dsn)
    for bot_id in (first, second):
        own = shared.with_name(f"{shared.stem}-{bot_id}{shared.suffix}")
        assert own.exists() and "whatsmeow_device" in tables(str(own)), "whatsmeow made its schema there"
    assert bot_store(provider.dsn, first) != bot_store(provider.dsn, second)


def linked_device(store: str, jid: str) -> sqlite3.Connection:
    """A device row as whatsmeow writes one at pairing (its keys of the lengths its schema checks)."""
    migrate_store(store)  # whatsmeow's own schema, from the real library
    conn = sqlite3.connect(store)
    keys = [os.urandom(32), os.urandom(32), os.urandom(32), 1, os.urandom(64)]
    adv = [b"key", b"details", os.urandom(64), os.urandom(32), os.urandom(64)]
    conn.execute(
        "INSERT INTO whatsmeow_device (jid, registration_id, noise_key, identity_key, signed_pre_key,"
        " signed_pre_key_id, signed_pre_key_sig, adv_key, adv_details, adv_account_sig,"
        " adv_account_sig_key, adv_device_sig) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (jid, 1234, *keys, *adv),
    )
    conn.commit()
    return conn


def test_a_deleted_device_takes_its_sessions_and_keys_with_it(tmp_path):
    store = str(tmp_path / "store.sqlite3")
    with contextlib.closing(linked_device(store, JID)) as conn:
        conn.execute("INSERT INTO whatsmeow_sessions VALUES (?, ?, ?)", (JID, "5511912345678.0", b"session"))
        conn.execute("INSERT INTO whatsmeow_identity_keys VALUES (?, ?, ?)", (JID, "5511912345678", os.urandom(32)))
        conn.commit()

    delete_device(store, JID)  # a logout while the bot is offline

    with contextlib.closing(sqlite3.connect(store)) as conn:
        left = {
            table: conn.execute(f"SELECT count(*) FROM {table} WHERE {column} = ?", (JID,)).fetchone()[0]
            for table, column in [
                ("whatsmeow_device", "jid"),
                ("whatsmeow_sessions", "our_jid"),
                ("whatsmeow_identity_keys", "our_jid"),
            ]
        }
    assert left == {"whatsmeow_device": 0, "whatsmeow_sessions": 0, "whatsmeow_identity_keys": 0}


def test_a_device_linked_in_the_shared_file_stays_there(tmp_path):
    shared = str(tmp_path / "store.sqlite3")
    linked_device(shared, JID).close()

    assert bot_store(shared, uuid.uuid4(), JID) == shared, "resumed without a new scan"
    assert bot_store(shared, uuid.uuid4(), "5511900000000:3@s.whatsapp.net") != shared
