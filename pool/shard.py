"""A shard: one process hosting WhatsApp clients, in the shape of healthchecks' ``sendalerts``.

A shutdown flag set by signals; a loop of small steps that reconcile toward
the database (docs/invariants.md, 1) and say whether there is more to do at
once; sleeps that a nudge or a signal ends early; a clean stop of every client
on the way out. One asyncio loop: WhatsApp callbacks only enqueue
(pool/connection.py), the ORM runs on a fixed pool of DB threads
(pool/dbthreads.py), replies on their own (pool/replies.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
import uuid
from typing import Any

from django.conf import settings
from django.db import DatabaseError

from botplatform import logs
from bots.control import SHARDS_GROUP, wake_shards
from pool import leases
from pool.connection import HostedBot, Phase, ShardEvents, pump
from pool.dbthreads import DbThreads
from pool.inbox import Inbox
from pool.recycle import Drain
from pool.replies import ReplyPipeline
from whatsapp import state
from whatsapp.providers.base import Provider
from whatsapp.providers.neonize import NeonizeProvider
from whatsapp.providers.simulator import SimulatorProvider

logger = logging.getLogger(__name__)

STOP_TIMEOUT = 10.0
# Bots claimed in one pass at most: the next pass follows at once, after renewing the leases if due, and
# the bots claimed so far start meanwhile (claiming thousands in one go outlasted the lease TTL).
CLAIM_BATCH = 100
# While a stopping shard releases its bots, it tells the others this often to come and take them.
RELEASE_NUDGE_SECONDS = 1.0
# Page hints for one bot are sent at most this often: a busy chat does not re-render its pages
# for every status its messages pass through. Connection frames are never held back.
PAGE_HINT_SECONDS = 0.1
# A shard that exits with this code asked to be replaced (see check_recycle): restart it at once,
# unless it said "draining" first and its replacement runs already (pool/recycle.py).
RECYCLE_EXIT_CODE = 75


def new_shard_id(index: int = 0) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{index}:{uuid.uuid4().hex[:8]}"


class Shard:
    def __init__(
        self,
        shard_id: str | None = None,
        *,
        providers: dict[str, Provider] | None = None,
        capacity: int | None = None,
        poll_interval: float | None = None,
        db_threads: int = 4,
    ) -> None:
        self.shard_id = shard_id or new_shard_id()
        self.capacity = capacity or settings.WHATSAPP_SHARD_CAPACITY
        self.ttl = settings.WHATSAPP_LEASE_TTL
        # Without Redis no nudge reaches a shard: it looks more often.
        self.poll_interval = poll_interval or (2.0 if state.shared_layer() else 0.5)
        self.db_threads = DbThreads(db_threads, "shard-db", self.publish)
        self.providers: dict[str, Provider] = providers or {}
        self.hosted: dict[uuid.UUID, HostedBot] = {}
        self.placement = leases.Placement(self.ttl)
        self.replies = ReplyPipeline(self.hosted, self.publish)
        self.inbox = Inbox(self)
        self.shutdown = False
        self.recycling = ""
        self.last_renewal = 0.0
        self.last_renewal_ok = 0.0
        # Held while one event is handled, and while stop_all stops one bot: their writes never interleave.
        self.handling = asyncio.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.wakeup = asyncio.Event()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.broadcasts: asyncio.Queue = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []

    # --- plumbing ---------------------------------------------------------------

    async def db(self, fn, *args, **kwargs):
        return await self.db_threads.run(fn, *args, **kwargs)

    def publish(self, group: str, message: dict) -> None:
        """After commit, from a DB thread: hand a broadcast to the loop, which sends them in order."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.broadcasts.put_nowait, (group, message))

    def wake(self) -> None:
        self.wakeup.set()
        for provider in self.providers.values():
            provider.wake()

    async def sleep(self, seconds: float) -> None:
        """Until the next pass is due, or a nudge or a signal comes first."""
        try:
            await asyncio.wait_for(self.wakeup.wait(), seconds)
        except TimeoutError:
            pass
        self.wakeup.clear()

    async def setup(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.inbox.open()
        self.events = ShardEvents(self.loop, self.queue, self.inbox.journal)
        if not self.providers:
            self.providers = default_providers(self)
        for provider in self.providers.values():
            await provider.open()
        await self.replies.start()
        self._tasks = [
            asyncio.create_task(pump(self, self.queue, self.handling), name="events"),
            asyncio.create_task(self.send_broadcasts(), name="broadcasts"),
            asyncio.create_task(self.listen_for_nudges(), name="nudges"),
        ]

    async def run(self) -> None:
        await self.setup()
        logger.info("shard %s started (capacity %d)", self.shard_id, self.capacity)
        try:
            while not self.shutdown:
                if not await self.step():
                    await self.sleep(self.poll_interval)
        finally:
            await self.stop_all()

    async def step(self) -> bool:
        """One pass of reconciliation, each part safe to repeat; True when there is more to do at once."""
        try:
            await self.renew_leases()
            await self.inbox.replay()
            await self.reconcile()
            more = await self.claim_bots()
            await self.start_due_retries()
            self.expire_deadlines()
            self.check_recycle()
            await self.replies.scan()
            return more and not self.shutdown
        except DatabaseError:
            logger.exception("shard %s: database error; retrying", self.shard_id)
            await self.check_lease_deadline()
            return False

    # --- recycling: make before break (pool/recycle.py) ---
    # The pipe on which the supervisor hears "draining": set by run_shard, None for a shard started by hand.
    control_fd: int | None = None
    recycle_asked = ""  # an operator's SIGUSR2
    drain: Drain | None = None

    def check_recycle(self) -> None:
        """A provider that leaks per connect attempt asks for a fresh process: hand the bots over, then exit."""
        if self.recycling or self.shutdown:
            return
        reasons = [self.recycle_asked] + [provider.recycle_reason() for provider in self.providers.values()]
        reason = next((r for r in reasons if r), "")
        if reason:
            logger.warning("shard %s: recycling after %s; draining", self.shard_id, reason)
            self.recycling = reason
            self.drain = Drain(self, reason)  # a task beside this loop, which goes on for the bots not moved yet

    def request_recycle(self, *_: Any) -> None:
        """SIGUSR2: replace this shard by a fresh process without an outage (what a leaking provider asks for)."""
        self.recycle_asked = "a recycle request (SIGUSR2)"
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.wake)

    # --- leases -----------------------------------------------------------------

    async def renew_leases(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_renewal < self.ttl / 3:
            return
        self.last_renewal = now
        held = await self.db(leases.renew, self.shard_id, self.ttl)
        await self.db(leases.beat, self.shard_id, socket.gethostname(), os.getpid(), self.capacity, len(self.hosted))
        self.last_renewal_ok = now
        for bot_id, hosted in list(self.hosted.items()):
            if held.get(bot_id) != hosted.epoch:
                logger.warning("bot %s: lease not renewed; stopping its client", bot_id)
                await self.drop(bot_id)
        for bot_id, epoch in held.items():
            if bot_id not in self.hosted:
                # Dropped while the database was out of reach: let it go, or these renewals would keep
                # every shard (this one too) from taking the bot again, and it would never reconnect.
                logger.warning("bot %s: releasing a lease it no longer hosts", bot_id)
                await self.db(leases.release, bot_id, self.shard_id, epoch)

    async def check_lease_deadline(self) -> None:
        """Cannot renew for TTL minus 5 s: another shard may take the bots, so stop them all."""
        if self.hosted and time.monotonic() - self.last_renewal_ok > self.ttl - 5:
            logger.error("shard %s: leases could not be renewed; stopping all clients", self.shard_id)
            for bot_id in list(self.hosted):
                await self.drop(bot_id)

    def room_for(self, provider: Provider) -> int:
        """How many more bots of this provider the shard takes (a provider may have a capacity of its own)."""
        limit = provider.capacity() or self.capacity
        used = sum(1 for hosted in self.hosted.values() if hosted.provider is provider)
        return min(limit - used, self.capacity - len(self.hosted))

    async def claim_bots(self) -> bool:
        """Take this shard's share of the bots waiting for a host; True when more may be waiting."""
        kinds = [name for name, provider in self.providers.items() if self.room_for(provider) > 0]
        if not kinds or self.recycling:  # a draining shard takes nothing more
            return False
        free = self.capacity - len(self.hosted)
        ids = await self.db(leases.candidates, kinds, min(free, CLAIM_BATCH))
        if not ids:
            return False
        loads = await self.db(leases.shard_loads, self.ttl)
        loads[self.shard_id] = (self.capacity, len(self.hosted))
        for bot_id in self.placement.choose(loads, self.shard_id, ids):
            if self.shutdown or bot_id in self.hosted:
                continue
            with logs.bot(bot_id):
                await self.claim_one(bot_id)
        # The new bots are started by reconcile, which reads their rows.
        await self.reconcile()
        return len(ids) == CLAIM_BATCH

    async def claim_one(self, bot_id: uuid.UUID) -> None:
        name, phone = await self.db(leases.provider_and_phone, bot_id)
        provider = self.providers.get(name)
        if provider is None or self.room_for(provider) <= 0:
            return
        if provider.one_client_per_number and phone:
            if any(h.provider is provider and h.phone == phone for h in self.hosted.values()):
                return  # two bots of one number live in different processes
        epoch = await self.db(leases.claim, bot_id, self.shard_id, self.ttl)
        if epoch is None:
            return
        hosted = self.hosted[bot_id] = HostedBot(self, bot_id, provider, epoch, phone=phone)
        # What its last host left unanswered or half sent (a crash, a take-over).
        await self.replies.recover(hosted)

    async def drop(self, bot_id: uuid.UUID) -> None:
        """Stop a client without writing anything: the lease is not ours anymore."""
        hosted = self.hosted.pop(bot_id, None)
        if hosted is not None:
            await hosted.stop_client()

    # --- reconciliation -------------------------------------------------------------

    async def reconcile(self) -> None:
        if not self.hosted:
            return
        rows = {row["pk"]: row for row in await self.db(leases.hosted_rows, list(self.hosted))}
        for bot_id in list(self.hosted):
            hosted, row = self.hosted.get(bot_id), rows.get(bot_id)
            if hosted is None:
                continue  # ended by an event meanwhile
            with logs.bot(bot_id):
                if row is None:
                    await self.drop(bot_id)  # the bot is gone
                else:
                    await hosted.reconcile(row)

    async def start_due_retries(self) -> None:
        now = time.monotonic()
        due = [hosted for hosted in self.hosted.values() if hosted.due_to_retry(now)]
        for hosted in due:
            hosted.phase, hosted.retry_at = Phase.STARTING, None
        if due:
            await self.reconcile()

    def expire_deadlines(self) -> None:
        """The shard's deadlines: QR codes shown too long, dropped sessions that did not come back,
        started clients that said nothing."""
        now = time.monotonic()
        for hosted in self.hosted.values():
            if hosted.qr_expired(now):
                hosted.phase = Phase.STOPPING
                self.events.qr_deadline(hosted.bot_id)
            elif hosted.reconnect_overdue(now):
                hosted.reconnect_deadline = None
                self.events.reconnect_overdue(hosted.bot_id)
            elif hosted.start_overdue(now):
                hosted.start_deadline = None
                self.events.start_overdue(hosted.bot_id)

    # --- broadcasts and nudges -----------------------------------------------------------

    async def send_broadcasts(self) -> None:
        """Send what the DB threads published, in order; a bot's page hints at most every PAGE_HINT_SECONDS."""
        layer = state.shared_layer()
        last_hint: dict[str, float] = {}
        held: dict[str, dict] = {}  # group -> the hint (merged) it sends once its interval has passed

        def release(group: str) -> None:
            self.broadcasts.put_nowait((group, held.pop(group)))

        while True:
            group, message = await self.broadcasts.get()
            if layer is None:
                continue  # no other process to tell: the web follows the database
            if message["type"] == "page.changed":
                if group in held:
                    held[group].update(message)
                    continue
                wait = last_hint.get(group, -PAGE_HINT_SECONDS) + PAGE_HINT_SECONDS - time.monotonic()
                if wait > 0:
                    held[group] = dict(message)
                    self.loop.call_later(wait, release, group)
                    continue
                last_hint[group] = time.monotonic()
            try:
                await layer.group_send(group, message)
            except Exception:
                logger.warning("could not broadcast to %s", group, exc_info=True)

    async def listen_for_nudges(self) -> None:
        layer = state.shared_layer()
        if layer is None:
            return
        while True:
            try:
                channel = await layer.new_channel()
                await layer.group_add(SHARDS_GROUP, channel)
                while True:
                    await layer.receive(channel)
                    self.wake()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("nudge listener lost its connection; retrying", exc_info=True)
                await asyncio.sleep(1)

    # --- shutdown -----------------------------------------------------------------------

    async def stop_all(self) -> None:
        """Stop every client, record `disconnected` ("worker stopped"), release the leases."""
        if self.drain is not None:
            await self.drain.finish()  # a SIGTERM while draining: the move in progress ends first
        # Replies in progress stop first (no send after its client is gone); the next host resumes them.
        await self.replies.stop()
        nudged = time.monotonic()
        for hosted in list(self.hosted.values()):
            if time.monotonic() - nudged >= RELEASE_NUDGE_SECONDS:
                nudged = time.monotonic()
                await wake_shards()  # the bots released so far move now, not at the others' next poll
            # Not while an event is being handled: its write for this bot could land after "worker stopped".
            with logs.bot(hosted.bot_id):
                async with self.handling:
                    if self.hosted.get(hosted.bot_id) is not hosted:
                        continue  # an event ended it meanwhile (and released it); later ones are ignored
                    try:
                        await hosted.disconnect(last_error="worker stopped")
                    except Exception:
                        logger.exception("bot %s: clean stop failed", hosted.bot_id)
        for provider in self.providers.values():
            try:
                await asyncio.wait_for(provider.close(), STOP_TIMEOUT)
            except Exception:
                logger.warning("provider %s did not close cleanly", provider.name, exc_info=True)
        await self.cancel_tasks()
        try:
            await self.db(leases.release_all, self.shard_id)
        except Exception:
            logger.warning("could not release the leases of %s", self.shard_id, exc_info=True)
        await wake_shards()
        self.inbox.close()
        self.db_threads.executor.shutdown(wait=False)
        logger.info("shard %s stopped", self.shard_id)

    async def cancel_tasks(self) -> None:
        # Cancelled again if need be: channels_redis can swallow a cancellation (its connection
        # clean-up catches CancelledError), which left a task running and this stop waiting forever.
        pending = set(self._tasks)
        for _ in range(3):
            if not pending:
                break
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        await asyncio.gather(*(task for task in self._tasks if task.done()), return_exceptions=True)

    def request_shutdown(self, *_: Any) -> None:
        self.shutdown = True
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.wake)


def default_providers(shard: Shard) -> dict[str, Provider]:
    # Importing the neonize provider does not import neonize: that happens in open(), in a shard only.
    providers: dict[str, Provider] = {
        "neonize": NeonizeProvider(shard.db, recycle_after=settings.WHATSAPP_RECYCLE_AFTER)
    }
    if settings.WHATSAPP_SIMULATOR:
        providers["simulator"] = SimulatorProvider(shard.db, poll_interval=shard.poll_interval)
    return providers


def run_shard(shard_id: str | None, control_fd: int | None = None) -> None:
    shard = Shard(shard_id)
    shard.control_fd = control_fd
    logs.set_shard(shard.shard_id)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, shard.request_shutdown)
        loop.add_signal_handler(signal.SIGUSR2, shard.request_recycle)
        await shard.run()

    asyncio.run(main())
    code = RECYCLE_EXIT_CODE if shard.recycling else 0
    if "neonize" in sys.modules:
        # neonize leaves non-daemon threads behind, and a Go dial can block for a minute:
        # the clients are stopped and the leases released, so leave now.
        logging.shutdown()
        os._exit(code)
    sys.exit(code)
