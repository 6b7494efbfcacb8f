"""The reply pipeline's rules and database steps, called directly as a shard's DB threads call them."""

from __future__ import annotations

import datetime
import functools

import pytest
from django.utils import timezone

from bots import replies
from bots.gemini import Answer
from bots.models import TEXT_LIMIT, Bot, Direction, Message, MessageStatus, MessageType
from bots.replies import ASK, CANNED, FAIL, IGNORE, Work
from tests.helpers import make_bot
from whatsapp.models import Session, SimulatorSent
from whatsapp.providers.simulator import _send

CUSTOMER = "5511911112222@s.whatsapp.net"
GROUP = "120363025246125888@g.us"
BOT_PHONE = "5511987654321"
FENCE = ("shard-a", 3)
NOW = datetime.datetime(2026, 5, 4, 12, 0, tzinfo=datetime.UTC)


# --- The rules (no database) --------------------------------------------------------------


def rules_bot(**fields) -> Bot:
    return Bot(name="Padaria", **fields)


def session() -> Session:
    return Session(jid=f"{BOT_PHONE}:7@s.whatsapp.net", phone=BOT_PHONE)


def incoming(text: str = "Oi", **fields) -> Message:
    fields.setdefault("chat", CUSTOMER)
    fields.setdefault("created_at", NOW)
    return Message(direction=Direction.IN, text=text, **fields)


def decision(message: Message, **bot_fields) -> tuple[str, str]:
    result = replies.decide(message, rules_bot(**bot_fields), session(), NOW)
    return result.action, result.reason


@pytest.mark.parametrize(
    ("message", "bot_fields", "expected"),
    [
        pytest.param(incoming(), {}, (ASK, ""), id="text"),
        pytest.param(incoming(from_me=True), {}, (IGNORE, "own message"), id="own"),
        pytest.param(incoming(), {"is_active": False}, (IGNORE, "bot inactive"), id="inactive"),
        pytest.param(incoming(), {"deleted_at": NOW}, (IGNORE, "bot deleted"), id="deleted"),
        pytest.param(incoming(chat="status@broadcast"), {}, (IGNORE, "not a chat"), id="status-broadcast"),
        pytest.param(incoming(chat=GROUP), {}, (IGNORE, "group message"), id="group-off"),
        pytest.param(incoming(chat=GROUP), {"reply_in_groups": True}, (IGNORE, "not mentioned"), id="unmentioned"),
        pytest.param(
            incoming(chat=GROUP, mentions=["5511933334444@s.whatsapp.net"]),
            {"reply_in_groups": True},
            (IGNORE, "not mentioned"),
            id="someone-else-mentioned",
        ),
        pytest.param(
            incoming(chat=GROUP, mentions=[f"{BOT_PHONE}@s.whatsapp.net"]),
            {"reply_in_groups": True},
            (ASK, ""),
            id="mentioned",
        ),
        pytest.param(incoming("   "), {}, (IGNORE, "empty text"), id="blank"),
        pytest.param(incoming("", type=MessageType.OTHER), {}, (IGNORE, "unsupported message type"), id="other"),
        pytest.param(
            incoming("", type=MessageType.IMAGE), {"non_text_reply": ""}, (IGNORE, "not text"), id="media-off"
        ),
    ],
)
def test_it_decides_who_gets_an_answer(message, bot_fields, expected):
    assert decision(message, **bot_fields) == expected


@pytest.mark.parametrize("kind", [MessageType.IMAGE, MessageType.AUDIO, MessageType.STICKER])
def test_it_answers_media_with_the_bots_short_text(kind):
    result = replies.decide(incoming("", type=kind), rules_bot(non_text_reply="Só texto, por favor."), session(), NOW)

    assert (result.action, result.text) == (CANNED, "Só texto, por favor.")


def test_it_answers_media_in_portuguese_by_default():
    result = replies.decide(incoming("", type=MessageType.AUDIO), Bot(name="x"), session(), NOW)

    assert result.action == CANNED and "texto" in result.text


def test_it_leaves_stale_messages_unanswered(settings):
    settings.WHATSAPP_REPLY_MAX_AGE = 900
    written_long_ago = incoming(sent_at=NOW - datetime.timedelta(seconds=901))
    stored_long_ago = incoming(created_at=NOW - datetime.timedelta(seconds=901))
    recent = incoming(sent_at=NOW - datetime.timedelta(seconds=899))

    assert decision(written_long_ago) == (FAIL, "stale")
    assert decision(stored_long_ago) == (FAIL, "stale")
    assert decision(recent) == (ASK, "")
    # The own-message and inactive rules come first: those are never answered, stale or not.
    assert decision(incoming(from_me=True, sent_at=NOW - datetime.timedelta(hours=5))) == (IGNORE, "own message")


# --- The conversation ---------------------------------------------------------------------------


@pytest.fixture
def bot(alice) -> Bot:
    bot = make_bot(alice, system_prompt="Você é a atendente.", fallback_text="Volto já!")
    Session.objects.filter(pk=bot.pk).update(
        jid=f"{BOT_PHONE}:7@s.whatsapp.net", phone=BOT_PHONE, lease_owner=FENCE[0], lease_epoch=FENCE[1]
    )
    return bot


def stored(bot: Bot, text: str, *, direction: str = Direction.IN, status: str | None = None, **fields) -> Message:
    fields.setdefault("chat", CUSTOMER)
    fields.setdefault("sender", CUSTOMER if direction == Direction.IN else "")
    default = MessageStatus.RECEIVED if direction == Direction.IN else MessageStatus.SENT
    return Message.objects.create(bot=bot, direction=direction, text=text, status=status or default, **fields)


@pytest.mark.django_db
def test_it_gives_gemini_the_chat_as_alternating_turns(bot):
    first = stored(bot, "Oi", status=MessageStatus.REPLIED)
    stored(bot, "Olá! Como posso ajudar?", direction=Direction.OUT, in_reply_to=first)
    stored(bot, "Vocês entregam?", status=MessageStatus.REPLIED)
    stored(bot, "Entregamos sim.", direction=Direction.OUT, status=MessageStatus.FAILED)  # never left
    stored(bot, "E aceitam pix?", status=MessageStatus.IGNORED)
    stored(bot, "Oi de outro chat", chat="5511900000000@s.whatsapp.net")
    current = stored(bot, "Qual o endereço?")

    assert replies.history(current) == [
        ("user", "Oi"),
        ("model", "Olá! Como posso ajudar?"),
        ("user", "Vocês entregam?\nE aceitam pix?\nQual o endereço?"),
    ]


@pytest.mark.django_db
def test_it_counts_what_the_bots_phone_sent_as_the_models_and_starts_with_the_user(bot):
    stored(bot, "Bom dia! Hoje tem bolo.", direction=Direction.OUT)
    stored(bot, "Quanto custa?")
    stored(bot, "R$ 30", from_me=True, status=MessageStatus.IGNORED)
    current = stored(bot, "Tem de chocolate?")

    assert replies.history(current) == [("user", "Quanto custa?"), ("model", "R$ 30"), ("user", "Tem de chocolate?")]


@pytest.mark.django_db
def test_it_puts_a_late_reply_right_after_its_question(bot):
    # "dois" arrived while "um" was being answered: the answer was written after it, but belongs before it.
    first = stored(bot, "um", status=MessageStatus.REPLIED)
    current = stored(bot, "dois")
    stored(bot, "echo: um", direction=Direction.OUT, in_reply_to=first)
    stored(bot, "três")

    assert replies.history(current) == [("user", "um"), ("model", "echo: um"), ("user", "dois")]


@pytest.mark.django_db
def test_it_names_the_speakers_of_a_group(bot):
    stored(bot, "Bom dia", chat=GROUP, sender="5511933334444@s.whatsapp.net", push_name="Ana")
    current = stored(bot, "@bot abre hoje?", chat=GROUP, sender="5511944445555@s.whatsapp.net")

    assert replies.history(current) == [("user", "Ana: Bom dia\n5511944445555: @bot abre hoje?")]


@pytest.mark.django_db
def test_it_keeps_the_history_within_its_caps(bot, monkeypatch):
    monkeypatch.setattr(replies, "HISTORY_MESSAGES", 4)
    monkeypatch.setattr(replies, "HISTORY_CHARS", 100)
    for n in range(10):
        question = stored(bot, f"pergunta {n}", status=MessageStatus.REPLIED)
        stored(bot, f"resposta {n}", direction=Direction.OUT, in_reply_to=question)
    long = stored(bot, "x" * 70, status=MessageStatus.REPLIED)
    stored(bot, "ok", direction=Direction.OUT, in_reply_to=long)
    current = stored(bot, "y" * 500)

    # The message itself, cut to the character cap, leaves no room for the ones before it.
    assert replies.history(current) == [("user", "y" * 100)]
    monkeypatch.setattr(replies, "HISTORY_CHARS", 1000)
    # The 4 messages before it, and no more.
    assert replies.history(current) == [
        ("user", "pergunta 9"),
        ("model", "resposta 9"),
        ("user", "x" * 70),
        ("model", "ok"),
        ("user", "y" * 500),
    ]


# --- The database steps --------------------------------------------------------------------------


def status_of(message: Message) -> tuple[str, str]:
    message.refresh_from_db()
    return message.status, message.error


@pytest.mark.django_db
def test_it_asks_gemini_with_the_bots_persona(bot):
    message = stored(bot, "Tem pão?")

    prompt = replies.begin(message.pk, FENCE)

    assert isinstance(prompt, replies.Prompt)
    assert (prompt.model, prompt.temperature) == (bot.model, bot.temperature)
    assert (prompt.system_prompt, prompt.fallback_text) == ("Você é a atendente.", "Volto já!")
    assert (prompt.turns, prompt.chat) == ([("user", "Tem pão?")], CUSTOMER)
    assert prompt.sender == f"{BOT_PHONE}@s.whatsapp.net"
    assert status_of(message) == (MessageStatus.REPLYING, "")


@pytest.mark.django_db
def test_it_writes_nothing_for_a_shard_that_lost_the_lease(bot):
    message = stored(bot, "Tem pão?")

    assert replies.begin(message.pk, ("shard-b", 3)) is None
    assert replies.begin(message.pk, ("shard-a", 2)) is None
    assert status_of(message) == (MessageStatus.RECEIVED, "")

    prompt = replies.begin(message.pk, FENCE)
    assert replies.finish(prompt, Answer("Tem sim!"), ("shard-a", 4)) is None
    assert status_of(message) == (MessageStatus.REPLYING, "")
    assert not Message.objects.filter(direction=Direction.OUT).exists()


@pytest.mark.django_db
def test_it_marks_ignored_messages_with_the_reason(bot):
    Bot.objects.filter(pk=bot.pk).update(is_active=False)
    message = stored(bot, "Tem pão?")

    assert replies.begin(message.pk, FENCE) is None
    assert status_of(message) == (MessageStatus.IGNORED, "bot inactive")
    assert replies.begin(message.pk, FENCE) is None, "decided once"


@pytest.mark.django_db
def test_it_queues_exactly_one_reply_per_message(bot):
    message = stored(bot, "Tem pão?")
    prompt = replies.begin(message.pk, FENCE)

    work = replies.finish(prompt, Answer("Tem sim!", latency_ms=321), FENCE)
    again = replies.finish(prompt, Answer("Tem sim, de novo!", latency_ms=5), FENCE)

    assert again is None
    reply = Message.objects.get(direction=Direction.OUT)
    assert work == Work(reply.pk, bot.pk, CUSTOMER, Direction.OUT, "Tem sim!")
    assert (reply.status, reply.in_reply_to_id, reply.sender) == (
        MessageStatus.QUEUED,
        message.pk,
        f"{BOT_PHONE}@s.whatsapp.net",
    )
    message.refresh_from_db()
    assert (message.status, message.ai_latency_ms, message.error) == (MessageStatus.REPLIED, 321, "")


@pytest.mark.django_db
def test_it_sends_the_fallback_text_and_keeps_the_reason(bot):
    message = stored(bot, "Tem pão?")
    prompt = replies.begin(message.pk, FENCE)

    work = replies.finish(prompt, Answer(None, "gemini 503 UNAVAILABLE", 2400), FENCE)

    assert work.text == "Volto já!"
    message.refresh_from_db()
    assert (message.status, message.error, message.ai_latency_ms) == (
        MessageStatus.REPLIED,
        "gemini 503 UNAVAILABLE",
        2400,
    )


@pytest.mark.django_db
def test_it_fails_a_message_it_has_nothing_to_send_for(bot):
    Bot.objects.filter(pk=bot.pk).update(fallback_text="")
    message = stored(bot, "Tem pão?")
    prompt = replies.begin(message.pk, FENCE)

    assert replies.finish(prompt, Answer(None, "finish reason SAFETY"), FENCE) is None
    assert status_of(message) == (MessageStatus.FAILED, "finish reason SAFETY; no fallback text")
    assert not Message.objects.filter(direction=Direction.OUT).exists()


@pytest.mark.django_db
def test_it_cuts_a_long_answer_to_one_whatsapp_message(bot):
    message = stored(bot, "Conte uma história")
    prompt = replies.begin(message.pk, FENCE)

    work = replies.finish(prompt, Answer("a" * (TEXT_LIMIT + 500)), FENCE)

    assert len(work.text) == TEXT_LIMIT
    assert Message.objects.filter(direction=Direction.OUT).count() == 1


@pytest.mark.django_db
def test_it_queues_the_media_reply_without_asking_gemini(bot):
    message = stored(bot, "", type=MessageType.STICKER)

    work = replies.begin(message.pk, FENCE)

    assert isinstance(work, Work) and work.text == bot.non_text_reply
    assert status_of(message) == (MessageStatus.REPLIED, "")


@pytest.mark.django_db
def test_it_sends_each_outbox_message_once_under_the_lease(bot):
    queued = stored(bot, "Seu pedido saiu!", direction=Direction.OUT, status=MessageStatus.QUEUED)

    assert not replies.claim(queued.pk, ("shard-b", 3))
    assert replies.claim(queued.pk, FENCE)
    assert not replies.claim(queued.pk, FENCE), "claimed already"
    wa_id = _send(bot.pk, CUSTOMER, queued.text, functools.partial(replies.mark_sent, queued.pk), "")

    queued.refresh_from_db()
    assert (queued.status, queued.wa_id) == (MessageStatus.SENT, wa_id)
    assert queued.sent_at is not None
    assert list(SimulatorSent.objects.values_list("to", "text")) == [(CUSTOMER, "Seu pedido saiu!")]


@pytest.mark.django_db
def test_a_send_that_left_is_sent_even_when_the_lease_moved_meanwhile(bot):
    # As with neonize: the network has the message before the platform can record it, so a lease
    # lost in between cannot undo it; the record says what the customer got.
    queued = stored(bot, "Seu pedido saiu!", direction=Direction.OUT, status=MessageStatus.QUEUED)
    assert replies.claim(queued.pk, FENCE)
    Session.objects.filter(pk=bot.pk).update(lease_owner="shard-b", lease_epoch=4)

    wa_id = _send(bot.pk, CUSTOMER, queued.text, functools.partial(replies.mark_sent, queued.pk), str(queued.pk))

    assert status_of(queued) == (MessageStatus.SENT, "")
    assert list(SimulatorSent.objects.values_list("wa_id", "text")) == [(wa_id, "Seu pedido saiu!")]


@pytest.mark.django_db
def test_a_simulated_send_repeated_under_its_ref_reaches_the_customer_once(bot):
    # A host died after the network had the message and before its `sent` mark: its next host sends
    # it again, under the same ref, and the customer's phone shows it once.
    queued = stored(bot, "Seu pedido saiu!", direction=Direction.OUT, status=MessageStatus.SENDING)
    first = _send(bot.pk, CUSTOMER, queued.text, None, str(queued.pk))

    again = _send(bot.pk, CUSTOMER, queued.text, functools.partial(replies.mark_sent, queued.pk), str(queued.pk))

    assert again == first
    assert SimulatorSent.objects.filter(bot_id=bot.pk).count() == 1
    queued.refresh_from_db()
    assert (queued.status, queued.wa_id) == (MessageStatus.SENT, first)


@pytest.mark.django_db
def test_it_puts_back_or_fails_what_a_dead_host_was_sending(bot):
    asked = stored(bot, "Oi", status=MessageStatus.REPLYING)
    waiting = stored(bot, "Tudo?")
    sending = stored(bot, "Tudo sim", direction=Direction.OUT, status=MessageStatus.SENDING)
    queued = stored(bot, "Até", direction=Direction.OUT, status=MessageStatus.QUEUED)
    stored(bot, "Enviada", direction=Direction.OUT, status=MessageStatus.SENT)

    work = replies.recover(bot.pk, FENCE, resend=True)

    # The simulator delivers one message per ref: sent again, it arrives once.
    assert status_of(sending) == (MessageStatus.QUEUED, "")
    assert [w.id for w in work] == [asked.pk, waiting.pk, sending.pk, queued.pk]

    Message.objects.filter(pk=sending.pk).update(status=MessageStatus.SENDING)
    replies.recover(bot.pk, FENCE, resend=False)

    # neonize: it may have left, and cannot be sent again under its id: not sent again.
    assert status_of(sending) == (MessageStatus.FAILED, replies.INTERRUPTED)


@pytest.mark.django_db
def test_it_finds_the_work_of_the_bots_it_hosts(bot, bob):
    other = make_bot(bob)
    answered = stored(bot, "Oi", status=MessageStatus.REPLIED)
    waiting = stored(bot, "Tudo?")
    queued = stored(bot, "Até", direction=Direction.OUT, status=MessageStatus.QUEUED)
    stored(other, "Não é meu")

    assert [w.id for w in replies.pending([bot.pk], [bot.pk])] == [waiting.pk, queued.pk]
    assert [w.id for w in replies.pending([bot.pk], [])] == [waiting.pk]
    assert [w.id for w in replies.pending([], [bot.pk])] == [queued.pk]
    assert replies.pending([], []) == []
    assert answered.pk not in [w.id for w in replies.pending([bot.pk], [bot.pk])]


@pytest.mark.django_db
def test_it_gives_stale_messages_up(bot, settings):
    settings.WHATSAPP_REPLY_MAX_AGE = 60
    message = stored(bot, "Oi", sent_at=timezone.now() - datetime.timedelta(minutes=5))

    assert replies.begin(message.pk, FENCE) is None
    assert status_of(message) == (MessageStatus.FAILED, "stale")
