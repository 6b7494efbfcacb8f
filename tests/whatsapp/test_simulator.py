"""The simulator behaves as whatsmeow does where the platform depends on it.

The newest connection of a device wins and the older one is told (stream_replaced); after a
network drop the same client comes back by itself, refusing sends meanwhile with whatsmeow's
error; a send repeated under its ref is one message.
"""

from __future__ import annotations

import asyncio

import pytest

from bots.models import Direction, Message
from pool import connection
from tests.helpers import make_bot
from tests.hosting import POLL, command, connected, events_of, has_status, orm, paired, session_row, step_until, wanting
from tests.whatsapp.live import decode_qr
from whatsapp.models import SessionEvent, SimulatorCommand, SimulatorDevice, SimulatorInbound, SimulatorSent, Status
from whatsapp.providers.base import Device, NotConnected
from whatsapp.providers.simulator import SimulatorProvider

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

CUSTOMER = "5511912345678@s.whatsapp.net"


class Heard:
    """A second host's events, as its shard would get them."""

    def __init__(self) -> None:
        self.kinds: list[str] = []

    def __getattr__(self, kind: str):
        return lambda *args, **kwargs: self.kinds.append(kind)


async def test_the_newest_connection_of_a_device_wins_and_the_older_is_told(shards, alice):
    shard, bot = await connected(shards, alice)
    elsewhere = SimulatorProvider(shard.db, poll_interval=POLL)
    heard = Heard()
    # Another host connects the same linked device (two platforms on one number, say).
    newer = elsewhere.client(Device(bot_id=bot.pk, jid=(await orm(session_row, bot)).jid), heard)
    await newer.start()

    await step_until(shard, lambda: session_row(bot).status == Status.FAILED)

    session = await orm(session_row, bot)
    assert session.last_error == "stream_replaced"
    assert heard.kinds == ["connected"] and newer.connected, "the newer one stays"
    await newer.stop()


async def test_after_a_drop_the_same_client_comes_back_by_itself(shards, alice):
    shard, bot = await connected(shards, alice)
    hosted = shard.hosted[bot.pk]
    client = hosted.client

    await orm(command, bot, SimulatorCommand.Kind.DROP)
    await step_until(shard, lambda: session_row(bot).status == Status.CONNECTING)
    with pytest.raises(NotConnected, match="websocket not connected"):
        await client.send_text(CUSTOMER, "Oi")
    await step_until(shard, has_status(bot, Status.CONNECTED))

    assert hosted.client is client, "whatsmeow reconnects the client it has: none is made anew"
    session = await orm(session_row, bot)
    assert (session.status, session.failures) == (Status.CONNECTED, 0)
    assert await client.send_text(CUSTOMER, "Voltei") and await orm(SimulatorSent.objects.count) == 1


async def test_a_send_repeated_under_its_ref_reaches_the_phone_once(shards, alice):
    shard, bot = await connected(shards, alice)
    client = shard.hosted[bot.pk].client

    first = await client.send_text(CUSTOMER, "Seu pedido saiu!", ref="42")
    again = await client.send_text(CUSTOMER, "Seu pedido saiu!", ref="42")
    other = await client.send_text(CUSTOMER, "Seu pedido saiu!", ref="43")

    assert first == again != other
    assert await orm(lambda: list(SimulatorSent.objects.values_list("ref", flat=True))) == ["42", "43"]


async def test_a_scan_is_paired_first_and_connected_a_moment_later(shards, alice):
    shard = await shards()
    bot = await orm(wanting, alice)
    await step_until(shard, has_status(bot, Status.QR_REQUIRED))
    payload = decode_qr((await orm(session_row, bot)).qr_code)

    await orm(command, bot, SimulatorCommand.Kind.SCAN, qr=payload, phone="5511987654321")
    await step_until(shard, lambda: session_row(bot).jid != "")
    paired_at = await orm(session_row, bot)
    await step_until(shard, has_status(bot, Status.CONNECTED))

    assert paired_at.status != Status.CONNECTED, "PairSuccess comes before Connected, as whatsmeow's"
    assert (await orm(session_row, bot)).phone == "5511987654321"


async def test_when_connected_never_follows_a_scan_the_paired_device_is_resumed(shards, alice, monkeypatch):
    # The dial after PairSuccess fails: whatsmeow says nothing more. The shard resumes the stored
    # device (no new QR) once its short deadline passes.
    monkeypatch.setattr(connection, "PAIRED_CONNECT_SECONDS", 0.5)
    monkeypatch.setattr(connection, "backoff_delay", lambda failures: 0.0)
    shard = await shards(setup=False)
    shard.providers = {"simulator": SimulatorProvider(shard.db, poll_interval=POLL, pair_connect_delay=None)}
    await shard.setup()
    bot = await orm(wanting, alice)
    await step_until(shard, has_status(bot, Status.QR_REQUIRED))
    payload = decode_qr((await orm(session_row, bot)).qr_code)

    await orm(command, bot, SimulatorCommand.Kind.SCAN, qr=payload, phone="5511987654321")
    await step_until(shard, has_status(bot, Status.CONNECTED))

    kinds = [event for event, _ in await orm(events_of, bot)]
    assert kinds == ["qr", "connecting", "connected"], "resumed, not shown a new QR"


WRITTEN = [
    # (what the phone sends, what the bot's history shows: type and text, or None: not a message for it)
    ({"type": "video", "caption": "Vocês têm esse em azul?"}, ("text", "Vocês têm esse em azul?")),
    ({"type": "document"}, ("other", "")),
    ({"type": "ptt"}, ("audio", "")),
    ({"type": "location"}, ("other", "")),
    ({"type": "reaction", "text": "👍"}, None),
    ({"type": "revoke"}, None),
    ({"type": "edit", "text": "Quero dois"}, None),
    ({"type": "text", "text": "Promoção!", "chat": "status@broadcast"}, None),
    ({"type": "text", "text": "Novidades", "chat": "120363144038483540@newsletter"}, None),
]


async def test_what_a_phone_sends_is_read_as_the_neonize_adapter_reads_it(shards, alice, alice_api):
    shard, bot = await connected(shards, alice)
    for n, (fields, _) in enumerate(WRITTEN):
        body = {"from": f"55119{n:08d}", "id": f"3EB0SIM{n}", **fields}
        response = await orm(alice_api.post, f"/api/bots/{bot.pk}/simulator/inbound", body)
        assert response.status_code == 202, response.content
    kept = {f"3EB0SIM{n}": seen for n, (_, seen) in enumerate(WRITTEN) if seen is not None}

    await step_until(shard, lambda: not SimulatorInbound.objects.filter(delivered_at=None).exists())
    await step_until(shard, lambda: Message.objects.filter(direction=Direction.IN).count() == len(kept))

    stored = await orm(lambda: {m.wa_id: (m.type, m.text) for m in Message.objects.filter(direction=Direction.IN)})
    assert stored == kept, "reactions, revokes, edits, status posts and channels are no question"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"type": "text", "text": "Oi", "caption": "legenda"}, "caption"),
        ({"type": "audio", "caption": "legenda"}, "caption"),
        ({"type": "gif"}, "type"),
        ({"text": "Oi", "chat": "status@g.us"}, "chat"),
    ],
)
def test_the_simulated_phone_refuses_what_whatsapp_cannot_carry(alice, alice_api, fields, field):
    bot = make_bot(alice, whatsapp_provider="simulator")

    response = alice_api.post(f"/api/bots/{bot.pk}/simulator/inbound", {"from": "5511912345678", **fields})

    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


@pytest.mark.parametrize(
    ("code", "status", "error", "device_kept"),
    [
        (401, Status.LOGGED_OUT, "unlinked from the phone", False),
        (403, Status.LOGGED_OUT, "the WhatsApp account is locked (403)", False),
        (406, Status.LOGGED_OUT, "the number is banned from WhatsApp (406)", False),
        (402, Status.FAILED, "temporary_ban: spam, until ", True),
        (405, Status.FAILED, "client_outdated", True),
        (409, Status.FAILED, "connect_failure_409", True),
        (503, Status.CONNECTING, "connect_failure_503", True),
        (415, Status.CONNECTING, "connect_failure_other", True),
    ],
)
async def test_a_refusal_by_the_server_reads_as_the_adapter_reports_it(
    shards, alice, monkeypatch, code, status, error, device_kept
):
    monkeypatch.setattr(connection, "backoff_delay", lambda failures: 60.0)  # a retry stays visible
    shard, bot = await connected(shards, alice)

    await orm(command, bot, SimulatorCommand.Kind.REFUSE, code=code, reason="SPAM", expire=3600)
    await step_until(shard, has_status(bot, status))

    assert error in (await orm(session_row, bot)).last_error
    assert await orm(SimulatorDevice.objects.filter(pk=bot.pk).exists) is device_kept


async def test_a_late_event_from_a_stopped_client_changes_nothing(shards, alice, monkeypatch):
    # The client is replaced after a refusal; the old one, stopped, still says Connected.
    monkeypatch.setattr(connection, "backoff_delay", lambda failures: 60.0)
    shard = await shards(setup=False)
    shard.providers = {"simulator": SimulatorProvider(shard.db, poll_interval=POLL, late_events=1.0)}
    await shard.setup()
    bot = await orm(paired, alice)
    await step_until(shard, has_status(bot, Status.CONNECTED))

    await orm(command, bot, SimulatorCommand.Kind.REFUSE, code=503)
    await step_until(shard, has_status(bot, Status.CONNECTING))
    for _ in range(10):  # past the late Connected
        await shard.step()
        await asyncio.sleep(POLL)

    session = await orm(session_row, bot)
    assert (session.status, shard.hosted[bot.pk].client) == (Status.CONNECTING, None), "not connected with no client"


async def test_a_silent_keepalive_stall_keeps_the_client_and_refuses_sends_until_restored(shards, alice):
    shard, bot = await connected(shards, alice)
    client = shard.hosted[bot.pk].client

    await orm(command, bot, SimulatorCommand.Kind.STALL, seconds=0.5)
    await step_until(shard, has_status(bot, Status.CONNECTING))
    with pytest.raises(NotConnected, match="websocket not connected"):
        await client.send_text(CUSTOMER, "Oi")
    await step_until(shard, has_status(bot, Status.CONNECTED))

    assert shard.hosted[bot.pk].client is client
    stalled = await orm(lambda: SessionEvent.objects.filter(session_id=bot.pk, event="connecting").last())
    assert stalled.frame["lastError"] == "keepalive timeout (1 unanswered)"
    assert await client.send_text(CUSTOMER, "Voltei")
