"""The real WhatsApp provider: neonize 0.5.2 (whatsmeow in Go, loaded in-process).

Everything here is shaped by docs/neonize.md, which lists the ways the
library aborts a whole process or leaks:

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
import concurrent.futures
import contextlib
import datetime
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import transaction

from whatsapp.providers.base import Client, Commit, Db, Device, Events, Inbound, NotConnected, Provider
from whatsapp.providers.store import delete_device, migrate_store, store_dsn, store_has_device

logger = logging.getLogger(__name__)

FIRST_QR_SECONDS = 60.0
NEXT_QR_SECONDS = 20.0
DIAL_SLOT_SECONDS = 65.0  # whatsmeow's dial deadline is 60 s


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


class NeonizeClient(Client):
    def __init__(self, provider: NeonizeProvider, device: Device, events: Events) -> None:
        super().__init__(device, events)
        self.provider = provider
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

    async def send_text(self, to: str, text: str, commit: Commit | None = None) -> str:
        from neonize.utils.jid import build_jid

        if self.client is None:
            raise NotConnected("not connected")
        user, _, server = to.partition("@")
        response = await self.provider.run(self.client.send_message, build_jid(user, server or "s.whatsapp.net"), text)
        if commit is not None:
            await self.provider.db(_commit, commit, response.ID)
        return response.ID


def reap_exited_children() -> None:
    """Wait for the children that have exited: neonize's import runs ``uname -a`` twice through
    ``os.popen`` and never waits, which left two ``[sh] <defunct>`` in every shard. A shard starts
    no child of its own before this runs (its first neonize import)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _commit(commit: Commit, wa_id: str) -> None:
    with transaction.atomic():
        commit(wa_id)


class NeonizeProvider(Provider):
    name = "neonize"
    # neonize sends with an id of its own choosing: the send and its record cannot be one transaction.
    atomic_send = False
    # A resumed client's key in goneonize is its phone number: two clients of one number overwrite each other.
    one_client_per_number = True

    def __init__(self, db: Db, *, max_dials: int = 2, recycle_after: int = 50, stagger: float = 0.25) -> None:
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
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def capacity(self) -> int:
        return settings.WHATSAPP_NEONIZE_CAPACITY

    async def open(self) -> None:
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

        reap_exited_children()
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

    def recycle_reason(self) -> str:
        """Past a number of ended connect attempts, their leaked store pools call for a fresh process.

        Live sessions use their pools; only the pools of stopped or failed attempts
        count, so a shard can host more bots than the threshold.
        """
        if self.leaked >= self.recycle_after:
            return f"{self.leaked} ended neonize connect attempts"
        return ""


__all__ = ["NeonizeProvider", "inbound_from"]
