"""A shard taking over a dead shard's bot keeps its own bots meanwhile (DESIGN.md invariant 3, section 7).

In-process, with the simulator, on any database. The dead shard's connection was seen moments
ago; the new one replaces it, as the newest connection of a device does on WhatsApp. Taking the
bot must not hold up the shard's lease renewals: with the shortest lease allowed, another shard
would take the bots it already hosts, and their people would see them reconnect for nothing.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from django.utils import timezone

from tests.hosting import POLL, STEP_TIMEOUT, has_status, orm, paired, session_row, step_until
from whatsapp.models import SessionEvent, SimulatorDevice, Status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


def seen_just_now_by_a_dead_shard(owner):
    """A paired bot whose host died a moment ago: its lease is free, its connection was seen just now."""
    bot = paired(owner)
    SimulatorDevice.objects.filter(pk=bot.pk).update(connection_id="sim-of-a-dead-shard", last_seen=timezone.now())
    return bot


async def keep_stepping(shard) -> None:
    while True:
        await shard.step()
        await asyncio.sleep(POLL / 2)


async def test_it_keeps_its_own_bots_while_it_waits_to_take_over_a_dead_shards_bot(shards, alice, settings):
    settings.WHATSAPP_LEASE_TTL = 6  # the shortest lease allowed
    host, other = await shards(), await shards()
    own = await orm(paired, alice)
    await step_until(host, has_status(own, Status.CONNECTED))
    before = await orm(session_row, own)

    orphan = await orm(seen_just_now_by_a_dead_shard, alice)
    taking = asyncio.create_task(host.step())
    async with asyncio.timeout(STEP_TIMEOUT):
        while (await orm(session_row, orphan)).lease_owner != host.shard_id:
            await asyncio.sleep(POLL / 2)
    # Another shard, ready to take any bot whose lease expires.
    rival = asyncio.create_task(keep_stepping(other))
    try:
        await taking
        await step_until(
            host,
            lambda: (s := session_row(orphan)).status == Status.CONNECTED and s.lease_owner == host.shard_id,
            timeout=20,
        )
    finally:
        rival.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await rival

    after = await orm(session_row, own)
    assert (after.lease_owner, after.lease_epoch) == (host.shard_id, before.lease_epoch), "kept its own bot"
    later = await orm(lambda: list(SessionEvent.objects.filter(session_id=own.pk, version__gt=before.version)))
    assert later == [], "its own bot never reconnected"
