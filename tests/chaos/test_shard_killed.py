"""A shard killed with SIGKILL in the middle of a burst of messages (DESIGN.md invariants 3, 4 and 6).

Four paired simulator bots; 25 people write to each of them, three messages
each, in rounds; the fake Gemini answers in 0.2 s. When the first round is
partly answered, the host of the bots dies without a word. Nobody acts: the
bots are taken over (by the supervisor's restart or by another pool once the
leases expire), and every person gets exactly one answer to each message, in
the order they wrote, from a bot that never showed two connections at once.
"""

from __future__ import annotations

import collections
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from bots.models import Bot, Direction, Message, MessageStatus
from tests.chaos.people import (
    answers_expected,
    answers_received,
    chat_of,
    phone,
    wait_until_settled,
    write,
    write_many,
)
from tests.hosting import paired
from tests.processes import Proc, pid_of, start_pool, wait_until
from whatsapp.models import Session, SessionEvent, SimulatorInbound, SimulatorSent

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

BOTS = 4
PEOPLE_PER_BOT = 25
ROUNDS = 3
# The shortest lease allowed: a bot whose host died without a word moves within seconds.
SHORT_LEASES = {"WHATSAPP_LEASE_TTL": "6"}


def wait_until_connected(bots: list[Bot], pool: Proc) -> None:
    wait_until(
        lambda: Session.objects.filter(pk__in=bots, status="connected").count() == len(bots),
        timeout=30,
        interval=0.1,
        message=f"the bots did not connect:\n{pool.log()}",
    )


def messages_of_round(bots: list[Bot], n: int) -> list[SimulatorInbound]:
    return [
        write(bot, phone(person), f"Pedido {n} de {phone(person)}") for bot in bots for person in range(PEOPLE_PER_BOT)
    ]


def host_of_most(bots: list[Bot]) -> str:
    owners = collections.Counter(Session.objects.filter(pk__in=bots).values_list("lease_owner", flat=True))
    return owners.most_common(1)[0][0]


def burst_with_a_kill(bots: list[Bot], kill: Callable[[str], None]) -> tuple[list[SimulatorInbound], str]:
    """People write three rounds; the host of most bots is killed while it answers the first two.

    Returns what they wrote and the id of the shard that was killed.
    """
    first = messages_of_round(bots, 1)
    write_many(first)
    wait_until(
        lambda: SimulatorSent.objects.filter(bot__in=bots).count() >= 20,
        timeout=30,
        interval=0.05,
        message="the first answers did not go out",
    )
    second = messages_of_round(bots, 2)
    write_many(second)
    # The kill lands while Gemini is answering some of them.
    working = Message.objects.filter(bot__in=bots, direction=Direction.IN, status=MessageStatus.REPLYING)
    wait_until(working.exists, timeout=20, interval=0.02, message="no message was being answered")
    killed = host_of_most(bots)
    kill(killed)
    third = messages_of_round(bots, 3)  # while nobody hosts the bots
    write_many(third)
    return first + second + third, killed


def assert_everyone_answered_once_in_order(bots: list[Bot], written: list[SimulatorInbound]) -> None:
    assert answers_received([bot.pk for bot in bots]) == answers_expected(written), "one answer per message"
    for bot in bots:
        for person in range(PEOPLE_PER_BOT):
            texts = list(
                SimulatorSent.objects.filter(bot=bot, to=chat_of(phone(person)))
                .order_by("pk")
                .values_list("text", flat=True)
            )
            assert texts == [f"echo: Pedido {n} de {phone(person)}" for n in range(1, ROUNDS + 1)], "in order"
    replaced = SessionEvent.objects.filter(session_id__in=[bot.pk for bot in bots], frame__lastError="stream_replaced")
    assert not replaced.exists(), "no bot was hosted twice at once"


def parent_of(pid: int) -> int:
    # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after its ")".
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_it_answers_every_message_once_when_a_shard_is_killed_in_a_burst(alice, fake_gemini, stop_at_end):
    bots = [paired(alice) for _ in range(BOTS)]
    pool = stop_at_end(start_pool("--shards", "2", GEMINI_BASE_URL=fake_gemini.url, **SHORT_LEASES))
    wait_until_connected(bots, pool)
    survivors: dict = {}

    def kill(shard: str) -> None:
        # The other shard's bots, if it got some: they must not notice.
        survivors.update(Session.objects.filter(pk__in=bots).exclude(lease_owner=shard).values_list("pk", "version"))
        os.kill(pid_of(f"--shard-id {shard}"), signal.SIGKILL)

    written, killed = burst_with_a_kill(bots, kill)

    wait_until_settled([bot.pk for bot in bots], len(written), timeout=60, log=pool.log)
    assert_everyone_answered_once_in_order(bots, written)
    sessions = Session.objects.filter(pk__in=bots)
    assert {s.status for s in sessions} == {"connected"}
    assert killed not in {s.lease_owner for s in sessions}, "taken over by the restarted shard or the other one"
    assert "exited with -9" in pool.log(), "the supervisor saw the shard die"
    for bot_id, version in survivors.items():
        later = SessionEvent.objects.filter(session_id=bot_id, version__gt=version).values_list("event", flat=True)
        assert not later, f"a bot of the surviving shard reconnected: {list(later)}"


def test_it_answers_every_message_once_when_a_whole_pool_dies_and_another_takes_over(alice, fake_gemini, stop_at_end):
    """No supervisor is left to free the leases: the other pool takes the bots when they expire."""
    bots = [paired(alice) for _ in range(BOTS)]
    first = stop_at_end(start_pool(GEMINI_BASE_URL=fake_gemini.url, **SHORT_LEASES))
    wait_until_connected(bots, first)
    second = stop_at_end(start_pool(GEMINI_BASE_URL=fake_gemini.url, **SHORT_LEASES))
    wait_until(lambda: "started (capacity" in second.log(), timeout=20, message=f"no second pool:\n{second.log()}")
    epochs = dict(Session.objects.filter(pk__in=bots).values_list("pk", "lease_epoch"))

    written, _ = burst_with_a_kill(bots, lambda _: os.killpg(first.pid, signal.SIGKILL))

    wait_until_settled([bot.pk for bot in bots], len(written), timeout=60, log=second.log)
    assert_everyone_answered_once_in_order(bots, written)
    for session in Session.objects.filter(pk__in=bots):
        assert session.status == "connected"
        assert session.lease_epoch > epochs[session.pk]
        assert parent_of(pid_of(f"--shard-id {session.lease_owner}")) == second.pid, "hosted by the other pool"
