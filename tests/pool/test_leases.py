"""Leases, the one write path for connection state, and what the web asks of the pool.

Plain sync functions called directly, as the shards and the web call them.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import threading

import pytest
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from bots import control
from bots.models import Bot
from pool import leases
from tests.helpers import make_bot
from whatsapp import state
from whatsapp.models import ConnectRequest, Session, SessionEvent, Status

pytestmark = pytest.mark.django_db

TTL = 15


def wanting(owner, **session_fields) -> Bot:
    """A bot whose session wants a host (unless the fields say otherwise)."""
    bot = make_bot(owner)
    session_fields.setdefault("desired_connected", True)
    Session.objects.filter(pk=bot.pk).update(**session_fields)
    return bot


def session_of(bot: Bot) -> Session:
    return Session.objects.get(pk=bot.pk)


def ago(seconds: float) -> datetime.datetime:
    return timezone.now() - datetime.timedelta(seconds=seconds)


# --- leases ---------------------------------------------------------------------------


def test_it_claims_a_free_lease_once(alice):
    bot = wanting(alice)

    assert leases.claim(bot.pk, "shard-a", TTL) == 1
    assert leases.claim(bot.pk, "shard-b", TTL) is None

    session = session_of(bot)
    assert (session.lease_owner, session.lease_epoch) == ("shard-a", 1)
    assert session.lease_expires_at > timezone.now()


@pytest.mark.django_db(transaction=True)
def test_shards_racing_for_the_same_bots_each_win_a_bot_at_most_once(alice):
    """Eight shards claim the same twenty bots at the same instant, each on its own connection."""
    bots = [wanting(alice).pk for _ in range(20)]
    start = threading.Barrier(8)

    def shard(name: str) -> list:
        try:
            start.wait()
            return [bot for bot in bots if leases.claim(bot, name, TTL) is not None]
        finally:
            connection.close()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        won = dict(zip(range(8), pool.map(shard, [f"shard-{n}" for n in range(8)]), strict=True))

    winners = [bot for claims in won.values() for bot in claims]
    assert sorted(winners) == sorted(bots), "every bot has exactly one host"
    rows = Session.objects.filter(pk__in=bots)
    assert {row.lease_epoch for row in rows} == {1}, "one successful claim each"
    for n, claims in won.items():
        assert set(rows.filter(lease_owner=f"shard-{n}").values_list("pk", flat=True)) == set(claims)


def test_it_increments_the_epoch_on_every_claim(alice):
    bot = wanting(alice)

    first = leases.claim(bot.pk, "shard-a", TTL)
    assert leases.release(bot.pk, "shard-a", first)
    second = leases.claim(bot.pk, "shard-b", TTL)
    assert leases.release(bot.pk, "shard-b", second)
    third = leases.claim(bot.pk, "shard-a", TTL)

    assert (first, second, third) == (1, 2, 3)


def test_it_does_not_claim_a_bot_that_wants_no_host(alice):
    bot = wanting(alice, desired_connected=False)

    assert leases.claim(bot.pk, "shard-a", TTL) is None
    assert session_of(bot).lease_owner == ""


def test_it_lets_another_shard_take_over_an_expired_lease(alice):
    bot = wanting(alice)
    old = leases.claim(bot.pk, "shard-a", TTL)
    Session.objects.filter(pk=bot.pk).update(lease_expires_at=ago(1))

    new = leases.claim(bot.pk, "shard-b", TTL)

    assert new == old + 1
    assert leases.renew("shard-a", TTL) == {}
    assert leases.renew("shard-b", TTL) == {bot.pk: new}
    # The old owner cannot free what it no longer holds.
    assert not leases.release(bot.pk, "shard-a", old)
    assert session_of(bot).lease_owner == "shard-b"


def test_it_renews_with_the_database_clock(alice):
    bot, other = wanting(alice), wanting(alice)
    leases.claim(bot.pk, "shard-a", TTL)
    leases.claim(other.pk, "shard-b", TTL)
    Session.objects.filter(pk=bot.pk).update(lease_expires_at=ago(1))

    before = timezone.now()
    held = leases.renew("shard-a", 100)
    after = timezone.now()

    assert held == {bot.pk: 1}
    expires = session_of(bot).lease_expires_at
    # The database and this process share a clock here; allow for its resolution.
    assert before + datetime.timedelta(seconds=99) <= expires <= after + datetime.timedelta(seconds=101)
    # Another shard's lease is untouched.
    assert session_of(other).lease_expires_at < before + datetime.timedelta(seconds=TTL + 1)


def test_it_releases_only_with_the_matching_epoch(alice):
    bot = wanting(alice)
    epoch = leases.claim(bot.pk, "shard-a", TTL)

    assert not leases.release(bot.pk, "shard-a", epoch - 1)
    assert not leases.release(bot.pk, "shard-b", epoch)
    assert session_of(bot).lease_owner == "shard-a"

    assert leases.release(bot.pk, "shard-a", epoch)
    session = session_of(bot)
    assert (session.lease_owner, session.lease_expires_at, session.lease_epoch) == ("", None, epoch)


def test_it_releases_all_the_leases_of_a_shard(alice, bob):
    mine = [wanting(alice), wanting(bob)]
    theirs = wanting(alice)
    for bot in mine:
        leases.claim(bot.pk, "shard-a", TTL)
    leases.claim(theirs.pk, "shard-b", TTL)

    assert sorted(leases.release_all("shard-a")) == sorted(bot.pk for bot in mine)

    assert leases.renew("shard-a", TTL) == {}
    assert all(session_of(bot).lease_owner == "" for bot in mine)
    assert session_of(theirs).lease_owner == "shard-b"
    assert leases.release_all("shard-a") == []


def test_it_lists_only_the_sessions_that_want_a_free_host(alice):
    wants = wanting(alice)
    logging_out = wanting(alice, desired_connected=False, logout_requested=True)
    expired = wanting(alice)
    retry_due = wanting(alice, next_retry_at=ago(1))
    idle = wanting(alice, desired_connected=False)
    hosted = wanting(alice)
    retry_later = wanting(alice, next_retry_at=ago(-60))
    other_provider = wanting(alice)
    Bot.objects.filter(pk=other_provider.pk).update(whatsapp_provider="neonize")
    leases.claim(hosted.pk, "shard-b", TTL)
    leases.claim(expired.pk, "shard-b", TTL)
    Session.objects.filter(pk=expired.pk).update(lease_expires_at=ago(1))

    found = leases.candidates(["simulator"], 100)

    assert sorted(found) == sorted(bot.pk for bot in (wants, logging_out, expired, retry_due))
    assert idle.pk not in found and hosted.pk not in found and retry_later.pk not in found
    assert other_provider.pk in leases.candidates(["neonize"], 100)
    assert leases.candidates(["neonize"], 100) == [other_provider.pk]


def test_it_lists_candidates_up_to_the_limit(alice):
    bots = [wanting(alice) for _ in range(5)]

    some = leases.candidates(["simulator"], 2)

    assert len(some) == 2 and set(some) <= {bot.pk for bot in bots}
    assert leases.candidates(["simulator"], 0) == []
    assert leases.candidates([], 10) == []


# --- state.record ----------------------------------------------------------------------


def test_it_bumps_the_version_and_logs_each_write(alice):
    bot = make_bot(alice)

    state.record(bot.pk, "connecting", Status.CONNECTING)
    session = state.record(bot.pk, "disconnected", Status.DISCONNECTED, detail="bye", last_error="worker stopped")

    assert session.version == 2
    assert session_of(bot).version == 2
    events = list(SessionEvent.objects.filter(session_id=bot.pk))
    assert [(e.version, e.event, e.status) for e in events] == [
        (1, "connecting", "connecting"),
        (2, "disconnected", "disconnected"),
    ]
    assert events[1].detail == "bye"
    frame = events[1].frame
    assert (frame["event"], frame["status"], frame["seq"], frame["lastError"]) == (
        "disconnected",
        "disconnected",
        2,
        "worker stopped",
    )
    assert frame["at"].endswith("Z")
    assert "updatedAt" not in frame


def test_it_clears_the_qr_when_leaving_qr_required(alice):
    bot = make_bot(alice)
    expires = timezone.now() + datetime.timedelta(seconds=60)
    shown = state.record(
        bot.pk, "qr", Status.QR_REQUIRED, qr_code="data:image/png;base64,AAAA", qr_expires_at=expires, pairing_code="AB"
    )
    logged = SessionEvent.objects.get(session_id=bot.pk, version=shown.version).frame
    assert "qrCode" not in logged and logged["status"] == "qr_required", "the log keeps no image"
    assert session_of(bot).qr_code.endswith("AAAA")

    state.record(bot.pk, "connected", Status.CONNECTED, jid="5511:2@s.whatsapp.net")

    session = session_of(bot)
    assert (session.qr_code, session.qr_expires_at, session.pairing_code) == ("", None, "")
    frame = SessionEvent.objects.get(session_id=bot.pk, version=session.version).frame
    assert "qrCode" not in frame and frame["jid"] == "5511:2@s.whatsapp.net"


def test_it_refuses_a_write_from_a_shard_that_lost_the_lease(alice):
    bot = wanting(alice)
    epoch = leases.claim(bot.pk, "shard-a", TTL)
    state.record(bot.pk, "connecting", Status.CONNECTING, fence=("shard-a", epoch))
    Session.objects.filter(pk=bot.pk).update(lease_owner="shard-b", lease_epoch=F("lease_epoch") + 1)
    published = []
    state.publish_from_this_thread(lambda *sent: published.append(sent))
    try:
        for fence in (("shard-a", epoch), ("shard-b", epoch)):
            with pytest.raises(state.Fenced):
                state.record(bot.pk, "connected", Status.CONNECTED, fence=fence, jid="x@s.whatsapp.net")
    finally:
        state.publish_from_this_thread(None)

    session = session_of(bot)
    assert (session.version, session.status, session.jid) == (1, Status.CONNECTING, "")
    assert SessionEvent.objects.filter(session_id=bot.pk).count() == 1
    assert published == []
    state.record(bot.pk, "connected", Status.CONNECTED, fence=("shard-b", epoch + 1))
    assert session_of(bot).version == 2


@pytest.mark.django_db(transaction=True)
def test_it_publishes_only_after_commit(alice):
    bot = make_bot(alice)
    published = []

    def publish(group, message):
        if message["type"] == "session.frame":
            published.append((group, message["frame"]["event"], message["frame"]["seq"]))

    state.publish_from_this_thread(publish)
    try:
        state.record(bot.pk, "connecting", Status.CONNECTING)
        assert published == [(state.events_group(bot.pk), "connecting", 1)]

        with transaction.atomic():
            state.record(bot.pk, "qr", Status.QR_REQUIRED)
            assert len(published) == 1, "published before commit"
        assert published[-1] == (state.events_group(bot.pk), "qr", 2)

        class Rollback(Exception):
            pass

        with pytest.raises(Rollback), transaction.atomic():
            state.record(bot.pk, "connected", Status.CONNECTED)
            raise Rollback
        assert len(published) == 2
    finally:
        state.publish_from_this_thread(None)
    assert session_of(bot).version == 2
    assert SessionEvent.objects.filter(session_id=bot.pk).count() == 2


# --- control -----------------------------------------------------------------------------


def test_it_requests_a_connection(alice):
    bot = wanting(alice, desired_connected=False, logout_requested=True, failures=5, next_retry_at=ago(-60))
    Session.objects.filter(pk=bot.pk).update(status=Status.FAILED, last_error="gave up")

    returned = control.request_connect(bot, alice, pairing_phone="5511987654321")

    session = session_of(bot)
    assert returned.status == session.status == Status.CONNECTING
    assert session.desired_connected and not session.logout_requested
    assert (session.failures, session.next_retry_at, session.last_error) == (0, None, "")
    assert session.pairing_phone == "5511987654321"
    assert session.version == 1
    assert ConnectRequest.objects.filter(bot=bot, user=alice).count() == 1


def test_it_requests_a_disconnect_and_a_logout(alice):
    bot = wanting(alice, status=Status.CONNECTED)

    control.request_disconnect(bot)
    session = session_of(bot)
    assert not session.desired_connected and not session.logout_requested
    # The hosting shard records the new status, not the web.
    assert (session.status, session.version) == (Status.CONNECTED, 0)

    Session.objects.filter(pk=bot.pk).update(desired_connected=True)
    returned = control.request_logout(bot)
    session = session_of(bot)
    assert not session.desired_connected and session.logout_requested
    assert returned.logout_requested
    assert session.status == Status.CONNECTED


def test_it_rate_limits_connect_requests_per_bot(alice, settings):
    settings.WHATSAPP_CONNECT_RATE_BOT = (2, 60)
    bot, other = make_bot(alice), make_bot(alice)
    control.request_connect(bot, alice)
    control.request_connect(bot, alice)
    # The oldest request in the window frees a slot 60 - 50 = 10 s from now.
    first, second = ConnectRequest.objects.filter(bot=bot).order_by("pk")
    ConnectRequest.objects.filter(pk=first.pk).update(created_at=ago(50))
    ConnectRequest.objects.filter(pk=second.pk).update(created_at=ago(5))
    Session.objects.filter(pk=bot.pk).update(desired_connected=False)

    with pytest.raises(control.RateLimited) as raised:
        control.request_connect(bot, alice)

    assert 9 <= raised.value.retry_after <= 11
    assert not session_of(bot).desired_connected
    assert ConnectRequest.objects.filter(bot=bot).count() == 2
    control.request_connect(other, alice)  # another bot has its own budget


def test_it_rate_limits_connect_requests_per_user(alice, bob, settings):
    settings.WHATSAPP_CONNECT_RATE_USER = (3, 600)
    bots = [make_bot(alice) for _ in range(4)]
    for bot in bots[:3]:
        control.request_connect(bot, alice)

    with pytest.raises(control.RateLimited) as raised:
        control.check_rate(bots[3], alice)
    assert 1 <= raised.value.retry_after <= 600
    control.check_rate(make_bot(bob), bob)


def test_it_answers_a_rate_limited_autoconnect_with_a_status(alice, settings):
    settings.WHATSAPP_CONNECT_RATE_BOT = (1, 60)
    bot = make_bot(alice)
    control.request_connect(bot, alice)
    Session.objects.filter(pk=bot.pk).update(desired_connected=False)

    session = control.request_connect(bot, alice, autoconnect=True)

    assert (session.status, session.last_error) == (Status.DISCONNECTED, "rate_limited")
    assert not session_of(bot).desired_connected
