"""Gemini down for a while: people get the bot's fallback text, then its answers again (README "Replies").

A paired simulator bot on a running pool, the fake Gemini answering. Gemini
goes away (connection refused) or is overloaded (503 on every call): each
message written meanwhile gets the bot's fallback text within the reply
deadline, once, and the reason is kept on the message for the operator.
When Gemini is back, the next messages get its answers, with nothing restarted.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from bots.models import Bot, Direction, Message, MessageStatus
from tests.chaos.people import (
    answers_expected,
    answers_received,
    phone,
    wait_until_settled,
    write,
    write_many,
)
from tests.fake_gemini import FakeGemini, error
from tests.hosting import paired
from tests.processes import Proc, start_pool, wait_until
from whatsapp.models import Session, SimulatorInbound

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True), pytest.mark.timeout(90)]

FALLBACK = "Estamos com instabilidade; respondemos em instantes."
DEADLINE = 3  # GEMINI_REPLY_DEADLINE: seconds for one reply, retries included
PEOPLE = 4
people = itertools.count()


def bot_with_fallback(owner) -> Bot:
    bot = paired(owner)
    Bot.objects.filter(pk=bot.pk).update(fallback_text=FALLBACK)
    return bot


def start_replying_pool(fake: FakeGemini) -> Proc:
    return start_pool(GEMINI_BASE_URL=fake.url, GEMINI_REPLY_DEADLINE=str(DEADLINE), GEMINI_REQUEST_TIMEOUT="1")


def people_write(bot: Bot, texts: str) -> list[SimulatorInbound]:
    rows = [write(bot, phone(next(people)), f"{texts} {n}") for n in range(PEOPLE)]
    write_many(rows)
    return rows


def conversation_through_an_outage(
    owner, fake: FakeGemini, stop_at_end, outage: Callable[[], None], recovery: Callable[[], object]
) -> tuple[Bot, list[SimulatorInbound]]:
    """Messages before, during and after an outage; returns the bot and what was written during the outage."""
    bot = bot_with_fallback(owner)
    pool = stop_at_end(start_replying_pool(fake))
    wait_until(lambda: Session.objects.get(pk=bot.pk).status == "connected", timeout=30, message=pool.log())
    before = people_write(bot, "Bom dia")
    wait_until_settled([bot.pk], len(before), timeout=20, log=pool.log)

    outage()
    during = people_write(bot, "Tem pão?")
    wait_until_settled([bot.pk], len(before) + len(during), timeout=30, log=pool.log)

    recovery()
    after = people_write(bot, "E agora?")
    wait_until_settled([bot.pk], len(before) + len(during) + len(after), timeout=30, log=pool.log)

    expected = answers_expected(before + after)[bot.pk]
    for row in during:
        expected[(row.chat, FALLBACK)] += 1
    assert answers_received([bot.pk])[bot.pk] == expected, "the fallback during the outage, answers around it, once"
    assert pool.log().count("started (capacity") == 1, "nothing was restarted"
    return bot, during


def outage_messages(bot: Bot, during: list[SimulatorInbound]) -> list[Message]:
    messages = list(Message.objects.filter(bot=bot, direction=Direction.IN, wa_id__in=[row.wa_id for row in during]))
    assert len(messages) == PEOPLE and {m.status for m in messages} == {MessageStatus.REPLIED}
    for message in messages:
        assert message.ai_latency_ms <= (DEADLINE + 1) * 1000, "the fallback went within the reply deadline"
    return messages


def test_it_sends_the_fallback_while_gemini_refuses_connections_and_answers_once_it_is_back(
    alice, fake_gemini, stop_at_end
):
    port = int(fake_gemini.url.rsplit(":", 1)[1])

    def restart() -> FakeGemini:
        return stop_at_end(FakeGemini(latency=0.2, port=port).start())

    bot, during = conversation_through_an_outage(alice, fake_gemini, stop_at_end, fake_gemini.stop, restart)

    for message in outage_messages(bot, during):
        assert message.error.startswith("connection failed"), (
            f"the operator sees why the fallback went: {message.error}"
        )


def test_it_sends_the_fallback_while_gemini_answers_503_and_answers_once_it_recovers(alice, fake_gemini, stop_at_end):
    def overloaded() -> None:
        # More 503s than the outage's calls (each message is tried up to 3 times): every call fails.
        fake_gemini.script(*[error(503, "The model is overloaded.") for _ in range(PEOPLE * 10)])

    bot, during = conversation_through_an_outage(alice, fake_gemini, stop_at_end, overloaded, fake_gemini.reset)

    for message in outage_messages(bot, during):
        assert message.error == "gemini 503 UNAVAILABLE", message.error
