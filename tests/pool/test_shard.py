"""A shard driven through its step methods, in-process, with the simulator as WhatsApp (tests/hosting.py).

Real processes are tested in tests/whatsapp/test_connection_flow.py.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable

import pytest
from django.db.models import F
from django.utils import timezone

from bots import control
from bots.models import Bot, Direction, Message
from pool import connection, leases
from pool import shard as pool_shard
from pool.connection import Phase, backoff_delay
from tests.helpers import make_bot
from tests.hosting import (
    STEP_TIMEOUT,
    command,
    connected,
    ended,
    events_of,
    has_status,
    hosts,
    orm,
    paired,
    session_row,
    step_until,
    until,
    wanting,
)
from tests.whatsapp.live import QR_PAYLOAD, decode_qr
from whatsapp.models import Session, SessionEvent, SimulatorCommand, SimulatorDevice, SimulatorInbound, Status
from whatsapp.providers import simulator
from whatsapp.providers.base import Client, Device, Events, Provider

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

# --- pairing, shutdown, resuming -------------------------------------------------------


async def test_it_shows_a_qr_that_the_phone_scans(shards, alice):
    shard = await shards()
    bot = await orm(make_bot, alice)
    await orm(control.request_connect, bot, alice)

    await step_until(shard, has_status(bot, Status.QR_REQUIRED))

    session = await orm(session_row, bot)
    assert session.lease_owner == shard.shard_id and session.qr_expires_at > timezone.now()
    payload = decode_qr(session.qr_code)
    assert QR_PAYLOAD.match(payload), payload

    await orm(command, bot, SimulatorCommand.Kind.SCAN, qr=payload, phone="5511987654321", pushName="Padaria")
    await step_until(shard, has_status(bot, Status.CONNECTED))

    session = await orm(session_row, bot)
    assert session.jid.startswith("5511987654321:") and session.jid.endswith("@s.whatsapp.net")
    assert (session.phone, session.push_name, session.failures, session.last_error) == (
        "5511987654321",
        "Padaria",
        0,
        "",
    )
    assert (session.qr_code, session.qr_expires_at) == ("", None)
    assert await orm(lambda: SimulatorDevice.objects.get(pk=bot.pk).jid) == session.jid
    assert [e for e, _ in await orm(events_of, bot)] == ["connecting", "qr", "connected"]


async def test_it_shows_a_pairing_code_when_asked_while_a_qr_shows(shards, alice):
    shard = await shards()
    bot = await orm(make_bot, alice)
    await orm(control.request_connect, bot, alice)
    await step_until(shard, has_status(bot, Status.QR_REQUIRED))

    await orm(control.request_connect, bot, alice, pairing_phone="5511987654321")
    await step_until(shard, lambda: session_row(bot).pairing_code != "")

    session = await orm(session_row, bot)
    assert session.status == Status.QR_REQUIRED and session.qr_code
    assert len(session.pairing_code) == 9 and session.pairing_code[4] == "-"
    await orm(command, bot, SimulatorCommand.Kind.SCAN, code=session.pairing_code, phone="5511987654321")
    await step_until(shard, has_status(bot, Status.CONNECTED))
    session = await orm(session_row, bot)
    assert session.phone == "5511987654321" and session.pairing_phone == ""


def test_pairing_codes_are_written_in_whatsmeows_alphabet():
    codes = [simulator.pairing_code() for _ in range(200)]

    assert all(len(code) == 9 and code[4] == "-" for code in codes)
    # linkingBase32 (whatsmeow pair-code.go): a phone never shows 0, O, I or U in a code.
    assert set("".join(codes).replace("-", "")) <= set("123456789ABCDEFGHJKLMNPQRSTVWXYZ")


async def test_it_stops_cleanly_and_another_shard_resumes_without_a_qr(shards, alice):
    shard, bot = await connected(shards, alice)

    await shard.stop_all()

    session = await orm(session_row, bot)
    assert (session.status, session.last_error) == (Status.DISCONNECTED, "worker stopped")
    assert (session.lease_owner, session.lease_expires_at) == ("", None)
    assert session.desired_connected, "a shutdown never changes a bot's desired state"

    successor = await shards()
    await step_until(successor, has_status(bot, Status.CONNECTED))

    session = await orm(session_row, bot)
    assert session.lease_owner == successor.shard_id
    assert session.lease_epoch == 2
    assert session.jid == "5511987654321:7@s.whatsapp.net"
    assert "qr" not in [e for e, _ in await orm(events_of, bot)]


async def test_it_claims_a_backlog_in_batches_and_connects_every_bot(shards, alice, monkeypatch):
    """A restart with thousands of bots waiting: claims go a batch per pass, so leases are renewed in between."""
    monkeypatch.setattr(pool_shard, "CLAIM_BATCH", 2)
    bots = [await orm(paired, alice) for _ in range(5)]
    host = await shards()

    more = await host.step()
    assert len(host.hosted) == 2, "one batch per pass"
    assert more, "the next pass follows at once"

    ids = [bot.pk for bot in bots]
    await step_until(host, lambda: Session.objects.filter(pk__in=ids, status=Status.CONNECTED).count() == 5)


async def test_shards_take_fair_shares_of_the_waiting_bots(shards, alice):
    """Placement by capacity: a shard twice the size of another ends up with twice the bots."""
    bots = [await orm(paired, alice) for _ in range(9)]
    big, small = await shards(capacity=20), await shards(capacity=10)
    for each in (big, small):
        await orm(leases.beat, each.shard_id, "host", 1, each.capacity, 0)

    await small.step()  # the first to look takes only its share
    await big.step()
    await small.step()

    ids = [bot.pk for bot in bots]
    assert await orm(lambda: Session.objects.filter(pk__in=ids, lease_owner="").count()) == 0, "all placed"
    assert (len(big.hosted), len(small.hosted)) == (6, 3)


async def test_a_bot_left_waiting_in_another_shards_share_is_taken_after_a_lease_ttl(shards, alice):
    """The shard whose share it is never takes it (it may have no room for the bot's provider)."""
    bot = await orm(paired, alice)
    first, second = await shards(shard_id="shard-a", capacity=20), await shards(shard_id="shard-b", capacity=10)
    for each in (first, second):
        await orm(leases.beat, each.shard_id, "host", 1, each.capacity, 0)

    await second.step()
    assert bot.pk not in second.hosted, "shard-a's share (shard-a comes first)"

    second.placement.waiting_since[bot.pk] -= second.ttl  # a lease TTL later, still nobody took it
    await step_until(second, has_status(bot, Status.CONNECTED))
    assert bot.pk in second.hosted


async def test_it_runs_until_asked_to_shut_down(shards, alice):
    shard = await shards(setup=False)
    bot = await orm(paired, alice)
    running = asyncio.create_task(shard.run())
    try:
        await until(lambda: bot.pk in shard.hosted and shard.hosted[bot.pk].phase is Phase.CONNECTED)
    finally:
        # What SIGTERM does.
        shard.request_shutdown()
        await asyncio.wait_for(running, STEP_TIMEOUT)

    session = await orm(session_row, bot)
    assert (session.status, session.last_error, session.lease_owner) == (Status.DISCONNECTED, "worker stopped", "")
    assert session.desired_connected


async def test_it_disconnects_on_request(shards, alice):
    shard, bot = await connected(shards, alice)

    await orm(control.request_disconnect, bot)
    await step_until(shard, ended(bot, Status.DISCONNECTED))

    session = await orm(session_row, bot)
    assert not session.desired_connected and session.lease_owner == ""
    assert shard.hosted == {}
    assert not shard.providers["simulator"].clients
    # Disconnecting keeps the device: a later connect resumes without a QR.
    device = await orm(SimulatorDevice.objects.get, pk=bot.pk)
    assert device.connection_id == ""
    assert session.jid == device.jid


async def test_it_logs_out_on_request(shards, alice):
    shard, bot = await connected(shards, alice)

    await orm(control.request_logout, bot)
    await step_until(shard, ended(bot, Status.LOGGED_OUT))

    session = await orm(session_row, bot)
    assert not session.desired_connected and not session.logout_requested
    assert (session.jid, session.phone, session.lease_owner) == ("", "", "")
    assert not await orm(SimulatorDevice.objects.filter(pk=bot.pk).exists)
    assert shard.hosted == {}


async def test_it_logs_out_and_releases_a_deleted_bot(shards, alice):
    shard, bot = await connected(shards, alice)

    def delete() -> None:
        # What DELETE /api/bots/{id} writes.
        Bot.objects.filter(pk=bot.pk).update(deleted_at=timezone.now())
        Session.objects.filter(pk=bot.pk).update(desired_connected=False, logout_requested=True)

    await orm(delete)
    await step_until(shard, ended(bot, Status.LOGGED_OUT))

    session = await orm(session_row, bot)
    assert (session.lease_owner, session.desired_connected, session.logout_requested) == ("", False, False)
    assert not await orm(SimulatorDevice.objects.filter(pk=bot.pk).exists)
    assert shard.hosted == {}


async def test_it_logs_out_a_bot_deleted_while_no_shard_hosted_it(shards, alice):
    bot = await orm(paired, alice)
    await orm(Bot.objects.filter(pk=bot.pk).update, deleted_at=timezone.now())
    await orm(Session.objects.filter(pk=bot.pk).update, desired_connected=False, logout_requested=True)
    shard = await shards()

    await step_until(shard, ended(bot, Status.LOGGED_OUT))

    assert not await orm(SimulatorDevice.objects.filter(pk=bot.pk).exists)
    assert (await orm(session_row, bot)).lease_owner == ""
    assert shard.hosted == {}


async def test_it_reconnects_without_a_qr_when_the_network_drops(shards, alice, monkeypatch):
    monkeypatch.setattr(connection, "backoff_delay", lambda failures: 0.0)
    shard, bot = await connected(shards, alice)

    await orm(command, bot, SimulatorCommand.Kind.DROP)
    await step_until(shard, lambda: len(events_of(bot)) == 3)

    assert await orm(events_of, bot) == [
        ("connected", "connected"),
        ("connecting", "connecting"),
        ("connected", "connected"),
    ]
    dropped = await orm(SessionEvent.objects.get, session_id=bot.pk, version=2)
    assert (dropped.detail, dropped.frame["lastError"]) == ("network dropped", "network dropped")
    session = await orm(session_row, bot)
    assert (session.status, session.failures, session.last_error, session.next_retry_at) == (
        Status.CONNECTED,
        0,
        "",
        None,
    )
    assert session.lease_owner == shard.shard_id and session.lease_epoch == 1


async def test_it_keeps_the_client_while_the_library_reconnects_by_itself(shards, alice):
    shard, bot = await connected(shards, alice)
    hosted = shard.hosted[bot.pk]
    client = hosted.client

    # whatsmeow's Disconnected (or a keepalive timeout): it is reconnecting the same client already.
    shard.events.reconnecting(bot.pk, "connection lost")
    await step_until(shard, has_status(bot, Status.CONNECTING))
    assert hosted.phase is Phase.RECONNECTING and hosted.client is client, "not replaced"
    assert (await orm(session_row, bot)).last_error == "connection lost"

    shard.events.connected(bot.pk)
    await step_until(shard, has_status(bot, Status.CONNECTED))
    assert hosted.client is client
    assert await orm(events_of, bot) == [
        ("connected", "connected"),
        ("connecting", "connecting"),
        ("connected", "connected"),
    ]


async def test_it_replaces_a_client_that_does_not_reconnect_within_the_watchdog(shards, alice, monkeypatch):
    monkeypatch.setattr(connection, "backoff_delay", lambda failures: 0.0)
    monkeypatch.setattr(connection, "RECONNECT_WATCHDOG", 0.0)
    shard, bot = await connected(shards, alice)
    client = shard.hosted[bot.pk].client

    shard.events.reconnecting(bot.pk, "connection lost")
    await step_until(shard, lambda: len(events_of(bot)) == 4)

    assert [event for event, _ in await orm(events_of, bot)] == ["connected", "connecting", "connecting", "connected"]
    replaced = await orm(SessionEvent.objects.get, session_id=bot.pk, version=3)
    assert replaced.detail == "not reconnected within 0 s"
    assert shard.hosted[bot.pk].client is not client, "a new client, resumed without a QR"


async def test_it_logs_out_when_the_phone_unlinks_the_device(shards, alice):
    shard, bot = await connected(shards, alice)

    await orm(command, bot, SimulatorCommand.Kind.UNLINK)
    await step_until(shard, ended(bot, Status.LOGGED_OUT))

    session = await orm(session_row, bot)
    assert (session.desired_connected, session.jid, session.last_error) == (False, "", "unlinked from the phone")
    assert not await orm(SimulatorDevice.objects.filter(pk=bot.pk).exists)
    assert shard.hosted == {}


# --- QR deadline and lost leases ----------------------------------------------------------


async def test_it_gives_up_on_an_unscanned_qr(shards, alice, settings):
    settings.WHATSAPP_QR_TIMEOUT = 0.3
    shard = await shards()
    bot = await orm(wanting, alice)

    await step_until(shard, ended(bot, Status.QR_TIMEOUT))

    session = await orm(session_row, bot)
    assert (session.status, session.desired_connected) == (Status.QR_TIMEOUT, False)
    assert (session.qr_code, session.last_error, session.failures) == ("", "", 0)
    assert [e for e, _ in await orm(events_of, bot)] == ["qr", "qr_timeout"]
    assert shard.hosted == {} and not shard.providers["simulator"].clients
    # Not claimed again: desired is off until the operator asks again.
    await shard.step()
    assert shard.hosted == {}


async def test_a_scan_keeps_the_device_at_once_and_ends_the_qr_deadline(shards, alice, settings, monkeypatch):
    # whatsmeow: PairSuccess, then a reconnect (stream error 515), then Connected, which here never
    # comes. A QR deadline falling in between would end in qr_timeout with the device linked.
    settings.WHATSAPP_QR_TIMEOUT = 0.3
    monkeypatch.setattr(connection, "PAIRED_CONNECT_SECONDS", 1.0)
    monkeypatch.setattr(connection, "backoff_delay", lambda failures: 60.0)
    shard = await shards()
    bot = await orm(wanting, alice)
    await step_until(shard, has_status(bot, Status.QR_REQUIRED))

    shard.events.paired(bot.pk, "5511987654321:9@s.whatsapp.net", "5511987654321", "Padaria")
    await step_until(shard, lambda: session_row(bot).jid != "")
    session = await orm(session_row, bot)
    assert (session.jid, session.phone, session.push_name) == (
        "5511987654321:9@s.whatsapp.net",
        "5511987654321",
        "Padaria",
    )

    await asyncio.sleep(0.5)  # past the QR deadline
    await step_until(shard, has_status(bot, Status.CONNECTING))
    assert [e for e, _ in await orm(events_of, bot)] == ["qr", "connecting"], "no qr_timeout"
    lost = await orm(SessionEvent.objects.get, session_id=bot.pk, version=2)
    assert lost.detail == "paired, but not connected within 1 s"
    session = await orm(session_row, bot)
    assert session.jid == "5511987654321:9@s.whatsapp.net", "the retry resumes the device, no new QR"


async def test_codes_that_run_out_say_nothing_and_the_shards_deadline_ends_the_attempt(
    shards, alice, settings, monkeypatch
):
    # whatsmeow sends no event when its QR codes run out: only the shard's own deadline ends it.
    monkeypatch.setattr(simulator, "QR_LIFETIMES", (0.05,) * 6)
    settings.WHATSAPP_QR_TIMEOUT = 1.5
    shard = await shards()
    bot = await orm(wanting, alice)
    await step_until(shard, has_status(bot, Status.QR_REQUIRED))
    shown = asyncio.get_running_loop().time()

    await step_until(shard, ended(bot, Status.QR_TIMEOUT))

    assert asyncio.get_running_loop().time() - shown >= 1.0, "not when the codes ran out (0.3 s)"
    assert [e for e, _ in await orm(events_of, bot)] == ["qr"] * 6 + ["qr_timeout"]


def taken_by_someone_else(bot: Bot) -> None:
    """Another shard holds the bot's lease now (a take-over this shard has not noticed yet)."""
    Session.objects.filter(pk=bot.pk).update(
        lease_owner="someone-else",
        lease_epoch=F("lease_epoch") + 1,
        lease_expires_at=timezone.now() + datetime.timedelta(seconds=60),
    )


async def test_it_drops_a_bot_whose_lease_was_taken_without_writing(shards, alice):
    shard, bot = await connected(shards, alice)
    before = await orm(session_row, bot)

    await orm(taken_by_someone_else, bot)
    await shard.renew_leases(force=True)

    assert shard.hosted == {}
    assert not shard.providers["simulator"].clients
    session = await orm(session_row, bot)
    assert (session.status, session.version, session.lease_owner) == (Status.CONNECTED, before.version, "someone-else")
    # Its connection was closed, so the new host can connect at once.
    assert (await orm(SimulatorDevice.objects.get, pk=bot.pk)).connection_id == ""

    await shard.stop_all()
    session = await orm(session_row, bot)
    assert (session.status, session.version, session.lease_owner) == (Status.CONNECTED, before.version, "someone-else")


async def test_it_does_not_write_for_a_bot_whose_lease_it_lost(shards, alice):
    shard, bot = await connected(shards, alice)
    before = await orm(session_row, bot)
    await orm(taken_by_someone_else, bot)

    # Before its next renewal notices, the client reports a drop: the write it leads to is refused.
    await orm(command, bot, SimulatorCommand.Kind.DROP)
    await until(lambda: bot.pk not in shard.hosted)

    session = await orm(session_row, bot)
    assert (session.status, session.version, session.lease_owner) == (Status.CONNECTED, before.version, "someone-else")
    assert not shard.providers["simulator"].clients


# --- inbound messages ----------------------------------------------------------------------


async def test_it_stores_an_inbound_message_once(shards, alice):
    shard, bot = await connected(shards, alice)

    def deliver(wa_id: str, text: str) -> SimulatorInbound:
        return SimulatorInbound.objects.create(
            bot=bot,
            wa_id=wa_id,
            chat="5511911112222@s.whatsapp.net",
            sender="5511911112222@s.whatsapp.net",
            push_name="Maria",
            text=text,
            timestamp=timezone.now(),
        )

    def delivered(row: SimulatorInbound) -> Callable[[], bool]:
        return lambda: SimulatorInbound.objects.get(pk=row.pk).delivered_at is not None

    first = await orm(deliver, "3EB0AAAA", "Oi, tudo bem?")
    await step_until(shard, delivered(first))
    again = await orm(deliver, "3EB0AAAA", "Oi, tudo bem?")
    await step_until(shard, delivered(again))

    messages = await orm(lambda: list(Message.objects.filter(bot=bot)))
    assert len(messages) == 1
    message = messages[0]
    # Stored once; what it is answered is the reply pipeline's (tests/bots/test_reply_pipeline.py).
    assert (message.direction, message.wa_id) == (Direction.IN, "3EB0AAAA")
    assert (message.chat, message.push_name, message.text) == ("5511911112222@s.whatsapp.net", "Maria", "Oi, tudo bem?")


# --- failures and backoff -------------------------------------------------------------------


class StubClient(Client):
    def __init__(self, provider: StubProvider, device: Device, events: Events) -> None:
        super().__init__(device, events)
        self.provider = provider

    async def start(self) -> None:
        self.provider.dials += 1
        if self.provider.dial_error is not None:
            raise self.provider.dial_error

    async def stop(self) -> None:
        if self.provider.connects_while_stopping:
            # The library's callback for a handshake that completed just as we closed.
            self.events.connected(self.bot_id)

    async def logout(self) -> None:
        pass

    async def send_text(self, to: str, text: str, commit=None, ref: str = "") -> str:
        raise ConnectionError("not connected")


class StubProvider(Provider):
    """WhatsApp as seen from these machines, where its servers cannot be reached."""

    name = "neonize"

    def __init__(self, *, dial_error: Exception | None = None, connects_while_stopping: bool = False) -> None:
        self.dial_error = dial_error
        self.connects_while_stopping = connects_while_stopping
        self.dials = 0

    def client(self, device: Device, events: Events) -> StubClient:
        return StubClient(self, device, events)


async def test_it_retries_failed_dials_and_gives_up_after_eight(shards, alice, monkeypatch):
    delays: list[int] = []

    def no_delay(failures: int) -> float:
        delays.append(failures)
        return 0.0

    monkeypatch.setattr(connection, "backoff_delay", no_delay)
    provider = StubProvider(dial_error=ConnectionError("network is unreachable"))
    shard = await shards(providers={"neonize": provider})
    bot = await orm(make_bot, alice, whatsapp_provider="neonize")
    await orm(control.request_connect, bot, alice)

    await step_until(shard, lambda: session_row(bot).failures >= 1)

    session = await orm(session_row, bot)
    assert (session.status, session.last_error) == (Status.CONNECTING, "connect failed: network is unreachable")
    assert session.next_retry_at is not None
    assert session.desired_connected and session.lease_owner == shard.shard_id

    await step_until(shard, ended(bot, Status.FAILED))

    session = await orm(session_row, bot)
    assert not session.desired_connected
    assert session.failures == 8
    assert session.last_error == "gave up after 8 failures: connect failed: network is unreachable"
    assert (session.lease_owner, session.lease_expires_at) == ("", None)
    assert delays == [1, 2, 3, 4, 5, 6, 7]
    assert provider.dials == 8
    events = await orm(lambda: list(SessionEvent.objects.filter(session_id=bot.pk)))
    assert [e.event for e in events] == ["connecting"] * 8 + ["failed"]
    for event in events[1:8]:
        assert event.detail == "connect failed: network is unreachable"
        assert event.frame["lastError"] == event.detail
    # Given up: not claimed again until someone asks.
    await shard.step()
    assert shard.hosted == {} and provider.dials == 8


async def test_it_writes_nothing_after_worker_stopped(shards, alice):
    provider = StubProvider(connects_while_stopping=True)
    bots = [await orm(wanting, alice) for _ in range(8)]
    await orm(Bot.objects.update, whatsapp_provider="neonize")

    # Whether a late callback's write would land after "worker stopped" is up to the DB threads:
    # a few rounds make a regression show.
    for _ in range(3):
        shard = await shards(providers={"neonize": provider})
        await step_until(shard, hosts(shard, 8))

        await shard.stop_all()

        for bot in bots:
            session = await orm(session_row, bot)
            assert (session.status, session.last_error, session.lease_owner) == (
                Status.DISCONNECTED,
                "worker stopped",
                "",
            )
            assert session.desired_connected
            assert (await orm(events_of, bot))[-1] == ("disconnected", "disconnected")


@pytest.mark.django_db(transaction=False)
@pytest.mark.parametrize("failures", [0, 1, 2, 3, 5, 6, 7, 20])
def test_it_backs_off_with_full_jitter_up_to_a_minute(failures, settings):
    settings.WHATSAPP_BACKOFF_BASE, settings.WHATSAPP_BACKOFF_CAP = 2.0, 60.0  # the defaults
    bound = min(60.0, 2.0 * 2 ** max(0, failures - 1))

    delays = [backoff_delay(failures) for _ in range(500)]

    assert all(0 <= d <= bound for d in delays)
    # Full jitter: spread over the whole range, not pinned to either end.
    assert min(delays) < bound * 0.2 and max(delays) > bound * 0.8


def test_it_has_a_unique_shard_id_per_start():
    assert pool_shard.new_shard_id(0) != pool_shard.new_shard_id(0)
