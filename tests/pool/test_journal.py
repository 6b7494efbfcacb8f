"""What reached a shard is never dropped: its journal, the store's retries, the replay of a dead shard's.

WhatsApp counts a message delivered once the library's callback returns, before the shard has
stored it (the simulator behaves the same): these tests show that a database error or a crash
after that point loses nothing and answers nothing twice.
"""

from __future__ import annotations

import os
import threading
import uuid

import pytest
from django.db import OperationalError
from django.utils import timezone

from bots.inbox import store_inbound
from bots.models import Direction, Message, MessageStatus
from pool import inbox, journal
from tests.hosting import connected, orm, paired, step_until
from whatsapp.models import SimulatorInbound, SimulatorSent
from whatsapp.providers.base import Inbound

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

CUSTOMER = "5511912345678@s.whatsapp.net"


def message(text: str, wa_id: str | None = None) -> Inbound:
    return Inbound(
        wa_id=wa_id or f"3EB0{uuid.uuid4().hex[:16].upper()}",
        chat=CUSTOMER,
        sender=CUSTOMER,
        text=text,
        push_name="Dona Maria",
        mentions=("5511987654321@s.whatsapp.net",),
        timestamp=timezone.now(),
    )


def inbound_texts(bot) -> list[str]:
    return list(Message.objects.filter(bot=bot, direction=Direction.IN).order_by("pk").values_list("text", flat=True))


@pytest.fixture(autouse=True)
def journal_dir(settings, tmp_path):
    settings.WHATSAPP_JOURNAL_DIR = tmp_path / "journal"
    return settings.WHATSAPP_JOURNAL_DIR


def a_dead_shards_journal(directory, bot_id, texts: list[str], done: int = 0) -> journal.Journal:
    """A shard journaled these messages (the first ``done`` of them stored) and died: its lock is gone."""
    dead = journal.Journal(directory, f"vm:{os.getpid()}:9:dead")
    seqs = [dead.append(bot_id, message(text)) for text in texts]
    dead.done(seqs[:done])
    os.close(dead.fd)  # as the kernel does when the process dies: no clean close, no removal
    return dead


async def test_what_a_dead_shard_journaled_is_stored_and_answered_by_the_next(shards, alice, journal_dir, fake_gemini):
    bot = await orm(paired, alice)
    dead = await orm(a_dead_shards_journal, journal_dir, bot.pk, ["Já respondida", "Tem pão?", "Até que horas?"], 1)
    shard = await shards()

    await step_until(shard, lambda: SimulatorSent.objects.filter(bot=bot).count() == 2)

    assert await orm(inbound_texts, bot) == ["Tem pão?", "Até que horas?"], "the stored one is not stored again"
    stored = await orm(Message.objects.get, bot=bot, text="Tem pão?")
    assert (stored.push_name, stored.chat) == ("Dona Maria", CUSTOMER)
    assert stored.mentions == ["5511987654321@s.whatsapp.net"]
    assert sorted(await orm(lambda: list(SimulatorSent.objects.values_list("text", flat=True)))) == [
        "echo: Até que horas?",
        "echo: Tem pão?",
    ]
    assert not dead.path.exists(), "replayed, then removed"


async def test_a_replay_stores_nothing_twice(shards, alice, journal_dir):
    bot = await orm(paired, alice)
    first = message("Oi", wa_id="3EB0SAME")
    await orm(store_inbound, [(bot.pk, first)])
    dead = journal.Journal(journal_dir, "vm:1:0:dead")
    dead.append(bot.pk, first)  # stored, but the shard died before its done mark
    os.close(dead.fd)
    shard = await shards()

    await step_until(shard, lambda: not dead.path.exists())

    assert await orm(inbound_texts, bot) == ["Oi"]


async def test_a_live_shards_journal_is_left_alone(shards, alice, journal_dir):
    bot = await orm(paired, alice)
    live = journal.Journal(journal_dir, "vm:1:0:live")
    live.append(bot.pk, message("Ainda na fila"))
    shard = await shards()

    for _ in range(3):
        shard.inbox.last_replay = -inbox.REPLAY_SECONDS
        await shard.step()

    assert await orm(inbound_texts, bot) == [], "its own shard stores it"
    assert live.path.exists()
    live.close()


def test_a_line_cut_short_by_a_crash_is_skipped(journal_dir):
    bot_id = uuid.uuid4()
    dead = journal.Journal(journal_dir, "vm:1:0:cut")
    dead.append(bot_id, message("Inteira"))
    os.write(dead.fd, journal.encode(2, bot_id, message("Cortada"))[:40])  # the write a SIGKILL interrupted
    os.close(dead.fd)

    [orphan] = journal.orphans(journal_dir)
    assert [entry.text for _, _, entry in orphan.entries()] == ["Inteira"]
    orphan.close()


def test_appends_from_many_threads_are_whole_lines_each_on_disk(journal_dir):
    # Provider callbacks run on many library threads at once: one fsync may cover several of them.
    shared = journal.Journal(journal_dir, "vm:1:0:threads")
    bot_id = uuid.uuid4()

    def callbacks(n: int) -> None:
        for i in range(100):
            shared.append(bot_id, message(f"{n}-{i}"))

    threads = [threading.Thread(target=callbacks, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    entries = journal.read_entries(shared.fd)
    assert sorted(entry.text for _, _, entry in entries) == sorted(f"{n}-{i}" for n in range(8) for i in range(100))
    assert len({seq for seq, _, _ in entries}) == 800
    shared.done(seq for seq, _, _ in entries)
    assert journal.read_entries(shared.fd) == []
    shared.close()
    assert not shared.path.exists(), "a clean stop with nothing waiting removes it"


def test_it_empties_itself_when_everything_in_it_is_stored(journal_dir, monkeypatch):
    monkeypatch.setattr(journal, "COMPACT_BYTES", 1000)
    own = journal.Journal(journal_dir, "vm:1:0:compact")
    seqs = [own.append(uuid.uuid4(), message("x" * 100)) for _ in range(20)]
    own.done(seqs[:10])
    assert own.path.stat().st_size > 1000, "not while some wait"
    own.done(seqs[10:])
    assert own.path.stat().st_size == 0
    seq = own.append(uuid.uuid4(), message("depois"))
    assert [entry.text for _, _, entry in journal.read_entries(own.fd)] == ["depois"] and seq == 21
    own.close()


async def test_it_keeps_trying_to_store_while_the_database_is_away(shards, alice, monkeypatch, fake_gemini):
    shard, bot = await connected(shards, alice)
    failures = []
    real_store = inbox.store_inbound

    def database_away(messages):
        if len(failures) < 3:
            # WhatsApp counts it delivered already: it will not come again.
            failures.append(SimulatorInbound.objects.get(wa_id="3EB0AWAY").delivered_at)
            raise OperationalError("connection to server at 127.0.0.1 failed: Connection refused")
        return real_store(messages)

    monkeypatch.setattr(inbox, "STORE_RETRY_FIRST", 0.05)
    monkeypatch.setattr(inbox, "store_inbound", database_away)
    await orm(
        SimulatorInbound.objects.create,
        bot=bot,
        wa_id="3EB0AWAY",
        chat=CUSTOMER,
        sender=CUSTOMER,
        text="Vocês entregam?",
        timestamp=timezone.now(),
    )

    await step_until(shard, lambda: SimulatorSent.objects.filter(bot=bot).exists())

    assert len(failures) == 3 and failures[-1], "acknowledged while its store still failed, as with neonize"
    stored = await orm(Message.objects.get, bot=bot, wa_id="3EB0AWAY")
    assert stored.status == MessageStatus.REPLIED
    assert await orm(lambda: list(SimulatorSent.objects.values_list("text", flat=True))) == ["echo: Vocês entregam?"]
    assert shard.inbox.journal.waiting == set(), "marked done once stored"
