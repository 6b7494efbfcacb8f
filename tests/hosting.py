"""Shards driven in-process through their step methods, with the simulator as WhatsApp.

Shared by the pool, reply, chaos and log tests. A shard runs its ORM work on DB
threads of its own, so the tests that use one need a transactional database;
they read the rows through ``sync_to_async`` as another process would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from asgiref.sync import sync_to_async

from bots.models import Bot
from pool.shard import Shard
from tests.helpers import make_bot
from whatsapp.models import Session, SessionEvent, SimulatorCommand, SimulatorDevice, Status

POLL = 0.05
STEP_TIMEOUT = 10.0


def orm(fn: Callable, *args, **kwargs):
    return sync_to_async(fn)(*args, **kwargs)


def session_row(bot: Bot) -> Session:
    return Session.objects.get(pk=bot.pk)


def wanting(owner, **session_fields) -> Bot:
    """A simulator bot that wants to be connected (as after a connect request)."""
    bot = make_bot(owner)
    session_fields.setdefault("desired_connected", True)
    session_fields.setdefault("status", Status.CONNECTING)
    Session.objects.filter(pk=bot.pk).update(**session_fields)
    return bot


def paired(owner) -> Bot:
    """A bot whose phone scanned its QR earlier: the device is stored, so it resumes without a QR."""
    bot = wanting(owner, jid="5511987654321:7@s.whatsapp.net", phone="5511987654321")
    SimulatorDevice.objects.create(bot=bot, jid="5511987654321:7@s.whatsapp.net", phone="5511987654321")
    return bot


def events_of(bot: Bot) -> list[tuple[str, str]]:
    return list(SessionEvent.objects.filter(session_id=bot.pk).values_list("event", "status"))


async def step_until(shard: Shard, condition: Callable[[], bool], timeout: float = STEP_TIMEOUT) -> None:
    """Step the shard (letting its tasks run between steps) until a DB condition holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        await shard.step()
        if await orm(condition):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met in {timeout} s")
        await asyncio.sleep(POLL / 2)


async def until(predicate: Callable[[], bool], timeout: float = STEP_TIMEOUT) -> None:
    """Let the shard's own tasks (provider polling, event handling) run until the predicate holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met in {timeout} s")
        await asyncio.sleep(POLL / 2)


def command(bot: Bot, kind: SimulatorCommand.Kind, **data) -> SimulatorCommand:
    """What the simulator endpoints write for the hosting shard to act on."""
    return SimulatorCommand.objects.create(bot=bot, kind=kind, data=data)


def has_status(bot: Bot, status: Status) -> Callable[[], bool]:
    return lambda: session_row(bot).status == status


def ended(bot: Bot, status: Status) -> Callable[[], bool]:
    """The shard wrote the status and let the lease go (its last write)."""

    def check() -> bool:
        session = session_row(bot)
        return session.status == status and session.lease_owner == ""

    return check


def hosts(shard: Shard, count: int) -> Callable[[], bool]:
    return lambda: Session.objects.filter(lease_owner=shard.shard_id).count() == count


async def connected(shards, owner) -> tuple[Shard, Bot]:
    shard = await shards()
    bot = await orm(paired, owner)
    await step_until(shard, has_status(bot, Status.CONNECTED))
    return shard, bot
