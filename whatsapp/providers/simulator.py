"""The simulator provider: WhatsApp's servers and the phone, kept in a store of their own.

The web only writes rows (commands, pending inbound messages) into the simulator's
store (``WHATSAPP_SIMULATOR_URL``, whatsapp/routers.py); the shard that hosts a bot
acts on them here. One ``SimulatorProvider`` per shard polls the rows of all its
bots at once, so hosting hundreds of bots costs a few queries per tick, not a few
per bot.

Delivery is neonize's (docs/simulator.md): a message is acknowledged, never to be
delivered again, as soon as the callback that hands it to the shard returns, before
the shard has stored it; and a send is not one transaction with its record.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import random
import secrets
import uuid

from django.db import transaction
from django.utils import timezone

from whatsapp.models import SimulatorCommand, SimulatorDevice, SimulatorInbound, SimulatorSent
from whatsapp.providers import connect_failures
from whatsapp.providers.base import Client, Commit, Db, Device, Events, Inbound, NotConnected, Provider
from whatsapp.providers.simulator_events import inbound_of
from whatsapp.routers import SIMULATOR_DB

logger = logging.getLogger(__name__)

# WhatsApp's QR schedule (whatsmeow qrchan.go): the first code lives 60 s, then 20 s each.
QR_LIFETIMES = (60.0, 20.0, 20.0, 20.0, 20.0, 20.0)
# How often a live connection checks it is still the device's: an older one learns within this that a
# newer one replaced it (WhatsApp tells it at once, with a stream error).
HEARTBEAT_SECONDS = 2.0
# After a network drop, whatsmeow dials again by itself, the same client (at 0, 2, 4... s; a dial
# takes about a second): the simulated client is back after this long.
RECONNECT_SECONDS = 1.0
# From a scan's PairSuccess to the Connected of the dial that follows it (whatsmeow reconnects once
# in between, after the server's stream error 515).
PAIR_CONNECT_SECONDS = 0.3
# Now and then a stopped client still says something, as a whatsmeow client whose dial or event
# goroutine outlives its Disconnect does: a late Connected, this long after the stop.
LATE_EVENTS = 0.1
LATE_EVENT_SECONDS = 0.1
# whatsmeow's pairing-code alphabet (pair-code.go, linkingBase32): no 0, O, I or U.
PAIRING_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTVWXYZ"


# What whatsmeow puts before a QR code's fields today (pair.go, makeQRData): a link the phone's
# camera opens in WhatsApp.
QR_PREFIX = "https://wa.me/settings/linked_devices#"
# The client type, last: whatsmeow's PairClientType for the platform the device says it is
# (PairClientOtherWebClient, "9", for a web client).
QR_CLIENT_TYPE = "9"


def qr_payload(keys: tuple[str, str, str]) -> str:
    """A payload shaped like whatsmeow's: the link, then ``<ref>,<noise key>,<identity key>,<adv
    secret>,<client type>``, the ref being the server's ``2@...`` string."""
    ref = "2@" + base64.b64encode(os.urandom(36)).decode()
    return QR_PREFIX + ",".join((ref, *keys, QR_CLIENT_TYPE))


def pairing_code() -> str:
    code = "".join(secrets.choice(PAIRING_ALPHABET) for _ in range(8))
    return f"{code[:4]}-{code[4:]}"


def new_message_id() -> str:
    return "3EB0" + secrets.token_hex(8).upper()


# --- Database steps (sync; run on the shard's DB threads) -----------------------


def _connect_device(bot_id: uuid.UUID, connection_id: str) -> SimulatorDevice | None:
    """Open a connection for a paired device; None when there is no device (logged out).

    The newest connection of a device wins, as on WhatsApp: an older one still alive finds at its
    next heartbeat that the device is no longer its own, and gets ``stream_replaced``.
    """
    with transaction.atomic(using=SIMULATOR_DB):
        device = SimulatorDevice.objects.select_for_update().filter(pk=bot_id).first()
        if device is None:
            return None
        device.connection_id, device.last_seen = connection_id, timezone.now()
        device.save(update_fields=["connection_id", "last_seen"])
        return device


def _pair(bot_id: uuid.UUID, connection_id: str, phone: str, push_name: str) -> SimulatorDevice:
    jid = f"{phone}:{random.randint(2, 99)}@s.whatsapp.net"
    device, _ = SimulatorDevice.objects.update_or_create(
        bot_id=bot_id,
        defaults={
            "jid": jid,
            "phone": phone,
            "push_name": push_name,
            "connection_id": connection_id,
            "last_seen": timezone.now(),
        },
    )
    return device


def _release(connection_ids: list[str]) -> None:
    SimulatorDevice.objects.filter(connection_id__in=connection_ids).update(connection_id="", last_seen=None)


def _forget_device(bot_id: uuid.UUID) -> None:
    SimulatorDevice.objects.filter(pk=bot_id).delete()


def _heartbeat(connection_ids: list[str]) -> set[str]:
    """Refresh our live connections; returns those still ours (others were replaced)."""
    now = timezone.now()
    SimulatorDevice.objects.filter(connection_id__in=connection_ids).update(last_seen=now)
    return set(SimulatorDevice.objects.filter(connection_id__in=connection_ids).values_list("connection_id", flat=True))


def _pending(bot_ids: list[uuid.UUID], connected: list[uuid.UUID]):
    commands = list(SimulatorCommand.objects.filter(bot_id__in=bot_ids, done_at__isnull=True).order_by("id")[:500])
    inbound = list(
        SimulatorInbound.objects.filter(bot_id__in=connected, delivered_at__isnull=True).order_by("id")[:500]
    )
    return commands, inbound


def _done(command_ids: list[int]) -> None:
    SimulatorCommand.objects.filter(pk__in=command_ids).update(done_at=timezone.now())


def _acknowledge(inbound_ids: list[int]) -> None:
    """WhatsApp's server got the receipt: it never delivers these again, stored or not."""
    SimulatorInbound.objects.filter(pk__in=inbound_ids, delivered_at__isnull=True).update(delivered_at=timezone.now())


def _hand_over(handed: list[tuple[Events, uuid.UUID, Inbound | None, int]]) -> None:
    """As neonize's callback on a Go thread: once it returns, WhatsApp counts the message delivered.

    What is no message for the bot (``None``: a reaction, a status post...) is acknowledged too.
    """
    for events, bot_id, message, _ in handed:
        if message is not None:
            events.message(bot_id, message)
    _acknowledge([pk for *_, pk in handed])


def _send(bot_id: uuid.UUID, to: str, text: str, commit: Commit | None, ref: str) -> str:
    # The network has the message once this row is written; the platform's record of the send is
    # another database's transaction, after it. A crash in between leaves the message `sending`, and
    # sending it again under the same ref delivers nothing new: the first send's id is the answer.
    with transaction.atomic(using=SIMULATOR_DB):
        earlier = SimulatorSent.objects.filter(bot_id=bot_id, ref=ref).first() if ref else None
        if earlier is not None:
            wa_id = earlier.wa_id
        else:
            wa_id = new_message_id()
            SimulatorSent.objects.create(bot_id=bot_id, wa_id=wa_id, to=to, text=text, ref=ref)
    if commit is not None:
        with transaction.atomic():
            commit(wa_id)
    return wa_id


# --- Clients and the provider ----------------------------------------------------


class SimulatorClient(Client):
    def __init__(self, provider: SimulatorProvider, device: Device, events: Events) -> None:
        super().__init__(device, events)
        self.provider = provider
        self.stored_jid = device.jid
        self.pairing_phone = device.pairing_phone
        self.connection_id = f"sim-{uuid.uuid4().hex}"
        self.keys = tuple(base64.b64encode(os.urandom(32)).decode() for _ in range(3))
        self.connected = False
        self.showing_qr = False
        self.pairing_code = ""
        self.valid_codes: list[str] = []
        self._qr_task: asyncio.Task | None = None
        self._dial_task: asyncio.Task | None = None

    async def start(self) -> None:
        self.provider.clients[self.bot_id] = self
        await self._connect()

    async def _reconnect(self) -> None:
        # The same client dials again by itself, as whatsmeow does after a drop.
        await asyncio.sleep(self.provider.reconnect_delay)
        try:
            await self._connect()
        except Exception as exc:
            logger.warning("bot %s: simulated reconnect failed: %s", self.bot_id, exc)
            self.events.disconnected(self.bot_id, f"connect failed: {exc}")

    async def _connect(self) -> None:
        device = await self.provider.db(_connect_device, self.bot_id, self.connection_id)
        if device is not None:
            self.connected = True
            self.events.connected(self.bot_id)
        elif self.stored_jid:
            # The phone removed this device while we were away.
            self.events.logged_out(self.bot_id, "device removed from the phone")
        else:
            self.showing_qr = True
            self._qr_task = asyncio.create_task(self._show_qr_codes())

    async def _show_qr_codes(self) -> None:
        if self.pairing_phone:
            self.pairing_code = pairing_code()
        for lifetime in QR_LIFETIMES:
            payload = qr_payload(self.keys)
            # The code being shown, and the one before it for a scan already under way.
            self.valid_codes = [payload, *self.valid_codes[:1]]
            self.events.qr(self.bot_id, payload, lifetime, self.pairing_code)
            await asyncio.sleep(lifetime)
        # As whatsmeow: the codes run out, it disconnects, and Python hears nothing (qrchan.go). The
        # shard's own QR deadline (WHATSAPP_QR_TIMEOUT, at most the codes' 160 s) ends the attempt.
        self.showing_qr = False

    def _cancel_qr(self) -> None:
        self.showing_qr = False
        if self._qr_task is not None:
            self._qr_task.cancel()
            self._qr_task = None

    async def stop(self) -> None:
        if random.random() < self.provider.late_events:
            asyncio.get_running_loop().call_later(LATE_EVENT_SECONDS, self.events.connected, self.bot_id)
        self._cancel_qr()
        if self._dial_task is not None:
            self._dial_task.cancel()
            self._dial_task = None
        self.provider.clients.pop(self.bot_id, None)
        if self.connected:
            self.connected = False
            await self.provider.db(_release, [self.connection_id])

    async def logout(self) -> None:
        await self.stop()
        await self.provider.db(_forget_device, self.bot_id)

    async def send_text(self, to: str, text: str, commit: Commit | None = None, ref: str = "") -> str:
        if not self.connected:
            raise NotConnected("websocket not connected")  # whatsmeow's ErrNotConnected
        return await self.provider.db(_send, self.bot_id, to, text, commit, ref)

    # Called by the provider's tick, on the loop.

    async def scan(self, data: dict) -> None:
        if not self.showing_qr:
            return
        if data.get("code") and data["code"] != self.pairing_code:
            return
        if data.get("qr") and data["qr"] not in self.valid_codes:
            return
        self._cancel_qr()
        phone = data.get("phone") or "55119" + "".join(random.choices("0123456789", k=8))
        push_name = data.get("pushName") or ""
        device = await self.provider.db(_pair, self.bot_id, self.connection_id, phone, push_name)
        self.stored_jid = device.jid
        # whatsmeow: PairSuccess, then the server closes the stream (error 515) and the client dials
        # again with its new identity; Connected follows that dial, or, when it fails, never comes.
        self.events.paired(self.bot_id, device.jid, device.phone, device.push_name)
        if self.provider.pair_connect_delay is not None:
            self._dial_task = asyncio.create_task(self._connect_after_pairing())

    async def _connect_after_pairing(self) -> None:
        await asyncio.sleep(self.provider.pair_connect_delay)
        self.connected = True
        self.events.connected(self.bot_id)

    async def unlink(self) -> None:
        await self.provider.db(_forget_device, self.bot_id)
        if self.connected:
            self.connected = False
            self.events.logged_out(self.bot_id, connect_failures.UNLINKED)

    async def drop(self) -> None:
        if self.connected:
            # The server closed the socket: the connection is gone on its side too. whatsmeow says so
            # (Disconnected) and dials again by itself, the same client; sends fail meanwhile.
            self.connected = False
            await self.provider.db(_release, [self.connection_id])
            self.events.reconnecting(self.bot_id, "network dropped")
            self._dial_task = asyncio.create_task(self._reconnect())

    async def refuse(self, data: dict) -> None:
        """The server ends the connection with a failure code: the bot hears what neonize would say."""
        outcome, reason = connect_failures.for_code(
            int(data["code"]), ban_reason=data.get("reason", "unknown reason"), ban_expire=int(data.get("expire", 0))
        )
        if self.connected:
            self.connected = False
            await self.provider.db(_release, [self.connection_id])
        if outcome is connect_failures.Outcome.LOGGED_OUT:
            await self.provider.db(_forget_device, self.bot_id)  # whatsmeow deletes the store row
        getattr(self.events, outcome.value)(self.bot_id, reason)

    def stall(self, seconds: float) -> None:
        """whatsmeow's keepalive goes unanswered (KeepAliveTimeout), then answered again
        (KeepAliveRestored): no Disconnected, the same connection; sends fail meanwhile."""
        if not self.connected:
            return
        self.connected = False
        self.events.reconnecting(self.bot_id, "keepalive timeout (1 unanswered)")
        self._dial_task = asyncio.create_task(self._restored_after(seconds))

    async def _restored_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self.connected = True
        self.events.connected(self.bot_id)

    def replaced(self) -> None:
        if self.connected:
            self.connected = False
            self.events.failed(self.bot_id, "stream_replaced")


class SimulatorProvider(Provider):
    name = "simulator"
    # A send carries the platform's id for it, and the same id twice is one message.
    idempotent_send = True

    def __init__(
        self,
        db: Db,
        *,
        poll_interval: float = 0.5,
        reconnect_delay: float = RECONNECT_SECONDS,
        pair_connect_delay: float | None = PAIR_CONNECT_SECONDS,
        late_events: float = LATE_EVENTS,
    ) -> None:
        self.db = db
        self.poll_interval = poll_interval
        self.reconnect_delay = reconnect_delay
        # None: the dial after a scan never connects (Connected never comes), as when it fails.
        self.pair_connect_delay = pair_connect_delay
        # How often a stopped client sends a late event (0 to 1).
        self.late_events = late_events
        self.clients: dict[uuid.UUID, SimulatorClient] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._last_heartbeat = 0.0

    async def open(self) -> None:
        self._task = asyncio.create_task(self._run(), name="simulator")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for client in list(self.clients.values()):
            await client.stop()

    def client(self, device: Device, events: Events) -> SimulatorClient:
        return SimulatorClient(self, device, events)

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("simulator tick failed")
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            except TimeoutError:
                pass
            self._wake.clear()

    async def tick(self) -> None:
        loop = asyncio.get_running_loop()
        if not self.clients:
            return
        if loop.time() - self._last_heartbeat >= HEARTBEAT_SECONDS:
            self._last_heartbeat = loop.time()
            live = {c.connection_id: c for c in self.clients.values() if c.connected}
            if live:
                still_ours = await self.db(_heartbeat, list(live))
                for connection_id, client in live.items():
                    if connection_id not in still_ours:
                        client.replaced()
        connected = [bot_id for bot_id, c in self.clients.items() if c.connected]
        commands, inbound = await self.db(_pending, list(self.clients), connected)
        done = []
        for command in commands:
            client = self.clients.get(command.bot_id)
            if client is None:
                continue
            done.append(command.pk)
            if command.kind == SimulatorCommand.Kind.SCAN:
                await client.scan(command.data)
            elif command.kind == SimulatorCommand.Kind.UNLINK:
                await client.unlink()
            elif command.kind == SimulatorCommand.Kind.DROP:
                await client.drop()
            elif command.kind == SimulatorCommand.Kind.REFUSE:
                await client.refuse(command.data)
            elif command.kind == SimulatorCommand.Kind.STALL:
                client.stall(float(command.data.get("seconds", 2.0)))
        if done:
            await self.db(_done, done)
        handed = []
        for row in inbound:
            client = self.clients.get(row.bot_id)
            if client is None or not client.connected:
                continue
            handed.append((client.events, row.bot_id, inbound_of(row), row.pk))
        if handed:
            await self.db(_hand_over, handed)
