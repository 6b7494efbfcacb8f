"""Replies end to end in one process: a shard, the simulator as WhatsApp, the real SDK, the fake Gemini server.

Messages arrive as the simulator's endpoint leaves them (pending delivery
rows); what the person on the other end receives is the simulator's record of
sent messages. Assertions are on those, on the stored messages and on what
reached the fake Gemini server.
"""

from __future__ import annotations

import datetime
import threading
import uuid

import pytest
from django.db.models import F
from django.utils import timezone

from bots.models import Bot, Direction, Message, MessageStatus
from tests.fake_gemini import error, held, prompt_blocked, slow
from tests.hosting import has_status, orm, paired, step_until
from whatsapp.models import Session, SimulatorInbound, SimulatorSent, Status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

CUSTOMER = "5511911112222@s.whatsapp.net"
GROUP = "120363025246125888@g.us"
BOT_NUMBER = "5511987654321"  # the phone of tests.hosting.paired


def pending(bot: Bot, text: str, *, sender: str = CUSTOMER, wa_id: str | None = None, **fields) -> SimulatorInbound:
    """What POST /simulator/inbound leaves for the hosting shard to deliver."""
    return SimulatorInbound(
        bot=bot,
        wa_id=wa_id or f"3EB0{uuid.uuid4().hex[:16].upper()}",
        chat=fields.pop("chat", sender),
        sender=sender,
        text=text,
        timestamp=fields.pop("timestamp", timezone.now()),
        **fields,
    )


def deliver(bot: Bot, text: str, **fields) -> SimulatorInbound:
    row = pending(bot, text, **fields)
    row.save()
    return row


def deliver_at_once(bot: Bot, texts: dict[str, str]) -> None:
    """Messages from many people (sender: text), all waiting to be delivered at the same moment."""
    SimulatorInbound.objects.bulk_create([pending(bot, text, sender=sender) for sender, text in texts.items()])


def sent(bot: Bot) -> list[tuple[str, str]]:
    """What the person (or group) on the other end received, in order: (to, text)."""
    return list(SimulatorSent.objects.filter(bot=bot).order_by("id").values_list("to", "text"))


def inbound(bot: Bot, wa_id: str) -> Message:
    return Message.objects.get(bot=bot, direction=Direction.IN, wa_id=wa_id)


def settled(bot: Bot, count: int):
    """`count` inbound messages stored, none of them still waiting for a reply or a send."""

    def check() -> bool:
        rows = Message.objects.filter(bot=bot)
        unsettled = rows.filter(
            status__in=[MessageStatus.RECEIVED, MessageStatus.REPLYING, MessageStatus.QUEUED, MessageStatus.SENDING]
        )
        return rows.filter(direction=Direction.IN).count() == count and not unsettled.exists()

    return check


async def connected_bot(shards, owner, **fields):
    shard = await shards()
    bot = await orm(paired, owner)
    if fields:
        await orm(Bot.objects.filter(pk=bot.pk).update, **fields)
    await step_until(shard, has_status(bot, Status.CONNECTED))
    return shard, bot


async def test_it_answers_with_the_persona_and_the_conversation_so_far(shards, alice, fake_gemini):
    shard, bot = await connected_bot(
        shards,
        alice,
        system_prompt="Você é a atendente da Padaria Pão Quente.",
        model="gemini-2.5-flash-lite",
        temperature=0.3,
    )

    first = await orm(deliver, bot, "Oi, vocês abrem hoje?")
    await step_until(shard, settled(bot, 1))
    await orm(deliver, bot, "E tem pão de queijo?")
    await step_until(shard, settled(bot, 2))

    assert await orm(sent, bot) == [
        (CUSTOMER, "echo: Oi, vocês abrem hoje?"),
        (CUSTOMER, "echo: E tem pão de queijo?"),
    ]
    request = fake_gemini.requests[-1]
    assert request.path == "/v1beta/models/gemini-2.5-flash-lite:generateContent"
    assert request.headers["x-goog-api-key"] == "test-key"
    assert request.system_instruction == "Você é a atendente da Padaria Pão Quente."
    assert request.turns == [
        ("user", "Oi, vocês abrem hoje?"),
        ("model", "echo: Oi, vocês abrem hoje?"),
        ("user", "E tem pão de queijo?"),
    ]
    assert request.generation_config["temperature"] == 0.3

    message = await orm(inbound, bot, first.wa_id)
    assert (message.status, message.error) == (MessageStatus.REPLIED, "")
    assert message.ai_latency_ms is not None
    reply = await orm(lambda: message.reply)
    assert (reply.direction, reply.status, reply.chat) == (Direction.OUT, MessageStatus.SENT, CUSTOMER)
    assert reply.wa_id == (await orm(SimulatorSent.objects.order_by("id").first)).wa_id
    assert reply.sender == f"{BOT_NUMBER}@s.whatsapp.net"


async def test_it_stores_and_answers_a_message_delivered_twice_once(shards, alice, fake_gemini):
    shard, bot = await connected_bot(shards, alice)

    await orm(deliver, bot, "Oi!", wa_id="3EB0TWICE")
    await step_until(shard, settled(bot, 1))
    again = await orm(deliver, bot, "Oi!", wa_id="3EB0TWICE")
    await step_until(shard, lambda: SimulatorInbound.objects.get(pk=again.pk).delivered_at is not None)
    await step_until(shard, settled(bot, 1))

    assert await orm(Message.objects.filter(bot=bot, direction=Direction.IN).count) == 1
    assert await orm(sent, bot) == [(CUSTOMER, "echo: Oi!")]
    assert len(fake_gemini.requests) == 1


async def test_it_stores_but_never_answers_its_own_messages(shards, alice, fake_gemini):
    shard, bot = await connected_bot(shards, alice)

    # Typed on the bot's phone by a person: part of the conversation, not a question.
    own = await orm(deliver, bot, "Já te respondo!", sender=f"{BOT_NUMBER}@s.whatsapp.net", chat=CUSTOMER, from_me=True)
    await step_until(shard, settled(bot, 1))
    await orm(deliver, bot, "Obrigado")
    await step_until(shard, settled(bot, 2))

    message = await orm(inbound, bot, own.wa_id)
    assert (message.status, message.error) == (MessageStatus.IGNORED, "own message")
    assert await orm(sent, bot) == [(CUSTOMER, "echo: Obrigado")]
    # A conversation starts with the user's turn: the bot's own earlier words before it are left out.
    assert fake_gemini.requests[-1].turns == [("user", "Obrigado")]


async def test_it_does_not_answer_for_an_inactive_bot(shards, alice, fake_gemini):
    shard, bot = await connected_bot(shards, alice, is_active=False)

    row = await orm(deliver, bot, "Alguém aí?")
    await step_until(shard, settled(bot, 1))

    message = await orm(inbound, bot, row.wa_id)
    assert (message.status, message.error, message.text) == (MessageStatus.IGNORED, "bot inactive", "Alguém aí?")
    assert await orm(sent, bot) == []
    assert fake_gemini.requests == []


async def test_it_answers_in_groups_only_when_enabled_and_mentioned(shards, alice, fake_gemini):
    shard, bot = await connected_bot(shards, alice)
    member = "5511933334444@s.whatsapp.net"
    mention = [f"{BOT_NUMBER}@s.whatsapp.net"]

    off = await orm(deliver, bot, "@bot abre hoje?", sender=member, chat=GROUP, mentions=mention, push_name="Ana")
    await step_until(shard, settled(bot, 1))
    await orm(Bot.objects.filter(pk=bot.pk).update, reply_in_groups=True)
    chatter = await orm(deliver, bot, "Bom dia, pessoal", sender=member, chat=GROUP, push_name="Ana")
    await step_until(shard, settled(bot, 2))
    await orm(deliver, bot, "@bot que horas abre?", sender=member, chat=GROUP, mentions=mention, push_name="Ana")
    await step_until(shard, settled(bot, 3))

    assert ((await orm(inbound, bot, off.wa_id)).error, (await orm(inbound, bot, chatter.wa_id)).error) == (
        "group message",
        "not mentioned",
    )
    # The group's earlier messages are context, each with its author's name.
    assert await orm(sent, bot) == [
        (GROUP, "echo: Ana: @bot abre hoje?\nAna: Bom dia, pessoal\nAna: @bot que horas abre?")
    ]
    assert len(fake_gemini.requests) == 1


async def test_it_answers_media_with_the_bots_short_text(shards, alice, fake_gemini):
    shard, bot = await connected_bot(shards, alice, non_text_reply="Só leio texto, desculpe!")

    row = await orm(deliver, bot, "", type="audio")
    await step_until(shard, settled(bot, 1))

    assert await orm(sent, bot) == [(CUSTOMER, "Só leio texto, desculpe!")]
    assert (await orm(inbound, bot, row.wa_id)).status == MessageStatus.REPLIED
    assert fake_gemini.requests == []


async def test_it_answers_in_order_within_a_chat(shards, alice, fake_gemini):
    shard, bot = await connected_bot(shards, alice)
    # The first answer is the slowest: a reply must still never overtake the one before it.
    fake_gemini.script(slow(0.3), slow(0.1))

    for text in ("um", "dois", "três"):
        await orm(deliver, bot, text)
    await step_until(shard, settled(bot, 3))

    assert [text for _, text in await orm(sent, bot)] == ["echo: um", "echo: dois", "echo: três"]
    assert fake_gemini.peak_in_flight == 1
    assert fake_gemini.requests[-1].turns[-3:] == [("user", "dois"), ("model", "echo: dois"), ("user", "três")]


async def test_it_answers_fifty_chats_at_once(shards, alice, fake_gemini):
    # Long enough that the shard has all fifty calls out before the first answer, even on a busy machine.
    fake_gemini.latency = 1.0
    shard, bot = await connected_bot(shards, alice)

    await orm(deliver_at_once, bot, {f"55119{n:08d}@s.whatsapp.net": f"pergunta {n}" for n in range(50)})
    await step_until(shard, settled(bot, 50), timeout=30)

    assert fake_gemini.peak_in_flight >= 40
    replies = await orm(sent, bot)
    assert sorted(replies) == sorted((f"55119{n:08d}@s.whatsapp.net", f"echo: pergunta {n}") for n in range(50))


async def test_it_keeps_gemini_calls_within_the_shards_concurrency(shards, alice, fake_gemini, settings):
    settings.WHATSAPP_AI_CONCURRENCY = 3
    fake_gemini.latency = 0.05
    shard, bot = await connected_bot(shards, alice)

    await orm(deliver_at_once, bot, {f"55119{n:08d}@s.whatsapp.net": f"oi {n}" for n in range(12)})
    await step_until(shard, settled(bot, 12), timeout=30)

    assert fake_gemini.peak_in_flight == 3
    assert len(await orm(sent, bot)) == 12


@pytest.mark.parametrize(
    ("script", "text", "reason", "requests"),
    [
        pytest.param([error(429)], "echo: Oi?", "", 2, id="429-then-200"),
        pytest.param([error(500)] * 3, "Volto já!", "gemini 500 INTERNAL", 3, id="persistent-500"),
        pytest.param([slow(2)] * 3, "Volto já!", "timeout", 3, id="timeout"),
        pytest.param([prompt_blocked()], "Volto já!", "prompt blocked: SAFETY", 1, id="blocked"),
    ],
)
async def test_it_retries_then_sends_the_fallback_and_loses_nothing(
    shards, alice, fake_gemini, settings, script, text, reason, requests
):
    settings.GEMINI_REQUEST_TIMEOUT = 0.3
    shard, bot = await connected_bot(shards, alice, fallback_text="Volto já!")
    fake_gemini.script(*script)

    row = await orm(deliver, bot, "Oi?")
    await step_until(shard, settled(bot, 1))

    assert await orm(sent, bot) == [(CUSTOMER, text)]
    message = await orm(inbound, bot, row.wa_id)
    assert (message.status, message.error) == (MessageStatus.REPLIED, reason)
    assert message.ai_latency_ms is not None
    assert len(fake_gemini.requests) == requests


async def test_it_fails_a_message_it_cannot_answer_without_a_fallback(shards, alice, fake_gemini):
    shard, bot = await connected_bot(shards, alice, fallback_text="")
    fake_gemini.script(prompt_blocked())

    row = await orm(deliver, bot, "Algo proibido")
    await step_until(shard, settled(bot, 1))

    message = await orm(inbound, bot, row.wa_id)
    assert (message.status, message.error) == (MessageStatus.FAILED, "prompt blocked: SAFETY; no fallback text")
    assert await orm(sent, bot) == []


async def test_it_does_not_answer_stale_messages(shards, alice, fake_gemini, settings):
    settings.WHATSAPP_REPLY_MAX_AGE = 60
    shard, bot = await connected_bot(shards, alice)

    # Sent two hours ago, delivered now (as WhatsApp's offline queue does after an outage).
    old = await orm(deliver, bot, "Ainda estão abertos?", timestamp=timezone.now() - datetime.timedelta(hours=2))
    await step_until(shard, settled(bot, 1))

    message = await orm(inbound, bot, old.wa_id)
    assert (message.status, message.error) == (MessageStatus.FAILED, "stale")
    assert await orm(sent, bot) == []
    assert fake_gemini.requests == []


async def test_it_sends_operator_messages_from_the_outbox(shards, alice, fake_gemini):
    shard, bot = await connected_bot(shards, alice)

    def queue() -> Message:
        # What POST /api/bots/{id}/messages writes.
        return Message.objects.create(
            bot=bot, chat=CUSTOMER, direction=Direction.OUT, text="Seu pedido saiu!", status=MessageStatus.QUEUED
        )

    queued = await orm(queue)
    await step_until(shard, lambda: Message.objects.get(pk=queued.pk).status == MessageStatus.SENT)

    assert await orm(sent, bot) == [(CUSTOMER, "Seu pedido saiu!")]
    assert (await orm(Message.objects.get, pk=queued.pk)).wa_id


@pytest.mark.parametrize("it_had_left", [False, True], ids=["send-not-made", "send-made-not-marked"])
async def test_it_picks_up_what_a_dead_shard_left_and_sends_nothing_twice(shards, alice, fake_gemini, it_had_left):
    bot = await orm(paired, alice)

    def left_behind() -> tuple[Message, Message, Message]:
        # A shard died holding the lease (epoch 1): one message was being answered, one
        # reply was being sent (it may have reached the network before the host died, its
        # `sent` mark not), and one reply was queued.
        Session.objects.filter(pk=bot.pk).update(lease_epoch=1)
        asked = Message.objects.create(
            bot=bot, chat=CUSTOMER, sender=CUSTOMER, direction=Direction.IN, wa_id="A", text="Oi", status="replying"
        )
        answered = Message.objects.create(
            bot=bot, chat=CUSTOMER, sender=CUSTOMER, direction=Direction.IN, wa_id="B", text="Tudo?", status="replied"
        )
        sending = Message.objects.create(
            bot=bot, chat=CUSTOMER, direction=Direction.OUT, text="Tudo sim!", status="sending", in_reply_to=answered
        )
        if it_had_left:
            SimulatorSent.objects.create(bot=bot, wa_id="3EB0LEFT", to=CUSTOMER, text="Tudo sim!", ref=str(sending.pk))
        queued = Message.objects.create(bot=bot, chat=CUSTOMER, direction=Direction.OUT, text="Até", status="queued")
        return asked, sending, queued

    asked, sending, queued = await orm(left_behind)
    shard = await shards()
    await step_until(shard, settled(bot, 2))

    assert sorted(await orm(sent, bot)) == sorted([(CUSTOMER, "echo: Oi"), (CUSTOMER, "Tudo sim!"), (CUSTOMER, "Até")])
    assert len(fake_gemini.requests) == 1
    for row in (sending, queued):
        assert (await orm(Message.objects.get, pk=row.pk)).status == MessageStatus.SENT
    if it_had_left:
        assert (await orm(Message.objects.get, pk=sending.pk)).wa_id == "3EB0LEFT", "the send that left, recorded"
    assert (await orm(Message.objects.get, pk=asked.pk)).status == MessageStatus.REPLIED


async def test_it_stops_replying_for_a_bot_whose_lease_it_lost(shards, alice, fake_gemini):
    shard, bot = await connected_bot(shards, alice)
    gate = threading.Event()
    fake_gemini.script(held(gate))

    row = await orm(deliver, bot, "Oi")
    await step_until(shard, lambda: len(fake_gemini.requests) == 1)
    # Another shard took the bot while Gemini was thinking.
    await orm(
        Session.objects.filter(pk=bot.pk).update,
        lease_owner="someone-else",
        lease_epoch=F("lease_epoch") + 1,
        lease_expires_at=timezone.now() + datetime.timedelta(seconds=60),
    )
    gate.set()
    await step_until(shard, lambda: bot.pk not in shard.hosted)
    await shard.replies.stop()

    message = await orm(inbound, bot, row.wa_id)
    assert message.status == MessageStatus.REPLYING, "left for the new host to answer"
    assert await orm(Message.objects.filter(bot=bot, direction=Direction.OUT).count) == 0
    assert await orm(sent, bot) == []
