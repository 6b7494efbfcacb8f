"""What the web asks of the pool: it writes desired state, then nudges the shards.

The shards reconcile toward the database on every loop (docs/invariants.md, 1),
so a lost nudge costs latency, never correctness. Connect requests are rate
limited per bot and per user, counted in the database.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import uuid

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from bots import broadcasts
from bots.models import Bot, Message, Provider
from whatsapp import jids, state
from whatsapp.models import ConnectRequest, Session, Status

logger = logging.getLogger(__name__)

SHARDS_GROUP = "whatsapp.shards"
# A nudge that Redis does not take within this long is dropped: the shards poll anyway.
NUDGE_TIMEOUT = 2.0


class RateLimited(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Too many connect requests; retry in {retry_after} s.")
        self.retry_after = retry_after


async def wake_shards() -> None:
    """Wake the shards now rather than at their next poll. A hint: failures are harmless (they poll)."""
    layer = state.shared_layer()
    if layer is None:
        return
    try:
        await asyncio.wait_for(layer.group_send(SHARDS_GROUP, {"type": "shards.wake"}), NUDGE_TIMEOUT)
    except Exception:
        logger.warning("Could not nudge the shards", exc_info=True)


def nudge_shards() -> None:
    """:func:`wake_shards` from synchronous code: views, commit hooks, the supervisor."""
    async_to_sync(wake_shards)()


def window_wait(rows, limit: int, seconds: int, now: datetime.datetime) -> float:
    """Seconds until a sliding window of ``seconds`` over ``rows`` (by ``created_at``) has room for one
    more of ``limit``; 0 when it has room now. The oldest row in the window frees a slot when it leaves it."""
    since = now - datetime.timedelta(seconds=seconds)
    recent = rows.filter(created_at__gt=since)
    if recent.count() < limit:
        return 0.0
    oldest_at = recent.order_by("created_at").values_list("created_at", flat=True).first() or now
    return (oldest_at - since).total_seconds()


def check_rate(bot: Bot, user) -> None:
    """Raise RateLimited when the bot or the user made too many connect requests."""
    now = timezone.now()
    for rows, (limit, seconds) in (
        (ConnectRequest.objects.filter(bot=bot), settings.WHATSAPP_CONNECT_RATE_BOT),
        (ConnectRequest.objects.filter(user=user), settings.WHATSAPP_CONNECT_RATE_USER),
    ):
        if wait := window_wait(rows, limit, seconds, now):
            raise RateLimited(max(1, math.ceil(wait)))


def lock_rate_counts(bot: Bot, user) -> None:
    """Make concurrent connect requests count each other, in a transaction.

    Otherwise a burst of requests all count the rows from before any of them and all
    pass (PostgreSQL; SQLite's immediate transactions already run one at a time).
    The user's row covers the per-user limit and the bot's session row the per-bot
    one; always in this order, so two requests never wait for each other in a cycle.
    """
    list(get_user_model().objects.select_for_update().filter(pk=user.pk).values_list("pk", flat=True))
    list(Session.objects.select_for_update().filter(pk=bot.pk).values_list("pk", flat=True))


def forget_old_requests(user) -> None:
    """Requests out of every rate window count for nothing: each new one clears its user's old ones."""
    longest = max(settings.WHATSAPP_CONNECT_RATE_BOT[1], settings.WHATSAPP_CONNECT_RATE_USER[1])
    ConnectRequest.objects.filter(
        user=user, created_at__lt=timezone.now() - datetime.timedelta(seconds=longest)
    ).delete()


def request_connect(bot: Bot, user, *, autoconnect: bool = False, pairing_phone: str = "") -> Session:
    """A connect request (API, page, admin, autoConnect): desired on, failures reset, `connecting`."""
    try:
        with transaction.atomic():
            lock_rate_counts(bot, user)
            check_rate(bot, user)
            ConnectRequest.objects.create(bot=bot, user=user)
            forget_old_requests(user)
            Session.objects.filter(pk=bot.pk).update(
                desired_connected=True, logout_requested=False, failures=0, next_retry_at=None
            )
            session = state.record(bot.pk, "connecting", Status.CONNECTING, last_error="", pairing_phone=pairing_phone)
    except RateLimited:
        if not autoconnect:
            raise
        return state.record(bot.pk, "disconnected", Status.DISCONNECTED, last_error="rate_limited")
    transaction.on_commit(nudge_shards)
    return session


def request_disconnect(bot: Bot) -> Session:
    """Desired off; the hosting shard stops the client and records `disconnected`."""
    with transaction.atomic():
        Session.objects.filter(pk=bot.pk).update(desired_connected=False)
        session = Session.objects.get(pk=bot.pk)
    transaction.on_commit(nudge_shards)
    return session


def request_logout(bot: Bot) -> Session:
    """Desired off and a logout; the hosting shard unlinks the device and records `logged_out`."""
    with transaction.atomic():
        Session.objects.filter(pk=bot.pk).update(desired_connected=False, logout_requested=True)
        session = Session.objects.get(pk=bot.pk)
    transaction.on_commit(nudge_shards)
    return session


def delete_bot(bot: Bot) -> None:
    """Hidden at once; the hosting shard logs the device out and releases it. Its sockets close (4404)."""
    with transaction.atomic():
        Bot.objects.filter(pk=bot.pk).update(deleted_at=timezone.now())
        Session.objects.filter(pk=bot.pk).update(desired_connected=False, logout_requested=True)
        broadcasts.bot_access_changed(bot.pk, None)
        broadcasts.list_changed(bot.owner_id)
    transaction.on_commit(nudge_shards)


def queue_message(bot: Bot, chat: str, text: str) -> Message:
    """An operator's message: queued in the outbox now, sent by the hosting shard once connected."""
    with transaction.atomic():
        message = Message.objects.queue(
            bot_id=bot.pk, chat=chat, text=text, sender=jids.account_jid(bot.session.jid, bot.session.phone)
        )
        transaction.on_commit(nudge_shards)
    return message


def phone_in_use(bot_id: uuid.UUID, phone: str) -> bool:
    """Another live neonize bot is linked to this number (neonize keys its clients by number)."""
    return (
        Session.objects.filter(phone=phone, bot__deleted_at__isnull=True, bot__whatsapp_provider=Provider.NEONIZE)
        .exclude(pk=bot_id)
        .exists()
    )
