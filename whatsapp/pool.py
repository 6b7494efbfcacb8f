"""The WhatsApp pool: a supervisor and its shards (DESIGN.md sections 2, 4, 5).

Written in the shape of healthchecks' ``sendalerts``: a shutdown flag set by
signals, a loop of small steps that reconcile toward the database, short
sleeps, and a clean stop of every client on the way out.

A shard runs one asyncio loop. WhatsApp callbacks only enqueue; the ORM runs
on a fixed pool of DB threads, so a shard's database connections are bounded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import datetime
import functools
import logging
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from django.utils import timezone

from botplatform import logs
from bots.inbox import store_inbound
from bots.replies import ReplyPipeline
from whatsapp import leases, state
from whatsapp.control import SHARDS_GROUP, nudge_shards, wake_shards
from whatsapp.models import Session, Status
from whatsapp.providers.base import Device, Inbound, Provider
from whatsapp.qr import png_data_url

logger = logging.getLogger(__name__)

MAX_FAILURES = 8
STOP_TIMEOUT = 10.0
# Inbound messages stored in one transaction at most.
MESSAGE_BATCH = 200
# Bots claimed in one pass at most: the next pass follows at once, after renewing the leases if due, and
# the bots claimed so far start meanwhile (claiming thousands in one go outlasted the lease TTL).
CLAIM_BATCH = 100
# While a stopping shard releases its bots, it tells the others this often to come and take them.
RELEASE_NUDGE_SECONDS = 1.0
# A shard that exits with this code asked to be replaced (see check_recycle): restart it at once.
RECYCLE_EXIT_CODE = 75


def backoff_delay(failures: int) -> float:
    """2 s doubling to 60 s, full jitter (DESIGN.md section 5)."""
    base, cap = settings.WHATSAPP_BACKOFF_BASE, settings.WHATSAPP_BACKOFF_CAP
    return random.uniform(0, min(cap, base * 2 ** max(0, failures - 1)))


def new_shard_id(index: int = 0) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{index}:{uuid.uuid4().hex[:8]}"


@dataclass
class Hosted:
    """A bot this shard holds the lease of, and its client."""

    bot_id: uuid.UUID
    provider: str
    epoch: int
    client: Any = None
    phase: str = "starting"  # starting | qr | connected | retrying | stopping
    qr_deadline: float | None = None
    retry_at: float | None = None
    failures: int = 0
    paired: dict = field(default_factory=dict)
    pairing_phone: str = ""
    phone: str = ""


class ShardEvents:
    """The provider ``Events`` of one shard: every callback only enqueues onto the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        self.loop, self.queue = loop, queue

    def _put(self, *item) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def qr(self, bot_id, payload, expires_in, pairing_code=""):
        self._put("qr", bot_id, payload, expires_in, pairing_code)

    def paired(self, bot_id, jid, phone, push_name):
        self._put("paired", bot_id, jid, phone, push_name)

    def connected(self, bot_id):
        self._put("connected", bot_id)

    def disconnected(self, bot_id, reason):
        self._put("disconnected", bot_id, reason)

    def logged_out(self, bot_id, reason):
        self._put("logged_out", bot_id, reason)

    def failed(self, bot_id, reason):
        self._put("failed", bot_id, reason)

    def message(self, bot_id, message: Inbound, ack=None):
        self._put("message", bot_id, message, ack)


# Database errors seen by this process's DB threads. A thread that finds the count changed since its
# last call checks its connection first: one that sat idle while the database restarted is dead, and
# would fail its next statement (and drop the work it was doing) instead of being replaced.
_db_errors = 0
_db_thread = threading.local()


def _db_call(fn, *args, **kwargs):
    global _db_errors
    if getattr(_db_thread, "errors_seen", 0) != _db_errors:
        _db_thread.errors_seen = _db_errors
        connection.health_check_done = False  # Django checks it (CONN_HEALTH_CHECKS) before the next statement
    try:
        return fn(*args, **kwargs)
    except DatabaseError:
        _db_errors += 1
        # A broken connection is replaced on the next call instead of failing forever.
        connection.close()
        raise


async def run_on(executor: concurrent.futures.Executor, fn, *args, **kwargs):
    """Run a database step on one of ``executor``'s threads, in the caller's context (its log bot id)."""
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(
        executor, context.run, functools.partial(_db_call, fn, *args, **kwargs)
    )


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
        self.poll_interval = poll_interval or (2.0 if settings.CHANNEL_LAYERS else 0.5)
        self.db_pool = concurrent.futures.ThreadPoolExecutor(db_threads, thread_name_prefix="shard-db")
        self.providers: dict[str, Provider] = providers or {}
        self.hosted: dict[uuid.UUID, Hosted] = {}
        self.shutdown = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queue: asyncio.Queue | None = None
        self.wakeup: asyncio.Event | None = None
        self.frames: asyncio.Queue | None = None
        self.last_renewal = 0.0
        self.last_renewal_ok = 0.0
        self.recycling = False
        # Bots seen waiting for a host, and since when (placement: see my_share).
        self.waiting_since: dict[uuid.UUID, float] = {}
        # Held while one event is handled, and while stop_all stops one bot: their writes never interleave.
        self.handling = asyncio.Lock()
        self.replies = ReplyPipeline(self)
        self._tasks: list[asyncio.Task] = []

    # --- plumbing ---------------------------------------------------------------

    async def db(self, fn, *args, **kwargs):
        return await run_on(self.db_pool, fn, *args, **kwargs)

    def fence(self, hosted: Hosted) -> tuple[str, int]:
        return (self.shard_id, hosted.epoch)

    def publish(self, bot_id: uuid.UUID, frame: dict) -> None:
        """After commit, from a DB thread: hand the frame to the loop's publisher, in order."""
        if self.loop is not None and self.frames is not None:
            self.loop.call_soon_threadsafe(self.frames.put_nowait, (bot_id, frame))

    async def record(self, hosted: Hosted, event: str, status: Status, **changes) -> bool:
        """Write a status through the one write path, fenced by this shard's lease."""
        try:
            await self.db(
                state.record, hosted.bot_id, event, status, fence=self.fence(hosted), publish=self.publish, **changes
            )
            return True
        except (state.Fenced, Session.DoesNotExist):
            logger.warning("bot %s: lease lost, dropping it", hosted.bot_id)
            await self.drop(hosted.bot_id)
            return False

    def wake(self) -> None:
        if self.wakeup is not None:
            self.wakeup.set()
        for provider in self.providers.values():
            wake = getattr(provider, "wake", None)
            if wake is not None:
                wake()

    async def setup(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue = asyncio.Queue()
        self.frames = asyncio.Queue()
        self.wakeup = asyncio.Event()
        self.events = ShardEvents(self.loop, self.queue)
        if not self.providers:
            self.providers = default_providers(self)
        for provider in self.providers.values():
            await provider.open()
        await self.replies.start()
        self._tasks = [
            asyncio.create_task(self.handle_events(), name="events"),
            asyncio.create_task(self.publish_frames(), name="frames"),
            asyncio.create_task(self.listen_for_nudges(), name="nudges"),
        ]

    async def run(self) -> None:
        await self.setup()
        logger.info("shard %s started (capacity %d)", self.shard_id, self.capacity)
        try:
            while not self.shutdown:
                await self.step()
                try:
                    await asyncio.wait_for(self.wakeup.wait(), self.poll_interval)
                except TimeoutError:
                    pass
                self.wakeup.clear()
        finally:
            await self.stop_all()

    async def step(self) -> None:
        """One pass of reconciliation; each part is safe to repeat."""
        try:
            await self.renew_leases()
            await self.reconcile()
            await self.claim_bots()
            await self.start_due_retries()
            self.expire_qr_codes_soon()
            self.check_recycle()
            await self.replies.scan()
        except DatabaseError:
            logger.exception("shard %s: database error; retrying", self.shard_id)
            await self.check_lease_deadline()

    def check_recycle(self) -> None:
        """A provider that leaks per connect attempt asks for a fresh process: drain and exit."""
        for provider in self.providers.values():
            should_recycle = getattr(provider, "should_recycle", None)
            if should_recycle is not None and should_recycle() and not self.shutdown:
                logger.warning("shard %s: recycling after %s ended connect attempts", self.shard_id, provider.leaked)
                self.recycling = True
                self.shutdown = True

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

    def room_for(self, provider: str) -> int:
        """How many more bots of this provider the shard takes (neonize has a capacity of its own)."""
        limit = settings.WHATSAPP_NEONIZE_CAPACITY if provider == "neonize" else self.capacity
        used = sum(1 for hosted in self.hosted.values() if hosted.provider == provider)
        return min(limit - used, self.capacity - len(self.hosted))

    async def my_share(self, ids: list[uuid.UUID]) -> list[uuid.UUID]:
        """Placement by capacity: of the bots waiting, the part that brings this shard to its fair share.

        Each live shard's fair share of all bots (held and waiting) is in proportion to
        its capacity. Shards placing at the same moment compute the same shares over
        the same waiting list and take disjoint slices of it, in the order of their ids.
        """
        loads = await self.db(leases.shard_loads, self.ttl)
        loads[self.shard_id] = (self.capacity, len(self.hosted))
        if len(loads) == 1:
            return ids
        capacity = sum(c for c, _ in loads.values())
        bots = sum(h for _, h in loads.values()) + len(ids)
        fair = {shard: max(0, math.ceil(bots * c / capacity) - h) for shard, (c, h) in loads.items()}
        order = sorted(loads)
        start = sum(fair[shard] for shard in order[: order.index(self.shard_id)])
        mine = ids[start : start + fair[self.shard_id]]
        # A bot this shard has seen waiting for a whole lease TTL goes to whoever has room: the shard
        # whose share it is may have no room for its provider (neonize has a capacity of its own).
        now = time.monotonic()
        self.waiting_since = {bot: self.waiting_since.get(bot, now) for bot in ids}
        late = [bot for bot in ids if now - self.waiting_since[bot] >= self.ttl and bot not in mine]
        return mine + late

    async def claim_bots(self) -> None:
        kinds = [name for name in self.providers if self.room_for(name) > 0]
        if not kinds:
            return
        free = self.capacity - len(self.hosted)
        ids = await self.db(leases.candidates, kinds, min(free, CLAIM_BATCH))
        if len(ids) == CLAIM_BATCH:
            self.wakeup.set()  # more may be waiting: another pass right after this one
        if ids:
            ids = await self.my_share(ids)
        for bot_id in ids:
            if self.shutdown or bot_id in self.hosted:
                continue
            with logs.bot(bot_id):
                await self.claim_one(bot_id)
        # The new bots are started by reconcile on its next pass (it reads their rows).
        if ids:
            await self.reconcile()

    async def claim_one(self, bot_id: uuid.UUID) -> None:
        provider = await self.db(leases.provider_of, bot_id)
        if self.room_for(provider) <= 0:
            return
        phone = await self.db(leases.phone_of, bot_id) if provider == "neonize" else ""
        if phone and any(h.provider == "neonize" and h.phone == phone for h in self.hosted.values()):
            # neonize keys its clients by phone number: two bots of one number live apart.
            return
        epoch = await self.db(leases.claim, bot_id, self.shard_id, self.ttl)
        if epoch is None:
            return
        self.hosted[bot_id] = Hosted(bot_id=bot_id, provider=provider, epoch=epoch, phone=phone)
        # What its last host left unanswered or half sent (a crash, a take-over).
        await self.replies.recover(self.hosted[bot_id])

    async def drop(self, bot_id: uuid.UUID) -> None:
        """Stop a client without writing anything: the lease is not ours anymore."""
        hosted = self.hosted.pop(bot_id, None)
        if hosted is not None and hosted.client is not None:
            await self.stop_client(hosted)

    async def release(self, hosted: Hosted) -> None:
        self.hosted.pop(hosted.bot_id, None)
        await self.db(leases.release, hosted.bot_id, self.shard_id, hosted.epoch)

    # --- reconciliation -------------------------------------------------------------

    async def reconcile(self) -> None:
        if not self.hosted:
            return
        rows = await self.db(leases.hosted_rows, list(self.hosted))
        seen = set()
        for row in rows:
            bot_id = row["pk"]
            seen.add(bot_id)
            hosted = self.hosted.get(bot_id)
            if hosted is None:
                continue
            with logs.bot(bot_id):
                await self.reconcile_one(hosted, row)
        for bot_id in set(self.hosted) - seen:
            await self.drop(bot_id)

    async def reconcile_one(self, hosted: Hosted, row: dict) -> None:
        """Bring one hosted bot toward what its row asks for."""
        bot_id = hosted.bot_id
        if (row["lease_owner"], row["lease_epoch"]) != self.fence(hosted):
            await self.drop(bot_id)
        elif row["logout_requested"] or row["bot__deleted_at"] is not None:
            await self.log_out(hosted, "logout requested")
        elif not row["desired_connected"]:
            await self.disconnect(hosted)
        elif hosted.phase == "qr" and row["pairing_phone"] != hosted.pairing_phone:
            # Pairing by phone was asked for while a QR showed: start over with a code.
            await self.stop_client(hosted)
            hosted.phase, hosted.qr_deadline = "starting", None
            await self.start_client(hosted, row)
        elif hosted.client is None and hosted.phase == "starting":
            hosted.failures = row["failures"]
            await self.start_client(hosted, row)

    async def start_client(self, hosted: Hosted, row: dict) -> None:
        provider = self.providers[hosted.provider]
        device = Device(bot_id=hosted.bot_id, jid=row["jid"], pairing_phone=row["pairing_phone"])
        hosted.client = provider.client(device, self.events)
        hosted.phase = "starting"
        hosted.pairing_phone = row["pairing_phone"]
        if row["status"] != Status.CONNECTING and not await self.record(
            hosted, "connecting", Status.CONNECTING, last_error="", next_retry_at=None
        ):
            return
        try:
            await hosted.client.start()
        except Exception as exc:
            logger.warning("bot %s: connect failed: %s", hosted.bot_id, exc)
            await self.connection_lost(hosted, f"connect failed: {exc}")

    async def stop_client(self, hosted: Hosted) -> None:
        client, hosted.client = hosted.client, None
        if client is None:
            return
        try:
            await asyncio.wait_for(client.stop(), STOP_TIMEOUT)
        except Exception:
            logger.warning("bot %s: client did not stop cleanly", hosted.bot_id, exc_info=True)

    async def disconnect(self, hosted: Hosted, *, last_error: str = "") -> None:
        await self.stop_client(hosted)
        await self.record(hosted, "disconnected", Status.DISCONNECTED, last_error=last_error)
        await self.release(hosted)

    async def log_out(self, hosted: Hosted, reason: str) -> None:
        client = hosted.client
        if client is None:
            row = await self.db(leases.hosted_rows, [hosted.bot_id])
            client = self.providers[hosted.provider].client(
                Device(bot_id=hosted.bot_id, jid=row[0]["jid"] if row else ""), self.events
            )
        hosted.client = None
        try:
            await asyncio.wait_for(client.logout(), STOP_TIMEOUT)
        except Exception:
            logger.warning("bot %s: logout did not complete", hosted.bot_id, exc_info=True)
        await self.end_session(hosted, "logged_out", Status.LOGGED_OUT, reason, clear_device=True)

    async def end_session(
        self, hosted: Hosted, event: str, status: Status, reason: str, *, clear_device: bool = False
    ) -> None:
        """A terminal state: desired off, client gone, lease released."""
        # Out of the hosted bots first: a reconcile pass that reads the row this writes (desired off)
        # must not find the bot still hosted and record a `disconnected` over the terminal state.
        self.hosted.pop(hosted.bot_id, None)
        await self.stop_client(hosted)
        changes: dict = {"desired_connected": False, "logout_requested": False, "last_error": reason}
        if clear_device:
            changes.update(jid="", phone="", push_name="")
        if status == Status.FAILED:
            changes["failures"] = hosted.failures
        await self.record(hosted, event, status, detail=reason, **changes)
        await self.release(hosted)

    async def connection_lost(self, hosted: Hosted, reason: str) -> None:
        """A dial error or a drop: back off and retry, or give up after MAX_FAILURES."""
        await self.stop_client(hosted)
        hosted.failures += 1
        if hosted.failures >= MAX_FAILURES:
            await self.end_session(
                hosted, "failed", Status.FAILED, f"gave up after {hosted.failures} failures: {reason}"
            )
            return
        delay = backoff_delay(hosted.failures)
        # Not due until `connecting` is written: a retry started before would read the old
        # status and write `connecting` a second time.
        hosted.phase, hosted.retry_at = "retrying", None
        await self.record(
            hosted,
            "connecting",
            Status.CONNECTING,
            detail=reason,
            last_error=reason,
            failures=hosted.failures,
            next_retry_at=timezone.now() + datetime.timedelta(seconds=delay),
        )
        hosted.retry_at = time.monotonic() + delay

    async def start_due_retries(self) -> None:
        now = time.monotonic()
        due = [
            h for h in self.hosted.values() if h.phase == "retrying" and h.retry_at is not None and h.retry_at <= now
        ]
        for hosted in due:
            hosted.phase, hosted.retry_at = "starting", None
        if due:
            await self.reconcile()

    def expire_qr_codes_soon(self) -> None:
        now = time.monotonic()
        for hosted in list(self.hosted.values()):
            if hosted.phase == "qr" and hosted.qr_deadline is not None and hosted.qr_deadline <= now:
                hosted.phase = "stopping"
                self.queue.put_nowait(("qr_deadline", hosted.bot_id))

    # --- provider events ---------------------------------------------------------

    async def handle_events(self) -> None:
        held = None
        while True:
            event, held = held or await self.queue.get(), None
            kind, bot_id, *args = event
            if kind == "message":
                # Messages that arrived together are stored together, in order, in one transaction.
                batch = [event]
                while len(batch) < MESSAGE_BATCH and not self.queue.empty():
                    event = self.queue.get_nowait()
                    if event[0] != "message":
                        held = event
                        break
                    batch.append(event)
                async with self.handling:
                    try:
                        await self.on_messages([(bot_id, message, ack) for _, bot_id, message, ack in batch])
                    except Exception:
                        logger.exception("storing %d inbound messages failed", len(batch))
                continue
            async with self.handling:
                hosted = self.hosted.get(bot_id)
                with logs.bot(bot_id):
                    try:
                        if hosted is not None:
                            await getattr(self, f"on_{kind}")(hosted, *args)
                    except Exception:
                        logger.exception("bot %s: handling %s failed", bot_id, kind)

    async def on_qr(self, hosted: Hosted, payload: str, expires_in: float, pairing_code: str) -> None:
        if hosted.phase not in ("starting", "qr"):
            return
        now = timezone.now()
        if hosted.phase == "starting":
            hosted.qr_deadline = time.monotonic() + settings.WHATSAPP_QR_TIMEOUT
        hosted.phase = "qr"
        image = await self.db(png_data_url, payload)
        deadline = hosted.qr_deadline - time.monotonic()
        expires_at = now + datetime.timedelta(seconds=min(expires_in, max(0.0, deadline)))
        await self.record(
            hosted, "qr", Status.QR_REQUIRED, qr_code=image, qr_expires_at=expires_at, pairing_code=pairing_code
        )

    async def on_qr_deadline(self, hosted: Hosted) -> None:
        await self.stop_client(hosted)
        # Not a failure: the operator simply did not scan. Desired goes off until they retry.
        await self.record(hosted, "qr_timeout", Status.QR_TIMEOUT, desired_connected=False, last_error="")
        await self.release(hosted)

    async def on_paired(self, hosted: Hosted, jid: str, phone: str, push_name: str) -> None:
        if hosted.provider == "neonize" and await self.db(leases.phone_taken, hosted.bot_id, phone):
            # Refused: neonize keys clients by number, so one number serves one bot.
            client, hosted.client = hosted.client, None
            if client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.logout(), STOP_TIMEOUT)
            reason = f"the number {phone} is already linked to another bot; unlink it there first"
            await self.end_session(hosted, "failed", Status.FAILED, reason, clear_device=True)
            return
        hosted.phone = phone
        hosted.paired = {"jid": jid, "phone": phone, "push_name": push_name}

    async def on_connected(self, hosted: Hosted) -> None:
        hosted.phase, hosted.failures, hosted.qr_deadline = "connected", 0, None
        await self.record(
            hosted,
            "connected",
            Status.CONNECTED,
            failures=0,
            next_retry_at=None,
            last_error="",
            pairing_phone="",
            **hosted.paired,
        )
        hosted.paired = {}

    async def on_disconnected(self, hosted: Hosted, reason: str) -> None:
        if hosted.phase == "qr" and reason == "qr_timeout":
            await self.on_qr_deadline(hosted)
        elif hosted.phase in ("connected", "starting", "qr"):
            await self.connection_lost(hosted, reason)

    async def on_logged_out(self, hosted: Hosted, reason: str) -> None:
        await self.end_session(hosted, "logged_out", Status.LOGGED_OUT, reason, clear_device=True)

    async def on_failed(self, hosted: Hosted, reason: str) -> None:
        await self.end_session(hosted, "failed", Status.FAILED, reason)

    async def on_messages(self, items: list[tuple[uuid.UUID, Inbound, Any]]) -> None:
        """Store the messages of hosted bots, acknowledged in the same transaction, then reply to them."""
        items = [item for item in items if item[0] in self.hosted]
        if not items:
            return
        acked: dict[Provider, list[tuple[uuid.UUID, Any]]] = {}
        for bot_id, _, ack in items:
            if ack is not None:
                acked.setdefault(self.providers[self.hosted[bot_id].provider], []).append((bot_id, ack))
        commits = [
            provider.acknowledger([ack for _, ack in acks])
            for provider, acks in acked.items()
            if hasattr(provider, "acknowledger")
        ]
        try:
            stored = await self.db(store_inbound, [(bot_id, message) for bot_id, message, _ in items], commits)
        finally:
            # Stored, or given up on: a provider may deliver again what was not marked delivered.
            for provider, acks in acked.items():
                for bot_id, ack in acks:
                    if hasattr(provider, "delivered"):
                        provider.delivered(bot_id, ack)
        for message in stored:
            self.replies.received(message)

    # --- live events ------------------------------------------------------------------

    async def publish_frames(self) -> None:
        layer = get_channel_layer()
        while True:
            bot_id, frame = await self.frames.get()
            if layer is None:
                continue
            try:
                await layer.group_send(state.group_name(bot_id), {"type": "session.frame", "frame": frame})
            except Exception:
                logger.warning("could not publish a frame for %s", bot_id, exc_info=True)

    async def listen_for_nudges(self) -> None:
        layer = get_channel_layer()
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
                        await self.stop_client(hosted)
                        await self.record(hosted, "disconnected", Status.DISCONNECTED, last_error="worker stopped")
                        await self.release(hosted)
                    except Exception:
                        logger.exception("bot %s: clean stop failed", hosted.bot_id)
        for provider in self.providers.values():
            try:
                await asyncio.wait_for(provider.close(), STOP_TIMEOUT)
            except Exception:
                logger.warning("provider %s did not close cleanly", provider.name, exc_info=True)
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
        try:
            await self.db(leases.release_all, self.shard_id)
        except Exception:
            logger.warning("could not release the leases of %s", self.shard_id, exc_info=True)
        await wake_shards()
        self.db_pool.shutdown(wait=False)
        logger.info("shard %s stopped", self.shard_id)

    def request_shutdown(self, *_: Any) -> None:
        self.shutdown = True
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.wake)


def default_providers(shard: Shard) -> dict[str, Provider]:
    # Importing this module does not import neonize: that happens in open(), in the shard only.
    from whatsapp.providers.neonize import NeonizeProvider
    from whatsapp.providers.simulator import SimulatorProvider

    providers: dict[str, Provider] = {
        "neonize": NeonizeProvider(shard.db, recycle_after=settings.WHATSAPP_RECYCLE_AFTER)
    }
    if settings.WHATSAPP_SIMULATOR:
        providers["simulator"] = SimulatorProvider(shard.db, poll_interval=shard.poll_interval)
    return providers


def run_shard(shard_id: str | None) -> None:
    shard = Shard(shard_id)
    logs.set_shard(shard.shard_id)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, shard.request_shutdown)
        await shard.run()

    asyncio.run(main())
    code = RECYCLE_EXIT_CODE if shard.recycling else 0
    if "neonize" in sys.modules:
        # neonize leaves non-daemon threads behind, and a Go dial can block for a minute:
        # the clients are stopped and the leases released, so leave now.
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


# --- The supervisor -----------------------------------------------------------------


@dataclass
class Child:
    index: int
    process: subprocess.Popen | None = None
    shard_id: str = ""
    started_at: float = 0.0
    crashes: int = 0
    restart_at: float = 0.0


class Supervisor:
    """Starts N shard processes, restarts the ones that die, stops them all on a signal."""

    def __init__(self, shards: int, *, grace: float = 30.0, extra_args: list[str] | None = None) -> None:
        self.children = [Child(index) for index in range(shards)]
        self.grace = grace
        self.extra_args = extra_args or []
        self.shutdown = False

    def command(self, child: Child) -> list[str]:
        manage = Path(settings.BASE_DIR) / "manage.py"
        return [
            sys.executable,
            str(manage),
            "run_whatsapp",
            "--shard",
            str(child.index),
            "--shard-id",
            child.shard_id,
            *self.extra_args,
        ]

    def start(self, child: Child) -> None:
        child.shard_id = new_shard_id(child.index)
        child.process = subprocess.Popen(self.command(child))
        child.started_at = time.monotonic()
        logger.info(
            "supervisor: shard %d started as pid %d (%s)",
            child.index,
            child.process.pid,
            child.shard_id,
            extra={"shard": child.shard_id},
        )
        self.announce(child)

    def announce(self, child: Child) -> None:
        """Advertise a starting shard's room before it runs, so shards started together share the bots.

        Placement counts the room of the shards it sees beating; without this the
        first of N shards started at once saw none of its siblings and took every bot.
        """
        close_old_connections()
        try:
            leases.beat(
                child.shard_id, socket.gethostname(), child.process.pid, settings.WHATSAPP_SHARD_CAPACITY, hosted=0
            )
        except DatabaseError:
            logger.warning(
                "supervisor: could not announce %s; it announces itself",
                child.shard_id,
                exc_info=True,
                extra={"shard": child.shard_id},
            )
            connection.close()

    def reap(self, child: Child) -> None:
        """A shard died: free its bots at once so they move without waiting for lease expiry."""
        code = child.process.returncode
        logger.error(
            "supervisor: shard %d (pid %d) exited with %s",
            child.index,
            child.process.pid,
            code,
            extra={"shard": child.shard_id},
        )
        self.free(child)
        lived = time.monotonic() - child.started_at
        if code == RECYCLE_EXIT_CODE:
            child.crashes, child.restart_at, child.process = 0, 0.0, None
            return
        child.crashes = 0 if lived > 60 else child.crashes + 1
        child.restart_at = time.monotonic() + min(30.0, 0.5 * 2**child.crashes) if child.crashes else 0.0
        child.process = None

    def step(self) -> None:
        for child in self.children:
            if child.process is not None and child.process.poll() is not None:
                self.reap(child)
            if child.process is None and not self.shutdown and time.monotonic() >= child.restart_at:
                self.start(child)

    def run(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.request_shutdown)
        while not self.shutdown:
            self.step()
            time.sleep(0.2)
        self.stop_children()

    def request_shutdown(self, signum: int, _frame: Any) -> None:
        self.shutdown = True
        self.signal = signum

    def stop_children(self) -> None:
        running = [c for c in self.children if c.process is not None and c.process.poll() is None]
        for child in running:
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for child in running:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error(
                    "supervisor: shard %d did not stop in %.0f s; killing it",
                    child.index,
                    self.grace,
                    extra={"shard": child.shard_id},
                )
                child.process.kill()
                child.process.wait()
        for child in self.children:
            if child.shard_id:
                self.free(child)
        logger.info("supervisor: stopped")

    def free(self, child: Child) -> None:
        """Release a stopped or dead shard's leases at once, so its bots move without waiting for expiry."""
        close_old_connections()
        try:
            held = leases.release_all(child.shard_id)
            if held:
                nudge_shards()  # the others take them now rather than at their next poll
                logger.info(
                    "supervisor: released %d bots of %s", len(held), child.shard_id, extra={"shard": child.shard_id}
                )
        except DatabaseError:
            logger.exception(
                "supervisor: could not release the leases of %s", child.shard_id, extra={"shard": child.shard_id}
            )
            connection.close()
