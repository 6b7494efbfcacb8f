"""Two pools on one database: a SIGTERM hands the bots over at once (DESIGN.md section 2, invariant 3)."""

from __future__ import annotations

import collections

import pytest

from bots.models import ApiToken
from tests.hosting import wanting
from tests.processes import start_pool, start_web, wait_until
from tests.whatsapp.live import Frames, create_bot, open_events, pair
from whatsapp.models import Session, SessionEvent, SimulatorDevice

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

# Leases that would take ten minutes to expire: a move within the test's bounds proves none was awaited.
LONG_LEASES = {"WHATSAPP_LEASE_TTL": "600"}


def test_sigterm_to_one_pool_moves_its_bots_to_the_other_without_a_qr(alice):
    token = ApiToken.issue(alice)[1]
    web = start_web()
    first = start_pool(**LONG_LEASES)
    second = None
    try:
        bots = [create_bot(web, token, name=f"Loja {n}")["id"] for n in range(3)]
        for n, bot_id in enumerate(bots):
            with open_events(web, bot_id, token) as ws:
                pair(web, token, bot_id, Frames(ws), phone=f"551190000{n:04d}")
        owners = set(Session.objects.filter(pk__in=bots).values_list("lease_owner", flat=True))
        assert len(owners) == 1 and "" not in owners, "one pool hosts them all before the second starts"
        versions = dict(Session.objects.filter(pk__in=bots).values_list("pk", "version"))

        second = start_pool(**LONG_LEASES)
        wait_until(lambda: "started (capacity" in second.log(), timeout=20)
        assert first.stop() == 0

        def moved() -> bool:
            rows = Session.objects.filter(pk__in=bots)
            return all(s.status == "connected" and s.lease_owner not in ("", *owners) for s in rows)

        wait_until(moved, timeout=30, interval=0.2, message="the bots did not move to the other pool")
        for bot_id, version in versions.items():
            later = SessionEvent.objects.filter(session_id=bot_id, version__gt=version)
            assert not later.filter(event="qr").exists(), "moved without a new QR"
            assert later.filter(frame__lastError="worker stopped").exists(), "the stopping pool said why"
        assert not SessionEvent.objects.filter(frame__lastError="stream_replaced").exists()
    finally:
        first.stop()
        if second is not None:
            second.stop()
        web.proc.stop()


def test_shards_started_together_share_the_waiting_bots(alice):
    """A pool restarted with several shards spreads its bots instead of piling them on the first shard up."""
    bots = []
    for n in range(6):
        jid = f"55119000{n:05d}:3@s.whatsapp.net"
        bots.append(wanting(alice, jid=jid))
        SimulatorDevice.objects.create(bot=bots[-1], jid=jid, phone=jid.split(":")[0])
    pool = start_pool("--shards", "2")
    try:

        def hosts() -> collections.Counter | None:
            rows = Session.objects.filter(pk__in=[bot.pk for bot in bots])
            if all(row.status == "connected" for row in rows):
                return collections.Counter(row.lease_owner for row in rows)
            return None

        owners = wait_until(hosts, timeout=30, interval=0.2, message=f"the bots did not connect:\n{pool.log()}")
        assert sorted(owners.values()) == [3, 3], f"each shard hosts its share: {owners}"
    finally:
        pool.stop()
