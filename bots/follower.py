"""Without Redis: one follower per web process tells its sockets what the other processes wrote.

The embedded default has no channel layer between processes: the web's
sockets listen on an in-memory one (settings), which hears what the web itself
does at once, and what the shards do only through the database. While any
socket is open, one task per process reads what is new since its last look,
every FOLLOW_SECONDS, and broadcasts it as the shards would have over Redis:

- connection events from the session event log (each in order, once);
- bots whose messages changed (``Message.updated_at``, looked at again for
  LATE_COMMITS, since writers may commit out of order);
- API tokens revoked from another process (``revoke_api_token``).

A few queries per look, whatever the number of sockets; nothing at all with
Redis, where shards broadcast themselves (whatsapp/state.py), or with no socket open.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.utils import timezone

from bots import broadcasts
from bots.models import ApiToken, Message
from whatsapp import state
from whatsapp.models import Session, SessionEvent, Status

logger = logging.getLogger(__name__)

FOLLOW_SECONDS = 0.25
TOKENS_SECONDS = 2.0
LATE_COMMITS = datetime.timedelta(seconds=2)
EVENT_BATCH = 500


class Follower:
    def __init__(self) -> None:
        self.task: asyncio.Task | None = None
        self.last_event = 0
        self.since: datetime.datetime | None = None
        # (message id, updated_at) seen within LATE_COMMITS: told once, even when read again.
        self.seen: dict[tuple[int, datetime.datetime], datetime.datetime] = {}
        self.tokens: dict[int, int] | None = None  # token id -> user id
        self.tokens_read = 0.0

    def follow(self, while_needed: Callable[[], bool]) -> None:
        loop = asyncio.get_running_loop()
        if state.shared_layer() is not None:
            return
        if self.task is not None and not self.task.done() and self.task.get_loop() is loop:
            return
        self.task = loop.create_task(self.run(while_needed), name="follower")

    async def run(self, while_needed: Callable[[], bool]) -> None:
        read = database_sync_to_async(self.read, thread_sensitive=False)
        layer = get_channel_layer()
        self.last_event, self.since = await database_sync_to_async(self.start_point, thread_sensitive=False)()
        self.seen, self.tokens, self.tokens_read = {}, None, 0.0
        while while_needed():
            await asyncio.sleep(FOLLOW_SECONDS)
            try:
                for group, message in await read(asyncio.get_running_loop().time()):
                    await layer.group_send(group, message)
            except Exception:
                logger.warning("following the database failed; trying again", exc_info=True)

    @staticmethod
    def start_point() -> tuple[int, datetime.datetime]:
        newest = SessionEvent.objects.order_by("-pk").values_list("pk", flat=True).first()
        return newest or 0, timezone.now()

    def read(self, now: float) -> list[tuple[str, dict]]:
        """What is new since the last look, as the broadcasts it would have been (runs on a DB thread)."""
        told = self.events() + self.messages()
        if now - self.tokens_read >= TOKENS_SECONDS:
            self.tokens_read = now
            told += self.revoked_tokens()
        return told

    def events(self) -> list[tuple[str, dict]]:
        rows = list(
            SessionEvent.objects.filter(pk__gt=self.last_event)
            .order_by("pk")
            .values_list("pk", "session_id", "version", "status", "frame")[:EVENT_BATCH]
        )
        if not rows:
            return []
        self.last_event = rows[-1][0]
        # A QR shown now goes out with its image, which the log does not keep.
        showing = {bot_id for _, bot_id, _, status, _ in rows if status == Status.QR_REQUIRED}
        images = {
            (bot_id, version): image
            for bot_id, version, image in Session.objects.filter(pk__in=showing).values_list("pk", "version", "qr_code")
        }
        told = []
        for _, bot_id, version, _, frame in rows:
            if (bot_id, version) in images:
                frame = {**frame, "qrCode": images[(bot_id, version)]}
            told.append((state.events_group(bot_id), {"type": "session.frame", "frame": frame}))
            told.append((state.group_name(bot_id), {"type": "page.changed", "status": True}))
        return told

    def messages(self) -> list[tuple[str, dict]]:
        now = timezone.now()
        rows = Message.objects.filter(updated_at__gte=self.since - LATE_COMMITS).values_list(
            "pk", "updated_at", "bot_id"
        )
        changed = set()
        for pk, updated_at, bot_id in rows:
            if (pk, updated_at) not in self.seen:
                self.seen[(pk, updated_at)] = updated_at
                changed.add(bot_id)
        self.since = now
        self.seen = {key: at for key, at in self.seen.items() if at >= now - 2 * LATE_COMMITS}
        return [(state.group_name(bot_id), {"type": "page.changed", "messages": True}) for bot_id in changed]

    def revoked_tokens(self) -> list[tuple[str, dict]]:
        tokens = dict(ApiToken.objects.values_list("pk", "user_id"))
        before, self.tokens = self.tokens, tokens
        if before is None:
            return []
        return [
            (broadcasts.user_group(user_id), {"type": "access.revoked", "token": token_id})
            for token_id, user_id in before.items()
            if token_id not in tokens
        ]


_follower = Follower()


def follow(while_needed: Callable[[], bool]) -> None:
    """Start this process's follower if it is needed and not running; it stops when ``while_needed()`` is False."""
    _follower.follow(while_needed)
