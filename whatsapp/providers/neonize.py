"""The real WhatsApp provider: neonize 0.5.2 (whatsmeow in Go, loaded in-process).

Everything here is shaped by docs/neonize.md, which lists the ways the
library aborts a whole process or leaks:

- neonize is imported lazily, only in shard processes, never before a fork;
  its Go log level is set before any client connects;
- a client is created with a stored device JID only after the device row was
  found in whatsmeow's store (a missing one aborts the process); otherwise with
  ``new_device=True`` and a unique ``uuid``;
- every call into goneonize goes through ``GoCalls`` (gocalls.py): its maps
  have no lock, and a read beside a write aborts the process; at most
  ``max_dials`` connects are in flight at once;
- one client per device in this process (``take_key``), stopped explicitly:
  neonize's finalizer, which would stop whichever client holds the key when
  Python collects an old one, is detached;
- a send that whatsmeow refuses as not connected is a ``NotConnected`` (the
  reply waits for the connection), not a failure;
- Go callbacks only enqueue (``Events``, neonize_events.py); sends run on a
  thread of their own;
- every connect leaks a store pool, so connect attempts are counted and the
  shard recycles itself past a threshold;
- the store schema is migrated once, under a lock, before any client connects.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
from typing import Any

from django.conf import settings
from django.db import transaction

from botplatform.outbound_proxy import masked
from whatsapp.providers import connect_failures
from whatsapp.providers.base import Client, Commit, Db, Device, Events, NotConnected, Provider
from whatsapp.providers.gocalls import GoCalls
from whatsapp.providers.neonize_events import Handlers, jid_from_string
from whatsapp.providers.store import bot_store, delete_device, for_go, migrate_store, store_dsn, store_has_device

logger = logging.getLogger(__name__)

DIAL_SLOT_SECONDS = 65.0  # whatsmeow's dial deadline is 60 s


# --- Clients and the provider -------------------------------------------------------


# whatsmeow's answers to a send on a client that is not connected (now, or any more): the reply
# waits for the connection instead of failing (pool/replies.py requeues on NotConnected).
NOT_CONNECTED_ERRORS = ("websocket not connected", "client is nil", "the store doesn't contain a device jid")


class NeonizeClient(Client):
    def __init__(self, provider: NeonizeProvider, device: Device, events: Events) -> None:
        super().__init__(device, events)
        self.provider = provider
        self.client = None
        self.key = ""  # its uuid in goneonize's maps
        self.dsn = ""  # its store (store.bot_store)
        self.thread: threading.Thread | None = None
        self.stopping = False
        # Set at the first callback or when connect() returns: the dial is over.
        self.dial_over = threading.Event()

    async def start(self) -> None:
        provider = self.provider
        if provider.broken:
            self.events.failed(self.bot_id, provider.broken)
            return
        jid = None
        self.dsn = await provider.run(bot_store, provider.dsn, self.bot_id, self.device.jid)
        if self.device.jid:
            if not await provider.run(store_has_device, self.dsn, self.device.jid):
                # whatsmeow deleted the row (logout elsewhere) or it never existed: a fresh QR next time.
                self.events.logged_out(self.bot_id, "the linked device is no longer in the store")
                return
            jid = jid_from_string(self.device.jid)
        # goneonize keys a resumed client by its phone number, a new one by the uuid given.
        self.key = jid.User if jid is not None else f"bot-{self.bot_id.hex}"
        await provider.run(provider.take_key, self)
        if self.stopping:
            return
        self.client = await provider.run(provider.new_client, self.key, jid, self.dsn)
        handlers = Handlers(self.bot_id, self.events, self._on_event, self._pair if self.device.pairing_phone else None)
        handlers.register(self.client)
        self.thread = threading.Thread(target=self._connect, name=f"wa-{self.bot_id.hex[:8]}", daemon=True)
        self.thread.start()

    def _pair(self, client) -> str:
        from neonize.utils.enum import ClientName, ClientType

        # The display name must be `Browser (OS)` from WhatsApp's short list, or the server refuses
        # the code and the phone shows nothing (whatsmeow pair-code.go). neonize builds it from these
        # two: "Chrome (Linux)". Its default, from the device's platform, gave "Electron (Linux)".
        phone = self.device.pairing_phone
        return self.provider.go.read(client.PairPhone, phone, True, ClientName.LINUX, ClientType.CHROME)

    def _on_event(self, client) -> bool:
        """Go's thread, at every callback: the dial is over (a client stopped during it stops now).

        Whether the event is this bot's: not once it is stopping, nor from a client it replaced.
        """
        if not self.dial_over.is_set():
            self.dial_over.set()
            self.provider.release_dial(self)
            if self.stopping:
                threading.Thread(target=self.provider.stop_client, args=(self,), daemon=True).start()
        return not self.stopping and client is self.client

    def _connect(self) -> None:
        """The client's own thread: neonize's connect() blocks for the life of the session."""
        provider = self.provider
        if not provider.acquire_dial(self):
            self.dial_over.set()
            return
        try:
            proxy = provider.proxy_settings(self.device.proxy)
            provider.go.connect(lambda: self.client.connect(proxy), self.dial_over)
            if not self.stopping:
                self.events.disconnected(self.bot_id, "connection closed")
        except Exception as exc:
            if not self.stopping:
                # An event neonize could not pass on ends connect(): say what it was. Go's error may
                # quote the proxy's URL: its password stays out of lastError and the logs.
                reason = connect_failures.unpassed(str(exc)) or masked(
                    f"connect failed: {exc}", proxy.proxy_address if proxy else ""
                )
                self.events.disconnected(self.bot_id, reason)
        finally:
            self.dial_over.set()
            provider.release_dial(self)
            if self.stopping:
                provider.stop_client(self)

    def dialling(self) -> bool:
        return self.thread is not None and self.thread.is_alive() and not self.dial_over.is_set()

    async def stop(self) -> None:
        if not self.stopping and self.thread is not None:
            # The store pool this client's connect opened is never closed: it leaks from now on.
            self.provider.leaked += 1
        self.stopping = True
        self.provider.release_dial(self)
        if self.client is None or self.dialling():
            # whatsmeow's Disconnect would wait for the dial (up to 60 s) with goneonize's maps locked:
            # the dial's end (its first callback, or connect() returning) stops it instead.
            return
        await self.provider.run(self.provider.stop_client, self)

    async def logout(self) -> None:
        self.stopping = True
        provider = self.provider
        if self.client is not None and not self.dialling():
            if await provider.run(provider.go.read, lambda: self.client.connected):
                with contextlib.suppress(Exception):
                    await provider.run(provider.go.read, self.client.logout)
            await provider.run(provider.stop_client, self)
        if self.device.jid:
            dsn = self.dsn or await provider.run(bot_store, provider.dsn, self.bot_id, self.device.jid)
            await provider.run(delete_device, dsn, self.device.jid)

    async def send_text(self, to: str, text: str, commit: Commit | None = None, ref: str = "") -> str:
        # neonize cannot send under an id of the caller's (goneonize's SendMessage sets no
        # SendRequestExtra.ID): ``ref`` is not used, and a send cut short by a crash is not repeated.
        from neonize.utils.jid import build_jid

        if self.client is None or self.stopping:
            raise NotConnected("not connected")
        user, _, server = to.partition("@")
        jid = build_jid(user, server or "s.whatsapp.net")
        try:
            response = await self.provider.run(self.provider.go.read, self.client.send_message, jid, text)
        except Exception as exc:
            if any(error in str(exc).lower() for error in NOT_CONNECTED_ERRORS):
                raise NotConnected(str(exc)) from exc
            raise
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
        self.go = GoCalls()
        # The client that holds each goneonize key (a device's phone number, a new device's uuid).
        self._holders: dict[str, NeonizeClient] = {}
        self._holders_lock = threading.Lock()
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
        if self.dsn.startswith("postgres"):
            # One schema for every bot: migrated once, before any client (concurrent migrations
            # broke). A bot's own SQLite file is migrated by its one client when it opens it.
            migrate_store(self.dsn)

    async def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, lambda: fn(*args))

    def client(self, device: Device, events: Events) -> NeonizeClient:
        return NeonizeClient(self, device, events)

    def take_key(self, client: NeonizeClient) -> None:
        """Make ``client`` the holder of its key: one client per device in this process.

        A previous holder is stopped first (its dial waited for: a client whose dial succeeded after
        another took its key would be a second connection of the device, out of goneonize's maps).
        """
        with self._holders_lock:
            previous = self._holders.get(client.key)
            self._holders[client.key] = client
        if previous is not None and previous is not client:
            previous.stopping = True
            previous.dial_over.wait(DIAL_SLOT_SECONDS)
            self.stop_client(previous, key_taken=True)

    def stop_client(self, client: NeonizeClient, *, key_taken: bool = False) -> None:
        """goneonize's Stop for this client's key, once, unless another client holds the key now."""
        with self._holders_lock:
            holder = self._holders.get(client.key)
            if holder is not client and not key_taken:
                return
            if holder is client:
                del self._holders[client.key]
            stopped, client.client = client.client, None
        if stopped is not None:
            self.go.write(stopped.stop)

    def proxy_settings(self, own: str = ""):
        """The bot's own proxy, else WHATSAPP_PROXY, as neonize takes it; None: a direct dial."""
        from neonize._binder import ProxySettings

        address = own or settings.WHATSAPP_PROXY
        return ProxySettings(proxy_address=address) if address else None

    def new_client(self, key: str, jid, dsn: str = "") -> Any:
        from neonize.client import NewClient
        from neonize.proto.waCompanionReg.WAWebProtobufsCompanionReg_pb2 import DeviceProps

        props = DeviceProps(os="WhatsApp AI bots", platformType=DeviceProps.DESKTOP)
        if jid is not None:
            client = NewClient(for_go(dsn or self.dsn), jid=jid, props=props)
        else:
            client = NewClient(for_go(dsn or self.dsn), props=props, uuid=key, new_device=True)
        # neonize calls Go's Stop(key) when Python collects a client. By then a newer client of the
        # same device holds the key (every reconnect makes one), and would be removed with no event:
        # clients are stopped explicitly (stop_client), never by the collector.
        client._stop_finalizer.detach()
        return client

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


__all__ = ["NeonizeProvider"]
