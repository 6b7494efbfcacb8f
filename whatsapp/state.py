"""The one write path for connection state, and how its changes reach the live sockets.

Every status change updates the Session row by compare-and-set on its version
(and, for shards, on the lease epoch that fences them), appends a SessionEvent,
and after commit broadcasts (docs/invariants.md, 2): the whole frame, QR image
included, to the bot's JSON subscribers (:func:`events_group`), and a hint to
its pages (:func:`group_name`), which render what they show from the rows.

Broadcasts are hints on top of the database (docs/invariants.md, 1). They go
through the channel layer, or, on a shard's database threads, through the
shard's own publisher (:func:`publish_from_this_thread`), which sends them from
its event loop in order.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
import uuid
from collections.abc import Callable

import qrcode
from asgiref.sync import async_to_sync
from channels.layers import BaseChannelLayer, get_channel_layer
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from qrcode.constants import ERROR_CORRECT_L

from whatsapp.models import Session, SessionEvent, Status

logger = logging.getLogger(__name__)

# Events kept per session; older ones are pruned as new ones are written.
EVENT_LOG_SIZE = 200

Publish = Callable[[str, dict], None]


class Fenced(Exception):
    """The writer no longer holds the bot's lease: its write is refused."""


def qr_image(payload: str) -> str:
    """A QR payload as a scannable PNG data URL (``data:image/png;base64,...``).

    Error correction L keeps WhatsApp's long payload at a size phones read
    easily; the quiet zone of 4 modules is what QR readers expect.
    """
    code = qrcode.QRCode(error_correction=ERROR_CORRECT_L, box_size=6, border=4)
    code.add_data(payload)
    code.make(fit=True)
    buffer = io.BytesIO()
    code.make_image(fill_color="black", back_color="white").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def frame_for(event: str, session: Session) -> dict:
    """The WebSocket frame of a session as it is now (docs/api.md, connection events)."""
    frame = {"event": event, **session.status_payload()}
    frame["at"] = frame.pop("updatedAt")
    return frame


def record(
    bot_id: uuid.UUID | str,
    event: str,
    status: Status | str,
    *,
    fence: tuple[str, int] | None = None,
    detail: str = "",
    **changes,
) -> Session:
    """Change a session's status and log it; ``fence`` is a shard's (owner, epoch).

    Raises ``Fenced`` when the shard lost the lease, ``Session.DoesNotExist``
    when the bot is gone.
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
        # The log keeps no image: a logged QR is superseded by the time anyone replays it.
        logged = {key: value for key, value in frame.items() if key != "qrCode"}
        SessionEvent.objects.create(
            session_id=session.pk,
            version=session.version,
            event=event,
            status=status,
            detail=detail[:500],
            frame=logged,
        )
        if session.version % 50 == 0:
            SessionEvent.objects.filter(session_id=session.pk, version__lte=session.version - EVENT_LOG_SIZE).delete()
        transaction.on_commit(lambda: session_changed(session.pk, frame))
    logger.info("bot %s: %s -> %s %s", bot_id, event, status, detail, extra={"bot": bot_id})
    return session


def record_qr(
    bot_id: uuid.UUID, payload: str, *, expires_at, pairing_code: str, fence: tuple[str, int] | None = None
) -> Session:
    """A first or rotated QR code: shown as an image, stored with its expiry."""
    return record(
        bot_id,
        "qr",
        Status.QR_REQUIRED,
        fence=fence,
        qr_code=qr_image(payload),
        qr_expires_at=expires_at,
        pairing_code=pairing_code,
    )


def store_device(bot_id: uuid.UUID, *, jid: str, phone: str, push_name: str, fence: tuple[str, int]) -> None:
    """The device a phone just paired, kept at once (not a status change: ``connected`` follows).

    whatsmeow has written its row by then; if the shard dies before ``Connected``, the next one
    resumes this device instead of showing a new QR and leaving a ghost linked device on the phone.
    """
    owner, epoch = fence
    updated = Session.objects.filter(pk=bot_id, lease_owner=owner, lease_epoch=epoch).update(
        jid=jid, phone=phone, push_name=push_name
    )
    if updated != 1:
        raise Fenced(f"{bot_id} is no longer leased to {owner}@{epoch}")


# --- Broadcasting -------------------------------------------------------------------


def group_name(bot_id: uuid.UUID | str) -> str:
    """The group of a bot's pages: they hear that something changed (``page.changed``)."""
    return f"bot.{uuid.UUID(str(bot_id)).hex}"


def events_group(bot_id: uuid.UUID | str) -> str:
    """The group of a bot's JSON subscribers: they hear every frame (``session.frame``)."""
    return f"bot.{uuid.UUID(str(bot_id)).hex}.events"


def session_changed(bot_id: uuid.UUID, frame: dict) -> None:
    publish(events_group(bot_id), {"type": "session.frame", "frame": frame})
    publish(group_name(bot_id), {"type": "page.changed", "status": True})


def shared_layer() -> BaseChannelLayer | None:
    """The channel layer if it reaches other processes (Redis); None for the web's own in-memory one."""
    return get_channel_layer() if settings.REDIS_URL else None


_thread = threading.local()


def publish_from_this_thread(publisher: Publish | None) -> None:
    """Send this thread's broadcasts through ``publisher`` (a shard's DB threads: its event loop)."""
    _thread.publisher = publisher


def publish(group: str, message: dict) -> None:
    """Send a hint to a group now (call it after commit). A hint: failures are logged, never raised."""
    publisher = getattr(_thread, "publisher", None)
    if publisher is not None:
        publisher(group, message)
        return
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(group, message)
    except Exception:
        logger.warning("Could not broadcast to %s", group, exc_info=True)


def publish_after_commit(group: str, message: dict) -> None:
    transaction.on_commit(lambda: publish(group, message))
