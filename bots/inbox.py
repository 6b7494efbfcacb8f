"""Storing what reaches a bot: first, once, whatever else happens (docs/invariants.md, 4)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from django.db import transaction
from django.utils import timezone

from bots import broadcasts
from bots.models import Bot, Direction, Message, MessageStatus, MessageType
from whatsapp.providers.base import Inbound


def _row(bot_id: uuid.UUID, inbound: Inbound) -> Message:
    return Message(
        bot_id=bot_id,
        chat=inbound.chat,
        sender=inbound.sender,
        push_name=inbound.push_name[:128],
        direction=Direction.IN,
        wa_id=inbound.wa_id,
        type=inbound.type if inbound.type in MessageType.values else MessageType.OTHER,
        text=inbound.text,
        from_me=inbound.from_me,
        mentions=list(inbound.mentions),
        status=MessageStatus.RECEIVED,
        sent_at=inbound.timestamp,
        created_at=timezone.now(),
    )


def store_inbound(messages: Sequence[tuple[uuid.UUID, Inbound]]) -> list[Message]:
    """Insert inbound messages idempotently, in one transaction.

    Returns the stored rows in the order given. A redelivery (same bot, chat,
    WhatsApp id) returns the row stored the first time, untouched. Messages
    that arrive together are stored together: a few statements for a batch,
    where one transaction each would cost the shard a few round trips each.
    """
    rows = [_row(bot_id, inbound) for bot_id, inbound in messages]
    keyed = [row for row in rows if row.wa_id]
    with transaction.atomic():
        # ON CONFLICT DO NOTHING (PostgreSQL) / INSERT OR IGNORE (SQLite): the unique constraint deduplicates.
        Message.objects.bulk_create(keyed, ignore_conflicts=True)
        for row in rows:
            if not row.wa_id:
                row.save()  # nothing to deduplicate on
        stored = {}
        if keyed:
            found = Message.objects.filter(
                direction=Direction.IN,
                bot_id__in={row.bot_id for row in keyed},
                wa_id__in={row.wa_id for row in keyed},
            )
            stored = {(m.bot_id, m.chat, m.wa_id): m for m in found}
        for bot_id in {row.bot_id for row in rows}:
            broadcasts.messages_changed(bot_id)
    return [stored[(row.bot_id, row.chat, row.wa_id)] if row.wa_id else row for row in rows]


def existing_bots(bot_ids: set[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these bots still exist (deleted or not): the others' messages cannot be stored."""
    return set(Bot._base_manager.filter(pk__in=bot_ids).values_list("pk", flat=True))
