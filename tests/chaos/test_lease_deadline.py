"""A shard cut off from the database past its lease deadline stops its clients, and takes them back later.

In-process and on any database, with the simulator: the database "stops answering" for the
shard's lease renewals (DESIGN.md invariant 3 says it must stop its clients then). When it
answers again, the shard's bots connect again by themselves. test_postgres_restart.py does the
same with a real PostgreSQL restart.
"""

from __future__ import annotations

import time

import pytest
from django.db import OperationalError

from pool import leases
from tests.hosting import connected, session_row, step_until
from whatsapp.models import Status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


async def test_it_takes_its_bots_back_once_the_database_answers_again(shards, alice, monkeypatch):
    shard, bot = await connected(shards, alice)
    epoch = shard.hosted[bot.pk].epoch
    renew = leases.renew

    def unreachable(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(leases, "renew", unreachable)
    # Its last renewal was a whole lease ago: past its deadline, it stops every client.
    shard.last_renewal = shard.last_renewal_ok = time.monotonic() - shard.ttl
    await shard.step()
    assert shard.hosted == {} and not shard.providers["simulator"].clients

    monkeypatch.setattr(leases, "renew", renew)
    shard.last_renewal = 0.0  # its next step renews
    await step_until(shard, lambda: (s := session_row(bot)).status == Status.CONNECTED and s.lease_epoch > epoch)
    assert bot.pk in shard.hosted, "connected again, by the same shard"
