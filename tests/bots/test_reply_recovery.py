"""A shard killed while Gemini is answering: the real pool, the simulator, the fake Gemini server.

The message is stored and the model is thinking (the fake server holds its
answer) when the shard gets SIGKILL. The supervisor restarts it; the new shard
takes the bot, finds the message without a reply, asks again and answers.
What the person receives is exactly one reply.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest
from django.utils import timezone

from bots.models import Direction, Message, MessageStatus
from tests.fake_gemini import FakeGemini, held
from tests.hosting import paired
from tests.processes import pid_of, start_pool, wait_until
from whatsapp.models import Session, SimulatorInbound, SimulatorSent

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

CUSTOMER = "5511911112222@s.whatsapp.net"


def test_it_answers_exactly_once_after_the_shard_dies_between_storing_and_replying(alice):
    bot = paired(alice)
    thinking = threading.Event()
    with FakeGemini() as fake:
        fake.script(held(thinking))
        pool = start_pool(GEMINI_BASE_URL=fake.url)
        try:
            wait_until(
                lambda: Session.objects.get(pk=bot.pk).status == "connected",
                timeout=30,
                message=f"the bot did not connect:\n{pool.log()}",
            )
            SimulatorInbound.objects.create(
                bot=bot, wa_id="3EB0KILL", chat=CUSTOMER, sender=CUSTOMER, text="Tem pão?", timestamp=timezone.now()
            )
            fake.wait_for_requests(1, timeout=30)
            message = Message.objects.get(bot=bot, wa_id="3EB0KILL")
            assert message.status == MessageStatus.REPLYING

            owner = Session.objects.get(pk=bot.pk).lease_owner
            os.kill(pid_of(f"--shard-id {owner}"), signal.SIGKILL)
            thinking.set()  # its answer goes to a dead connection

            def answered() -> bool:
                message.refresh_from_db()
                reply = Message.objects.filter(in_reply_to=message).first()
                return message.status == MessageStatus.REPLIED and reply is not None and reply.status == "sent"

            wait_until(answered, timeout=60, interval=0.2, message=f"no reply after the restart:\n{pool.log()}")
        finally:
            pool.stop()

    assert list(SimulatorSent.objects.filter(bot=bot).values_list("to", "text")) == [(CUSTOMER, "echo: Tem pão?")]
    assert Message.objects.filter(bot=bot, direction=Direction.OUT).count() == 1
    assert Message.objects.filter(bot=bot, direction=Direction.IN).count() == 1
    assert len(fake.requests) == 2, "asked again by the new shard, once"
    assert Session.objects.get(pk=bot.pk).lease_epoch >= 2, "another shard took the bot"
