"""The real WhatsApp provider: neonize 0.5.2 (whatsmeow in Go, loaded in-process).

Everything here is shaped by ../shared/notes/neonize.md, which lists the ways
the library aborts a whole process or leaks:

- neonize is imported lazily, only in shard processes, never before a fork;
  its Go log level is set before any client connects;
- a client is created with a stored device JID only after the device row was
  found in whatsmeow's store (a missing one aborts the process); otherwise with
  ``new_device=True`` and a unique ``uuid``;
- lifecycle calls (create, stop, logout) are serialized per process, and at
  most ``max_dials`` connects are in flight at once (Go's maps are not safe);
- Go callbacks only enqueue (``Events``); sends run on a thread of their own;
- every connect leaks a store pool, so connect attempts are counted and the
  shard recycles itself past a threshold;
- the store schema is migrated once, under a lock, before any client connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from django.conf import settings
from django.db import connection, transaction

from whatsapp.providers.base import Device, Events, Inbound, NotConnected

logger = logging.getLogger(__name__)

FIRST_QR_SECONDS = 60.0
NEXT_QR_SECONDS = 20.0
DIAL_SLOT_SECONDS = 65.0  # whatsmeow's dial deadline is 60 s
LOOPBACK = {"localhost", "127.0.0.1", "::1", ""}
ADVISORY_LOCK_KEY = 0x5741_0001  # "WA" + 1: the whatsmeow schema migration


class StoreUnavailable(Exception):
    pass


# --- The store: where whatsmeow keeps auth state ---------------------------------


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


def postgres_url(db: dict) -> str:
    """A ``postgres://`` URL for a Django PostgreSQL connection's settings (its sslmode kept)."""
    user = quote(db.get("USER") or "postgres", safe="")
    password = f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    sslmode = (db.get("OPTIONS") or {}).get("sslmode")
    query = f"?{urlencode({'sslmode': sslmode})}" if sslmode else ""
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}{query}"


def with_sslmode(url: str) -> str:
    """Keep the URL's sslmode; lib/pq defaults to require, so loopback gets disable."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    if "sslmode" not in query and (parts.hostname or "") in LOOPBACK:
        query["sslmode"] = "disable"
    return urlunsplit(parts._replace(query=urlencode(query)))


def _pg_connect(dsn: str):
    import psycopg

    return psycopg.connect(dsn, autocommit=True, connect_timeout=10)


def store_has_device(dsn: str, jid: str) -> bool:
    """Is this device row in whatsmeow's store? (A client built for a missing one aborts the process.)"""
    if dsn.startswith("postgres"):
        with _pg_connect(dsn) as conn:
            row = conn.execute(
                "SELECT 1 FROM information_schema.tables WHERE table_name = 'whatsmeow_device'"
            ).fetchone()
            return bool(row) and bool(conn.execute("SELECT 1 FROM whatsmeow_device WHERE jid = %s", [jid]).fetchone())
    import sqlite3

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
    import sqlite3

    if Path(dsn).exists():
        with contextlib.closing(sqlite3.connect(dsn, timeout=20)) as conn:
            with contextlib.suppress(sqlite3.OperationalError):
                conn.execute("DELETE FROM whatsmeow_device WHERE jid = ?", [jid])
                conn.commit()


@contextlib.contextmanager
def migration_lock(dsn: str):
    """One migration at a time across shards and hosts: an advisory lock, or a file lock."""
    if dsn.startswith("postgres"):
        with _pg_connect(dsn) as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", [ADVISORY_LOCK_KEY])
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", [ADVISORY_LOCK_KEY])
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
            ClientFactory.get_all_devices_from_db(dsn)
        except ValueError:
            # Listing the devices can fail on a push name with a comma; the schema is migrated by then.
            pass


def jid_from_string(value: str):
    """``5511…:12@s.whatsapp.net`` as the full JID whatsmeow's GetDevice matches on."""
    from neonize.proto.Neonize_pb2 import JID

    user_device, _, server = value.partition("@")
    user, _, device = user_device.partition(":")
    return JID(User=user, Device=int(device or 0), Server=server, RawAgent=0, Integrator=0, IsEmpty=False)


def jid_string(jid) -> str:
    from neonize.utils.jid import Jid2String

    return Jid2String(jid)


def chat_string(jid) -> str:
    from neonize.utils.jid import Jid2String, JIDToNonAD

    return Jid2String(JIDToNonAD(jid))


# --- Event translation: neonize's protobuf events into the provider interface --------


def inbound_from(event) -> Inbound | None:
    """A neonize MessageEv as an Inbound message; None for what is not a message for the bot."""
    from neonize.utils.message import extract_text

    info = event.Info
    source = info.MessageSource
    message = event.Message
    if message.HasField("protocolMessage") or message.HasField("reactionMessage"):
        return None
    if message.HasField("imageMessage"):
        kind = "image"
    elif message.HasField("audioMessage"):
        kind = "audio"
    elif message.HasField("stickerMessage"):
        kind = "sticker"
    elif message.HasField("conversation") or message.HasField("extendedTextMessage"):
        kind = "text"
    else:
        kind = "other"
    sender = source.Sender
    if sender.Server == "lid" and source.HasField("SenderAlt") and source.SenderAlt.User:
        sender = source.SenderAlt
    mentions: tuple[str, ...] = ()
    if message.HasField("extendedTextMessage"):
        mentions = tuple(message.extendedTextMessage.contextInfo.mentionedJID)
    timestamp = None
    if info.Timestamp:
        # neonize sends milliseconds (Go UnixMilli).
        timestamp = datetime.datetime.fromtimestamp(info.Timestamp / 1000, tz=datetime.UTC)
    return Inbound(
        wa_id=info.ID,
        chat=chat_string(source.Chat),
        sender=chat_string(sender),
        text=extract_text(message) or "",
        type=kind,
        push_name=info.Pushname,
        from_me=source.IsFromMe,
        is_group=source.IsGroup,
        mentions=mentions,
        timestamp=timestamp,
    )


class Handlers:
    """What one bot's neonize client calls on Go threads: translate, then only enqueue."""

    def __init__(self, bot_id: uuid.UUID, events: Events, on_first_event: Callable[[], None], pair: Callable) -> None:
        self.bot_id = bot_id
        self.events = events
        self.on_first_event = on_first_event
        self.pair = pair
        self.qr_count = 0
        self.pairing_code = ""

    def qr(self, client, data: bytes) -> None:
        self.on_first_event()
        self.qr_count += 1
        payload = data.decode()
        lifetime = FIRST_QR_SECONDS if self.qr_count == 1 else NEXT_QR_SECONDS
        if self.qr_count == 1 and self.pair is not None:
            # The pairing code needs the websocket up, so it is asked for from the first QR,
            # on a thread of its own: nothing slow on Go's thread.
            threading.Thread(target=self._pair_then_show, args=(client, payload, lifetime), daemon=True).start()
            return
        self.events.qr(self.bot_id, payload, lifetime, self.pairing_code)

    def _pair_then_show(self, client, payload: str, lifetime: float) -> None:
        try:
            self.pairing_code = self.pair(client)
        except Exception as exc:
            logger.warning("bot %s: pairing code request failed: %s", self.bot_id, exc)
        self.events.qr(self.bot_id, payload, lifetime, self.pairing_code)

    def pair_status(self, client, event) -> None:
        from neonize.events import PairStatusEv

        if event.Status == PairStatusEv.SUCCESS:
            self.events.paired(self.bot_id, jid_string(event.ID), event.ID.User, event.BusinessName)
        else:
            self.events.disconnected(self.bot_id, f"pairing failed: {event.Error or 'unknown error'}")

    def connected(self, client, event) -> None:
        self.on_first_event()
        self.events.connected(self.bot_id)

    def disconnected(self, client, event) -> None:
        self.events.disconnected(self.bot_id, "connection lost")

    def logged_out(self, client, event) -> None:
        self.events.logged_out(
            self.bot_id, "unlinked from the phone" if not event.OnConnect else "logged out on connect"
        )

    def stream_replaced(self, client, event) -> None:
        self.events.failed(self.bot_id, "stream_replaced")

    def temporary_ban(self, client, event) -> None:
        from neonize.events import TemporaryBanEv

        reason = TemporaryBanEv.TempBanReason.Name(event.Code) if event.Code else "unknown reason"
        self.events.failed(self.bot_id, f"temporary_ban: {reason.lower()}, expires in {event.Expire} s")

    def client_outdated(self, client, event) -> None:
        self.events.failed(self.bot_id, "client_outdated: this neonize version is too old for WhatsApp")

    def connect_failure(self, client, event) -> None:
        from neonize.proto import Neonize_pb2 as proto

        self.on_first_event()
        reason = proto.ConnectFailureReason.Name(event.Reason) if event.Reason else "GENERIC"
        detail = f"connect failure ({reason.lower()}){': ' + event.Message if event.Message else ''}"
        if event.Reason in (proto.LOGGED_OUT, proto.MAIN_DEVICE_GONE, proto.UNKNOWN_LOGOUT):
            self.events.logged_out(self.bot_id, detail)
        elif event.Reason in (proto.TEMP_BANNED, proto.CLIENT_OUTDATED, proto.BAD_USER_AGENT):
            self.events.failed(self.bot_id, detail)
        else:
            self.events.disconnected(self.bot_id, detail)

    def message(self, client, event) -> None:
        inbound = inbound_from(event)
        if inbound is not None:
            self.events.message(self.bot_id, inbound, None)

    def register(self, client) -> None:
        from neonize import events as ev

        client.event.qr(self.qr)
        for event_type, handler in (
            (ev.PairStatusEv, self.pair_status),
            (ev.ConnectedEv, self.connected),
            (ev.DisconnectedEv, self.disconnected),
            (ev.LoggedOutEv, self.logged_out),
            (ev.StreamReplacedEv, self.stream_replaced),
            (ev.TemporaryBanEv, self.temporary_ban),
            (ev.ClientOutdatedEv, self.client_outdated),
            (ev.ConnectFailureEv, self.connect_failure),
            (ev.MessageEv, self.message),
        ):
            # Plain functions, not bound methods: neonize keeps bound methods as weak refs.
            client.event(event_type)(lambda c, e, h=handler: h(c, e))


# --- Clients and the provider -------------------------------------------------------


class NeonizeClient:
    def __init__(self, provider: NeonizeProvider, device: Device, events: Events) -> None:
        self.provider = provider
        self.bot_id = device.bot_id
        self.device = device
        self.events = events
        self.client = None
        self.thread: threading.Thread | None = None
        self.stopping = False

    async def start(self) -> None:
        provider = self.provider
        if provider.broken:
            self.events.failed(self.bot_id, provider.broken)
            return
        jid = None
        if self.device.jid:
            if not await provider.run(store_has_device, provider.dsn, self.device.jid):
                # whatsmeow deleted the row (logout elsewhere) or it never existed: a fresh QR next time.
                self.events.logged_out(self.bot_id, "the linked device is no longer in the store")
                return
            jid = jid_from_string(self.device.jid)
        self.client = await provider.run(provider.new_client, self.bot_id, jid)
        handlers = Handlers(
            self.bot_id, self.events, self._dial_done, self._pair if self.device.pairing_phone else None
        )
        handlers.register(self.client)
        self.thread = threading.Thread(target=self._connect, name=f"wa-{self.bot_id.hex[:8]}", daemon=True)
        self.thread.start()

    def _pair(self, client) -> str:
        return client.PairPhone(self.device.pairing_phone, True)

    def _dial_done(self) -> None:
        self.provider.release_dial(self)

    def _connect(self) -> None:
        """The client's own thread: neonize's connect() blocks for the life of the session."""
        provider = self.provider
        if not provider.acquire_dial(self):
            return
        try:
            self.client.connect()
            if not self.stopping:
                self.events.disconnected(self.bot_id, "connection closed")
        except Exception as exc:
            if not self.stopping:
                self.events.disconnected(self.bot_id, f"connect failed: {exc}")
        finally:
            provider.release_dial(self)

    async def stop(self) -> None:
        if not self.stopping and self.thread is not None:
            # The store pool this client's connect opened is never closed: it leaks from now on.
            self.provider.leaked += 1
        self.stopping = True
        self.provider.release_dial(self)
        if self.client is not None:
            await self.provider.run(self.provider.lifecycle, self.client.stop)

    async def logout(self) -> None:
        self.stopping = True
        if self.client is not None and self.client.connected:
            with contextlib.suppress(Exception):
                await self.provider.run(self.provider.lifecycle, self.client.logout)
        if self.client is not None:
            await self.provider.run(self.provider.lifecycle, self.client.stop)
        if self.device.jid:
            await self.provider.run(delete_device, self.provider.dsn, self.device.jid)

    async def send_text(self, to: str, text: str, commit: Callable[[str], None] | None = None) -> str:
        from neonize.utils.jid import build_jid

        if self.client is None:
            raise NotConnected("not connected")
        user, _, server = to.partition("@")
        response = await self.provider.run(self.client.send_message, build_jid(user, server or "s.whatsapp.net"), text)
        if commit is not None:
            await self.provider.db(_commit, commit, response.ID)
        return response.ID


def _commit(commit: Callable[[str], None], wa_id: str) -> None:
    with transaction.atomic():
        commit(wa_id)


class NeonizeProvider:
    name = "neonize"
    # neonize sends with an id of its own choosing: the send and its record cannot be one transaction.
    atomic_send = False

    def __init__(self, db, *, max_dials: int = 2, recycle_after: int = 50, stagger: float = 0.25) -> None:
        self.db = db
        self.stagger = stagger
        self._last_dial = 0.0
        self.dsn = ""
        self.broken = ""
        self.max_dials = max_dials
        self.recycle_after = recycle_after
        self.attempts = 0
        self.leaked = 0
        self._dials = threading.Semaphore(max_dials)
        self._dialing: set[int] = set()
        self._dial_lock = threading.Lock()
        self._lifecycle = threading.Lock()
        self._executor = None

    async def open(self) -> None:
        import concurrent.futures

        self._executor = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="neonize")
        try:
            self.dsn = await self.db(store_dsn)
            await self.run(self._prepare)
        except Exception as exc:
            # A missing system library or an unreachable store fails the neonize bots, never the shard.
            self.broken = f"WhatsApp library unavailable: {type(exc).__name__}: {exc}"[:480]
            logger.error("neonize provider disabled: %s", self.broken)

    def _prepare(self) -> None:
        from neonize.utils import log as neonize_log

        # Set before any connect: Go reads it at connect time and otherwise forwards every DEBUG line.
        neonize_log.setLevel(logging.WARNING)
        migrate_store(self.dsn)

    async def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, lambda: fn(*args))

    def client(self, device: Device, events: Events) -> NeonizeClient:
        return NeonizeClient(self, device, events)

    def lifecycle(self, fn: Callable[[], Any]) -> Any:
        """Creating, stopping and logging out clients, one at a time in this process."""
        with self._lifecycle:
            return fn()

    def new_client(self, bot_id: uuid.UUID, jid) -> Any:
        from neonize.client import NewClient
        from neonize.proto.waCompanionReg.WAWebProtobufsCompanionReg_pb2 import DeviceProps

        props = DeviceProps(os="WhatsApp AI bots", platformType=DeviceProps.DESKTOP)
        with self._lifecycle:
            if jid is not None:
                return NewClient(self.dsn, jid=jid, props=props)
            return NewClient(self.dsn, props=props, uuid=f"bot-{bot_id.hex}", new_device=True)

    def acquire_dial(self, client: NeonizeClient) -> bool:
        """At most ``max_dials`` connects in flight; each start is counted (the store leak)."""
        while not client.stopping:
            if self._dials.acquire(timeout=0.5):
                with self._dial_lock:
                    self._dialing.add(id(client))
                    self.attempts += 1
                    # Dials are staggered: a restart with 200 bots does not hit WhatsApp all at once.
                    now = time.monotonic()
                    wait = max(0.0, self._last_dial + self.stagger - now)
                    self._last_dial = now + wait
                time.sleep(wait)
                # A dial slot is held until the first event, or at most whatsmeow's dial deadline.
                timer = threading.Timer(DIAL_SLOT_SECONDS, self.release_dial, args=(client,))
                timer.daemon = True  # never what keeps a stopping process alive
                timer.start()
                return True
        return False

    def release_dial(self, client: NeonizeClient) -> None:
        with self._dial_lock:
            if id(client) not in self._dialing:
                return
            self._dialing.discard(id(client))
        self._dials.release()

    def should_recycle(self) -> bool:
        """Past a number of ended connect attempts, their leaked store pools call for a fresh process.

        Live sessions use their pools; only the pools of stopped or failed attempts
        count, so a shard can host more bots than the threshold.
        """
        return self.leaked >= self.recycle_after


__all__ = ["NeonizeProvider", "inbound_from", "store_dsn"]
