"""What reached a shard from WhatsApp: journaled, stored, never dropped.

The provider callback has put each message in the shard's journal (pool/journal.py) before
WhatsApp counted it delivered. Here the shard stores them, retrying while the database is away,
marks them done in the journal once stored, and replays the journals that dead shards of its
host left behind.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Protocol

from django.conf import settings
from django.db import DatabaseError, IntegrityError

from bots.inbox import existing_bots, store_inbound
from pool import journal
from pool.connection import MESSAGE_BATCH
from whatsapp.providers.base import Inbound

logger = logging.getLogger(__name__)

# A store that failed because the database is away is tried again after 0.5 s, doubling to 5 s.
STORE_RETRY_FIRST = 0.5
STORE_RETRY_MAX = 5.0
# How often a shard looks for journals that dead shards of its host left: a few system calls, so often
# enough that a dead shard's messages are stored before the bots it hosted are claimed again.
REPLAY_SECONDS = 1.0

Batch = list[tuple[uuid.UUID, Inbound, int]]


class Host(Protocol):
    """What the inbox uses of the shard that owns it."""

    shard_id: str
    hosted: dict[uuid.UUID, Any]
    replies: Any
    handling: asyncio.Lock
    shutdown: bool

    async def db(self, fn, *args, **kwargs) -> Any: ...


class Inbox:
    def __init__(self, shard: Host) -> None:
        self.shard = shard
        self.journal: journal.Journal | None = None
        self.last_replay = -REPLAY_SECONDS

    def open(self) -> None:
        self.journal = journal.Journal(settings.WHATSAPP_JOURNAL_DIR, self.shard.shard_id)

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()

    async def keep(self, batch: Batch) -> None:
        """Store a batch from the event queue, retrying with backoff while the database is away.

        Events behind it wait (they would need the database too); a shard stopping meanwhile
        leaves the batch in its journal for the next one.
        """
        delay = STORE_RETRY_FIRST
        while True:
            try:
                async with self.shard.handling:
                    await self.store(batch)
                return
            except DatabaseError as exc:
                if self.shard.shutdown:
                    logger.warning("%d inbound messages left in the journal: %s", len(batch), exc)
                    return
                logger.warning("storing %d inbound messages failed (%s); retrying in %.1f s", len(batch), exc, delay)
            except Exception:
                # Not the database being away: a retry would fail the same way. The journal keeps them.
                logger.exception("storing %d inbound messages failed; they stay in the journal", len(batch))
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, STORE_RETRY_MAX)

    async def store(self, batch: Batch) -> None:
        """Store messages (``seq``: their record in the journal, 0 for none), then reply to those of hosted bots.

        Stored whether or not the bot is still hosted here: WhatsApp delivered them once, to this
        shard. A raised DatabaseError leaves them waiting in the journal.
        """
        db = self.shard.db
        pairs = [(bot_id, message) for bot_id, message, _ in batch]
        try:
            stored = await db(store_inbound, pairs)
        except IntegrityError:
            # A bot deleted for good meanwhile: its messages have nowhere to go, the others do.
            known = await db(existing_bots, {bot_id for bot_id, _ in pairs})
            logger.warning("dropping %d inbound messages of deleted bots", sum(b not in known for b, _ in pairs))
            pairs = [(bot_id, message) for bot_id, message in pairs if bot_id in known]
            stored = await db(store_inbound, pairs) if pairs else []
        if self.journal is not None:
            self.journal.done(seq for _, _, seq in batch)
        for message in stored:
            if message.bot_id in self.shard.hosted:
                self.shard.replies.received(message)

    async def replay(self) -> None:
        """Store what dead shards of this host left in their journals; a DatabaseError keeps them for later."""
        now = time.monotonic()
        if self.journal is None or now - self.last_replay < REPLAY_SECONDS:
            return
        self.last_replay = now
        for orphan in journal.orphans(settings.WHATSAPP_JOURNAL_DIR, own=self.journal.path):
            try:
                entries = await asyncio.to_thread(orphan.entries)
                for start in range(0, len(entries), MESSAGE_BATCH):
                    chunk = entries[start : start + MESSAGE_BATCH]
                    await self.store([(bot_id, message, 0) for _, bot_id, message in chunk])
            except BaseException:
                orphan.close()  # kept for the next pass, or the next shard
                raise
            logger.info("replayed %d messages from %s", len(entries), orphan.path.name)
            orphan.remove()
