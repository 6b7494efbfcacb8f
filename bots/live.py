"""What the operator's pages show, and what changed since: the same partials for the first render and live updates.

A page is rendered with a cursor (the session version it shows, the newest message
id, the messages whose status may still change). The page consumer
(bots/consumers.py) and the polling fallback (``bots.views.bot_live``) both call
:func:`bot_updates` with that cursor and get back the partials that changed,
marked ``hx-swap-oob``, and the moved cursor. The database is the truth: a frame
on the channel layer only wakes the consumer up to look (DESIGN.md invariant 1).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field

from django.db.models import Count, Max, Q
from django.template.loader import render_to_string
from django.utils import timezone

from bots.models import Bot, Message, MessageStatus
from whatsapp.models import Session, SessionEvent, Status

HISTORY_SIZE = 50
CHAT_LIST_SIZE = 50
CONVERSATION_SIZE = 200
# A page asks about at most this many messages whose status may still change.
PENDING_LIMIT = 100
# Ids are handed out at insert, and concurrent writers may commit out of order: a message with a
# smaller id can appear after a larger one was shown. Recent messages are looked at again for this long.
LATE_COMMITS = datetime.timedelta(seconds=10)
FINAL_STATUSES = frozenset({MessageStatus.REPLIED, MessageStatus.IGNORED, MessageStatus.SENT, MessageStatus.FAILED})


def _int(value: object, default: int) -> int:
    try:
        return max(-1, int(str(value)))
    except ValueError:
        return default


@dataclass
class Cursor:
    """Where a page is: the session version and newest message it shows, and its unsettled messages."""

    seq: int = -1
    after: int = 0
    # message id -> the status the page shows, for messages that may still change
    pending: dict[int, str] = field(default_factory=dict)
    # message id -> creation time, of the recent messages a consumer has sent (kept in memory only)
    recent: dict[int, datetime.datetime] = field(default_factory=dict)

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> Cursor:
        pending: dict[int, str] = {}
        for item in str(query.get("pending", "")).split(",")[:PENDING_LIMIT]:
            message_id, _, status = item.partition(":")
            if message_id.isdigit() and status in MessageStatus.values:
                pending[int(message_id)] = status
        return cls(seq=_int(query.get("seq", -1), -1), after=max(0, _int(query.get("after", 0), 0)), pending=pending)


def is_pending(message: Message) -> bool:
    return message.status not in FINAL_STATUSES


def qr_expires_in(session: Session) -> int | None:
    if session.status != Status.QR_REQUIRED or session.qr_expires_at is None:
        return None
    return max(0, round((session.qr_expires_at - timezone.now()).total_seconds()))


def connection_context(bot: Bot, session: Session) -> dict:
    """What the status badge and the pairing panel are rendered from."""
    return {"bot": bot, "session": session, "qr_expires_in": qr_expires_in(session)}


def history(bot: Bot, after: int = -1) -> list[SessionEvent]:
    """The connection history from the event log, newest first."""
    rows = SessionEvent.objects.filter(session_id=bot.pk, version__gt=after).order_by("-version")
    return list(rows[:HISTORY_SIZE])


@dataclass
class Chat:
    jid: str
    last: Message
    count: int
    push_name: str = ""

    @property
    def name(self) -> str:
        return self.push_name or display_jid(self.jid)

    @property
    def number(self) -> str:
        return display_jid(self.jid)


def display_jid(jid: str) -> str:
    """+5511987654321 for a user JID, the JID itself for a group."""
    user, _, server = jid.partition("@")
    if server == "s.whatsapp.net":
        return "+" + user.split(":")[0]
    return jid


def chats(bot: Bot) -> list[Chat]:
    """The bot's conversations, the most recent first, with their last message."""
    rows = list(
        Message.objects.filter(bot=bot)
        .values("chat")
        .annotate(
            last_id=Max("id"),
            count=Count("id"),
            named_id=Max("id", filter=Q(direction="in") & ~Q(push_name="")),
        )
        .order_by("-last_id")[:CHAT_LIST_SIZE]
    )
    ids = {row["last_id"] for row in rows} | {row["named_id"] for row in rows if row["named_id"]}
    messages = Message.objects.in_bulk(ids)
    return [
        Chat(
            jid=row["chat"],
            last=messages[row["last_id"]],
            count=row["count"],
            push_name=messages[row["named_id"]].push_name if row["named_id"] else "",
        )
        for row in rows
    ]


def conversation(bot: Bot, chat: str) -> list[Message]:
    rows = Message.objects.filter(bot=bot, chat=chat).order_by("-id")[:CONVERSATION_SIZE]
    return list(reversed(rows))


def page_cursor(session: Session, messages: list[Message] | None = None, newest: int | None = None) -> Cursor:
    """The cursor of a page rendered now, from what it shows."""
    shown = messages or []
    after = newest if newest is not None else max((m.id for m in shown), default=0)
    return Cursor(seq=session.version, after=after, pending={m.id: m.status for m in shown if is_pending(m)})


def newest_message_id(bot: Bot) -> int:
    return Message.objects.filter(bot=bot).aggregate(newest=Max("id"))["newest"] or 0


def bot_updates(bot: Bot, cursor: Cursor, *, chat: str | None = None, csrf_token: str = "") -> tuple[str, Cursor]:
    """The partials that changed since ``cursor`` on the bot page (or one conversation), and the new cursor.

    Raises ``Session.DoesNotExist`` when the bot is gone or deleted.
    """
    session = Session.objects.select_related("bot").get(pk=bot.pk, bot__deleted_at__isnull=True)
    bot = session.bot
    context: dict = {"oob": True, "bot": bot, "chat": chat, "csrf_token": csrf_token}
    moved = Cursor(cursor.seq, cursor.after, dict(cursor.pending), dict(cursor.recent))
    if session.version > cursor.seq:
        context.update(connection_context(bot, session), status_changed=True)
        if chat is None:
            context["events"] = history(bot, after=cursor.seq)
        moved.seq = session.version

    late = timezone.now() - LATE_COMMITS
    new = Message.objects.filter(bot=bot).filter(Q(id__gt=cursor.after) | Q(created_at__gte=late))
    if chat is not None:
        new = new.filter(chat=chat)
    new_messages = [m for m in new.order_by("id")[:CONVERSATION_SIZE] if m.id not in cursor.recent]
    moved.recent = {i: at for i, at in cursor.recent.items() if at >= late}
    moved.recent.update({m.id: m.created_at for m in new_messages if m.created_at >= late})
    if new_messages:
        moved.after = max(cursor.after, new_messages[-1].id)
        if chat is None:
            context["chats"] = chats(bot)
        else:
            context["new_messages"] = new_messages
            moved.pending.update({m.id: m.status for m in new_messages if is_pending(m)})

    watched = set(cursor.pending) - {m.id for m in new_messages}
    if chat is not None and watched:
        changed = [m for m in Message.objects.filter(bot=bot, id__in=watched) if m.status != cursor.pending[m.id]]
        for message in changed:
            if is_pending(message):
                moved.pending[message.id] = message.status
            else:
                moved.pending.pop(message.id, None)
        context["changed_messages"] = changed
    # The newest unsettled messages are the ones worth watching; a page shows no more than that many anyway.
    for message_id in sorted(moved.pending)[:-PENDING_LIMIT]:
        del moved.pending[message_id]

    if not {"status_changed", "chats", "new_messages", "changed_messages"} & {k for k, v in context.items() if v}:
        return "", moved
    context["cursor"] = moved
    return render_to_string("bots/_live.html", context), moved


def list_updates(user, since: Mapping[object, int] | None = None) -> tuple[str, dict]:
    """Status badges of the bot list whose session moved past ``since`` (all of them without it)."""
    sessions = list(Session.objects.filter(bot__in=Bot.objects.visible_to(user)).order_by("pk"))
    versions = {session.pk: session.version for session in sessions}
    if since is not None:
        sessions = [s for s in sessions if s.version > since.get(s.pk, -1)]
    if not sessions:
        return "", versions
    return render_to_string("bots/_list_live.html", {"sessions": sessions, "oob": True}), versions
