"""One hosted bot's WhatsApp connection: what its client reports, and what the shard writes for it.

A provider's client reports from its own threads through :class:`ShardEvents`,
which only enqueues (docs/invariants.md, 5). :func:`pump` takes the events off
the queue on the shard's loop, one at a time, and hands each to the
:class:`HostedBot` it is about; messages that arrived together go to the shard
to be stored together. A hosted bot moves through the :class:`Phase` states and
writes every status through ``whatsapp.state.record``, fenced by its lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import enum
import itertools
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.conf import settings
from django.utils import timezone

from botplatform import logs
from bots.control import phone_in_use
from pool import dials, leases
from pool.journal import Journal
from whatsapp import state
from whatsapp.models import Session, Status
from whatsapp.providers.base import Client, Device, Inbound, Provider

logger = logging.getLogger(__name__)

MAX_FAILURES = 8
STOP_TIMEOUT = 10.0
# How long a dropped session may take to come back by itself before its client is replaced:
# whatsmeow retries at 0, 2, 4, 6... s, so 90 s is about ten attempts.
RECONNECT_WATCHDOG = 90.0
# How long a started client may say nothing (no QR, no Connected, no error) before the attempt fails:
# whatsmeow gives Python no event for an outdated client or a pair error during the QR loop.
START_WATCHDOG = 90.0
# From a scan to its Connected (whatsmeow reconnects once in between): a few seconds on a real phone.
PAIRED_CONNECT_SECONDS = 30.0
# Inbound messages stored in one transaction at most.
MESSAGE_BATCH = 200


# Numbers for the clients a shard makes, never reused in its process.
CLIENT_NUMBERS = itertools.count(1)


def backoff_delay(failures: int) -> float:
    """2 s doubling to 60 s, full jitter (docs/architecture.md, connection lifecycle)."""
    base, cap = settings.WHATSAPP_BACKOFF_BASE, settings.WHATSAPP_BACKOFF_CAP
    return random.uniform(0, min(cap, base * 2 ** max(0, failures - 1)))


class Phase(enum.Enum):
    STARTING = "starting"  # claimed, or due to retry: the next reconcile pass starts its client
    QR = "qr"  # showing QR codes (and a pairing code, if asked) until a scan or the deadline
    CONNECTED = "connected"
    RETRYING = "retrying"  # the connection was lost or never made: waiting out the backoff
    RECONNECTING = "reconnecting"  # dropped, and the library reconnects by itself, until a watchdog
    STOPPING = "stopping"  # the QR deadline passed: its stop is queued


class Host(Protocol):
    """What a hosted bot uses of the shard that hosts it."""

    shard_id: str
    hosted: dict[uuid.UUID, HostedBot]
    events: ShardEvents

    async def db(self, fn, *args, **kwargs) -> Any: ...

    async def drop(self, bot_id: uuid.UUID) -> None: ...


class ShardEvents:
    """The provider ``Events`` of one shard: every callback, from any thread, only enqueues onto its loop.

    Each client gets its own (:meth:`bound`): its events carry its number, and the pump drops those
    of a client that is no longer its bot's (a late ``Connected`` from a stopped client would show
    the bot connected with no client). Number 0: the shard's own, or a test's, always heard.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, journal: Journal | None = None, client_no: int = 0
    ) -> None:
        self.loop, self.queue, self.journal, self.client_no = loop, queue, journal, client_no

    def bound(self, client_no: int) -> ShardEvents:
        return ShardEvents(self.loop, self.queue, self.journal, client_no)

    def _put(self, kind: str, bot_id, *args) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, bot_id, self.client_no, *args))

    def qr(self, bot_id, payload, expires_in, pairing_code=""):
        self._put("qr", bot_id, payload, expires_in, pairing_code)

    def paired(self, bot_id, jid, phone, push_name):
        self._put("paired", bot_id, jid, phone, push_name)

    def connected(self, bot_id, lid=""):
        self._put("connected", bot_id, lid)

    def disconnected(self, bot_id, reason):
        self._put("disconnected", bot_id, reason)

    def reconnecting(self, bot_id, reason):
        self._put("reconnecting", bot_id, reason)

    def logged_out(self, bot_id, reason):
        self._put("logged_out", bot_id, reason)

    def failed(self, bot_id, reason):
        self._put("failed", bot_id, reason)

    def message(self, bot_id, message: Inbound):
        # On disk before this returns, when WhatsApp counts it delivered (pool/journal.py).
        seq = self.journal.append(bot_id, message) if self.journal is not None else 0
        self._put("message", bot_id, message, seq)

    def qr_deadline(self, bot_id):
        """Not a provider's: the shard's own, when a QR was shown too long."""
        self._put("qr_deadline", bot_id)

    def reconnect_overdue(self, bot_id):
        """The shard's own: a dropped session did not come back within RECONNECT_WATCHDOG."""
        self._put("reconnect_overdue", bot_id)

    def start_overdue(self, bot_id):
        """The shard's own: a started client said nothing within START_WATCHDOG."""
        self._put("start_overdue", bot_id)


async def pump(shard, queue: asyncio.Queue, handling: asyncio.Lock) -> None:
    """Take events off the queue, in order, for as long as the shard runs.

    Each is handled under ``handling``, which the shard's stop also takes: their
    writes for one bot never interleave.
    """
    held = None
    while True:
        event, held = held or await queue.get(), None
        kind, bot_id, client_no, *args = event
        if kind == "message":
            # Messages that arrived together are stored together, in order, in one transaction.
            batch = [event]
            while len(batch) < MESSAGE_BATCH and not queue.empty():
                event = queue.get_nowait()
                if event[0] != "message":
                    held = event
                    break
                batch.append(event)
            # Stored whichever client they came from: WhatsApp delivered them once.
            await shard.inbox.keep([(bot_id, message, seq) for _, bot_id, _, message, seq in batch])
            continue
        async with handling:
            hosted = shard.hosted.get(bot_id)
            if hosted is None:
                continue  # ended or dropped meanwhile: what its client says now is of no use
            if client_no and client_no != hosted.client_no:
                logger.info("bot %s: %s from a client it no longer has, ignored", bot_id, kind)
                continue
            with logs.bot(bot_id):
                try:
                    await getattr(hosted, f"on_{kind}")(*args)
                except Exception:
                    logger.exception("bot %s: handling %s failed", bot_id, kind)


@dataclass
class HostedBot:
    """A bot whose lease this shard holds, and its client."""

    host: Host = field(repr=False)
    bot_id: uuid.UUID
    provider: Provider
    epoch: int
    phone: str = ""
    client: Client | None = None
    phase: Phase = Phase.STARTING
    qr_deadline: float | None = None
    reconnect_deadline: float | None = None
    start_deadline: float | None = None
    client_no: int = 0  # which of the shard's clients is this bot's (ShardEvents.bound)
    overdue_reason: str = ""
    held_for_budget: bool = False
    retry_at: float | None = None
    failures: int = 0
    paired: dict = field(default_factory=dict)
    pairing_phone: str = ""

    @property
    def fence(self) -> tuple[str, int]:
        return (self.host.shard_id, self.epoch)

    async def write(self, fn, *args, **kwargs) -> bool:
        """A status write through ``whatsapp.state``, fenced by this shard's lease; refused, the bot is dropped."""
        try:
            await self.host.db(fn, self.bot_id, *args, fence=self.fence, **kwargs)
            return True
        except (state.Fenced, Session.DoesNotExist):
            logger.warning("bot %s: lease lost, dropping it", self.bot_id)
            await self.host.drop(self.bot_id)
            return False

    async def record(self, event: str, status: Status, **changes) -> bool:
        return await self.write(state.record, event, status, **changes)

    async def release(self) -> None:
        self.host.hosted.pop(self.bot_id, None)
        await self.host.db(leases.release, self.bot_id, self.host.shard_id, self.epoch)

    # --- reconciliation: toward what the session row asks for ---

    async def reconcile(self, row: dict) -> None:
        if (row["lease_owner"], row["lease_epoch"]) != self.fence:
            await self.host.drop(self.bot_id)
        elif row["logout_requested"] or row["bot__deleted_at"] is not None:
            await self.log_out("logout requested", row["jid"])
        elif not row["desired_connected"]:
            await self.disconnect()
        elif self.phase is Phase.QR and row["pairing_phone"] != self.pairing_phone:
            # Pairing by phone was asked for while a QR showed: start over with a code.
            await self.stop_client()
            self.phase, self.qr_deadline = Phase.STARTING, None
            await self.start_client(row)
        elif self.client is None and self.phase is Phase.STARTING:
            self.failures = row["failures"]
            await self.start_client(row)

    async def start_client(self, row: dict) -> None:
        proxy, held = "", self.held_for_budget
        if self.provider.name in dials.COUNTED:
            dialling = await self.host.db(dials.take_dial, self.bot_id)
            if dialling.wait:
                # Over its owner's dial budget: no dial now, and no failure either.
                self.held_for_budget = True
                await self.retry_later(dialling.wait, dials.OVER_BUDGET)
                return
            proxy, self.held_for_budget = dialling.proxy, False
        device = Device(bot_id=self.bot_id, jid=row["jid"], pairing_phone=row["pairing_phone"], proxy=proxy)
        self.client_no = next(CLIENT_NUMBERS)
        self.client = self.provider.client(device, self.host.events.bound(self.client_no))
        self.phase = Phase.STARTING
        self.pairing_phone = row["pairing_phone"]
        if (row["status"] != Status.CONNECTING or held) and not await self.record(
            "connecting", Status.CONNECTING, last_error="", next_retry_at=None
        ):
            return
        self.start_deadline = time.monotonic() + START_WATCHDOG
        try:
            await self.client.start()
        except Exception as exc:
            logger.warning("bot %s: connect failed: %s", self.bot_id, exc)
            await self.connection_lost(f"connect failed: {exc}")

    async def stop_client(self) -> None:
        # From now on nothing its client says is heard: it is no longer the bot's.
        client, self.client, self.client_no = self.client, None, 0
        if client is None:
            return
        try:
            await asyncio.wait_for(client.stop(), STOP_TIMEOUT)
        except Exception:
            logger.warning("bot %s: client did not stop cleanly", self.bot_id, exc_info=True)

    async def disconnect(self, *, last_error: str = "") -> None:
        await self.stop_client()
        await self.record("disconnected", Status.DISCONNECTED, last_error=last_error)
        await self.release()

    async def log_out(self, reason: str, jid: str) -> None:
        client, self.client = self.client, None
        if client is None:
            client = self.provider.client(Device(bot_id=self.bot_id, jid=jid), self.host.events)
        try:
            await asyncio.wait_for(client.logout(), STOP_TIMEOUT)
        except Exception:
            logger.warning("bot %s: logout did not complete", self.bot_id, exc_info=True)
        await self.end_session("logged_out", Status.LOGGED_OUT, reason, clear_device=True)

    async def end_session(self, event: str, status: Status, reason: str, *, clear_device: bool = False) -> None:
        """A terminal state: desired off, client gone, lease released."""
        # Out of the hosted bots first: a reconcile pass that reads the row this writes (desired off)
        # must not find the bot still hosted and record a `disconnected` over the terminal state.
        self.host.hosted.pop(self.bot_id, None)
        await self.stop_client()
        changes: dict = {"desired_connected": False, "logout_requested": False, "last_error": reason}
        if clear_device:
            changes.update(jid="", phone="", push_name="", lid="")
        if status == Status.FAILED:
            changes["failures"] = self.failures
        await self.record(event, status, detail=reason, **changes)
        await self.release()

    async def connection_lost(self, reason: str) -> None:
        """A dial error or a drop: back off and retry, or give up after MAX_FAILURES."""
        await self.stop_client()
        self.failures += 1
        if self.failures >= MAX_FAILURES:
            await self.end_session("failed", Status.FAILED, f"gave up after {self.failures} failures: {reason}")
            return
        await self.retry_later(backoff_delay(self.failures), reason, failures=self.failures)

    async def retry_later(self, delay: float, reason: str, **changes) -> None:
        """`connecting`, saying why and when the next attempt starts; the shard starts it then."""
        # Not due until `connecting` is written: a retry started before would read the old
        # status and write `connecting` a second time.
        self.phase, self.retry_at = Phase.RETRYING, None
        await self.record(
            "connecting",
            Status.CONNECTING,
            detail=reason,
            last_error=reason,
            next_retry_at=timezone.now() + datetime.timedelta(seconds=delay),
            **changes,
        )
        self.retry_at = time.monotonic() + delay

    def due_to_retry(self, now: float) -> bool:
        return self.phase is Phase.RETRYING and self.retry_at is not None and self.retry_at <= now

    def qr_expired(self, now: float) -> bool:
        return self.phase is Phase.QR and self.qr_deadline is not None and self.qr_deadline <= now

    def reconnect_overdue(self, now: float) -> bool:
        return (
            self.phase is Phase.RECONNECTING and self.reconnect_deadline is not None and self.reconnect_deadline <= now
        )

    def start_overdue(self, now: float) -> bool:
        started = self.phase is Phase.STARTING and self.client is not None
        return started and self.start_deadline is not None and self.start_deadline <= now

    # --- what its client reports (through the pump) ---

    async def on_qr(self, payload: str, expires_in: float, pairing_code: str) -> None:
        if self.phase not in (Phase.STARTING, Phase.QR):
            return
        if self.phase is Phase.STARTING:
            self.qr_deadline = time.monotonic() + settings.WHATSAPP_QR_TIMEOUT
        self.phase = Phase.QR
        shown_for = min(expires_in, max(0.0, self.qr_deadline - time.monotonic()))
        expires_at = timezone.now() + datetime.timedelta(seconds=shown_for)
        await self.write(state.record_qr, payload, expires_at=expires_at, pairing_code=pairing_code)

    async def on_qr_deadline(self) -> None:
        await self.stop_client()
        # Not a failure: the operator simply did not scan. Desired goes off until they retry.
        await self.record("qr_timeout", Status.QR_TIMEOUT, desired_connected=False, last_error="")
        await self.release()

    async def on_paired(self, jid: str, phone: str, push_name: str) -> None:
        if self.provider.one_client_per_number and await self.host.db(phone_in_use, self.bot_id, phone):
            # Refused: the library keys clients by number, so one number serves one bot.
            client, self.client = self.client, None
            if client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.logout(), STOP_TIMEOUT)
            reason = f"the number {phone} is already linked to another bot; unlink it there first"
            await self.end_session("failed", Status.FAILED, reason, clear_device=True)
            return
        self.phone = phone
        self.paired = {"jid": jid, "phone": phone, "push_name": push_name}
        if not await self.write(state.store_device, **self.paired):
            return
        # The scan is done: no QR deadline now. whatsmeow reconnects (stream error 515) and then
        # says Connected; if it does not within PAIRED_CONNECT_SECONDS, the stored device is resumed.
        self.qr_deadline = None
        self.phase = Phase.RECONNECTING
        self.reconnect_deadline = time.monotonic() + PAIRED_CONNECT_SECONDS
        self.overdue_reason = f"paired, but not connected within {PAIRED_CONNECT_SECONDS:.0f} s"

    async def on_connected(self, lid: str = "") -> None:
        self.phase, self.failures, self.qr_deadline, self.reconnect_deadline = Phase.CONNECTED, 0, None, None
        await self.record(
            "connected",
            Status.CONNECTED,
            failures=0,
            next_retry_at=None,
            last_error="",
            pairing_phone="",
            **self.paired,
            # The account's own LID, when the library knows it: a mention by LID is one of the bot.
            **({"lid": lid} if lid else {}),
        )
        self.paired = {}

    async def on_disconnected(self, reason: str) -> None:
        if self.phase in (Phase.CONNECTED, Phase.STARTING, Phase.QR, Phase.RECONNECTING):
            await self.connection_lost(reason)

    async def on_reconnecting(self, reason: str) -> None:
        """whatsmeow reconnects a dropped session by itself (at 0, 2, 4... s): keep the client, wait
        for its Connected, and replace it only if none comes within RECONNECT_WATCHDOG seconds."""
        if self.phase in (Phase.STARTING, Phase.QR):
            await self.connection_lost(reason)  # whatsmeow reconnects only a paired session
            return
        if self.phase is not Phase.CONNECTED:
            return
        self.phase = Phase.RECONNECTING
        self.reconnect_deadline = time.monotonic() + RECONNECT_WATCHDOG
        self.overdue_reason = f"not reconnected within {RECONNECT_WATCHDOG:.0f} s"
        await self.record("connecting", Status.CONNECTING, detail=reason, last_error=reason)

    async def on_reconnect_overdue(self) -> None:
        if self.phase is Phase.RECONNECTING:
            await self.connection_lost(self.overdue_reason)

    async def on_start_overdue(self) -> None:
        if self.phase is Phase.STARTING and self.client is not None:
            await self.connection_lost(
                f"no_response: no QR code, connection or error within {START_WATCHDOG:g} s"
                " (if it repeats, the WhatsApp library may be out of date)"
            )

    async def on_logged_out(self, reason: str) -> None:
        await self.end_session("logged_out", Status.LOGGED_OUT, reason, clear_device=True)

    async def on_failed(self, reason: str) -> None:
        await self.end_session("failed", Status.FAILED, reason)
