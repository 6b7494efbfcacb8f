"""Storing what reaches a bot: first, once, whatever else happens (DESIGN.md invariant 4)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from django.db import IntegrityError, transaction
from django.utils import timezone

from bots.models import Direction, Message, MessageStatus, MessageType
from whatsapp.providers.base import Inbound


def store_inbound(bot_id: uuid.UUID, inbound: Inbound, ack: Callable[[], None] | None = None) -> tuple[Message, bool]:
    """Insert an inbound message idempotently; ``ack`` runs in the same transaction.

    Returns the message and whether it is new. A redelivery (same bot, chat,
    WhatsApp id) returns the stored row untouched.
    """
    message_type = inbound.type if inbound.type in MessageType.values else MessageType.OTHER
    with transaction.atomic():
        try:
            with transaction.atomic():
                message = Message.objects.create(
                    bot_id=bot_id,
                    chat=inbound.chat,
                    sender=inbound.sender,
                    push_name=inbound.push_name[:128],
                    direction=Direction.IN,
                    wa_id=inbound.wa_id,
                    type=message_type,
                    text=inbound.text,
                    from_me=inbound.from_me,
                    status=MessageStatus.RECEIVED,
                    sent_at=inbound.timestamp,
                    created_at=timezone.now(),
                )
            created = True
        except IntegrityError:
            message = Message.objects.get(bot_id=bot_id, chat=inbound.chat, wa_id=inbound.wa_id, direction=Direction.IN)
            created = False
        if ack is not None:
            ack()
    return message, created
