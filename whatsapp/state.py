"""The one write path for connection state (DESIGN.md invariant 2).

Every status change updates the Session row by compare-and-set on its version
(and, for shards, on the lease epoch that fences them), appends a SessionEvent,
and after commit broadcasts the frame to the bot's group.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.utils import timezone

from whatsapp.models import Session, SessionEvent, Status, rfc3339

logger = logging.getLogger(__name__)

# Events kept per session; older ones are pruned as new ones are written.
EVENT_LOG_SIZE = 200


def group_name(bot_id: uuid.UUID | str) -> str:
    return f"bot.{uuid.UUID(str(bot_id)).hex}"


def frame_for(event: str, session: Session) -> dict:
    frame = {"event": event, **session.status_payload()}
    frame["at"] = frame.pop("updatedAt")
    return frame


class Fenced(Exception):
    """The writer no longer holds the bot's lease: its write is refused."""


def record(
    bot_id: uuid.UUID | str,
    event: str,
    status: Status | str,
    *,
    fence: tuple[str, int] | None = None,
    detail: str = "",
    publish: Callable[[uuid.UUID, dict], None] | None = None,
    **changes,
) -> Session:
    """Change a session's status and log it; ``fence`` is a shard's (owner, epoch).

    Raises ``Fenced`` when the shard lost the lease, ``Session.DoesNotExist``
    when the bot is gone. ``publish(bot_id, frame)`` runs after commit
    (default: :func:`broadcast` through the channel layer).
    """
    with transaction.atomic():
        session = Session.objects.select_for_update().get(pk=bot_id)
        cas = Session.objects.filter(pk=bot_id, version=session.version)
        if fence is not None:
            owner, epoch = fence
            if (session.lease_owner, session.lease_epoch) != (owner, epoch):
                raise Fenced(f"{bot_id} is no longer leased to {owner}@{epoch}")
            cas = cas.filter(lease_owner=owner, lease_epoch=epoch)
        if status != Status.QR_REQUIRED:
            changes.setdefault("qr_code", "")
            changes.setdefault("qr_expires_at", None)
            changes.setdefault("pairing_code", "")
        changes.update(status=status, version=session.version + 1, updated_at=timezone.now())
        if cas.update(**changes) != 1:
            raise Fenced(f"{bot_id} changed under its lock")
        for field, value in changes.items():
            setattr(session, field, value)
        frame = frame_for(event, session)
        SessionEvent.objects.create(
            session_id=session.pk, version=session.version, event=event, status=status, detail=detail[:500], frame=frame
        )
        if session.version % 50 == 0:
            SessionEvent.objects.filter(session_id=session.pk, version__lte=session.version - EVENT_LOG_SIZE).delete()
        send = publish or broadcast
        transaction.on_commit(lambda: send(session.pk, frame))
    logger.info("bot %s: %s -> %s %s", bot_id, event, status, detail, extra={"bot": bot_id})
    return session


def broadcast(bot_id: uuid.UUID | str, frame: dict) -> None:
    """Push a frame to the bot's subscribers; a hint only, so failures are logged, not raised."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(group_name(bot_id), {"type": "session.frame", "frame": frame})
    except Exception:
        logger.warning("Could not broadcast to %s", bot_id, exc_info=True)


__all__ = ["Fenced", "broadcast", "frame_for", "group_name", "record", "rfc3339"]
