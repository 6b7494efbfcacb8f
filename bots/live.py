"""The operator's pages, live: what changed since a page's cursor, and the sockets that push it.

A page is rendered with a cursor (the session version it shows, the newest message
id, the messages whose status may still change). Its socket (``ws/bots/{id}/live``,
``ws/bots/live``) and its polling fallback (bots/views.py) both call
:func:`bot_updates` or :func:`list_updates` with that cursor and get back the
partials that changed, marked ``hx-swap-oob`` for htmx, and the moved cursor.

A socket renders once when it opens, then again only when its groups hear
that something changed (bots/broadcasts.py, whatsapp/state.py): it follows
no clock. The database is the truth; a hint only says when to look
(docs/invariants.md, 1).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from django.conf import settings
from django.db.models import Count, Max, Q
from django.template.loader import render_to_string
from django.utils import timezone, translation

from bots.models import Bot, Message, MessageStatus
from bots.sockets import CLOSE_NOT_FOUND, LiveSocket, on_any_thread
from whatsapp.models import Session, SessionEvent, Status
from whatsapp.state import group_name

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
    def from_query(cls, query: Mapping[str, list[str]]) -> Cursor:
        """From a page's query: ``seq``, ``after`` and ``pending`` (``id:status``, repeated or comma-separated)."""

        def first(name: str, default: int) -> int:
            return _int((query.get(name) or [default])[0], default)

        pending: dict[int, str] = {}
        items = [item for value in query.get("pending", []) for item in value.split(",")]
        for item in items[:PENDING_LIMIT]:
            message_id, _, status = item.partition(":")
            if message_id.isdigit() and status in MessageStatus.values:
                pending[int(message_id)] = status
        return cls(seq=first("seq", -1), after=max(0, first("after", 0)), pending=pending)


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
    """The bot list's rows when the user's bots changed (all of them without ``since``), else the moved badges.

    ``since`` maps each bot the page shows to the session version it shows.
    """
    bots = list(Bot.objects.visible_to(user).select_related("session"))
    versions = {bot.pk: bot.session.version for bot in bots}
    if since is None or set(since) != set(versions):
        return render_to_string("bots/_bot_list.html", {"bots": bots, "oob": True}), versions
    moved = [bot.session for bot in bots if bot.session.version > since[bot.pk]]
    if not moved:
        return "", versions
    return render_to_string("bots/_list_live.html", {"sessions": moved, "oob": True}), versions


# --- The sockets ---------------------------------------------------------------------------


def page_language(code: str | None) -> str:
    """The language the page was rendered in (its ``lang`` parameter), if this site speaks it."""
    try:
        return translation.get_supported_language_variant(code or "")
    except LookupError:
        return settings.LANGUAGE_CODE


class Gone(Exception):
    """The bot the page shows was deleted: its socket closes with 4404."""


class LivePage(LiveSocket):
    """A page's socket: renders what changed since its cursor, in the page's language, on a DB thread."""

    def authorize(self) -> bool:
        self.query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        self.language = page_language((self.query.get("lang") or [None])[0])
        return self.find()

    async def start(self) -> None:
        await self.update()

    async def update(self) -> None:
        try:
            html = await on_any_thread(self._render)()
        except Gone:
            await self.refuse(CLOSE_NOT_FOUND)
            return
        if html:
            await self.push(html)

    def _render(self) -> str:
        with translation.override(self.language):
            return self.render()

    def find(self) -> bool:
        raise NotImplementedError

    def render(self) -> str:
        """What changed since the last call, as out-of-band partials ("" for nothing). Runs on a DB thread."""
        raise NotImplementedError


class BotPageConsumer(LivePage):
    """``ws/bots/{id}/live[?chat=JID]``: the pairing panel, history and conversations of one bot."""

    def find(self) -> bool:
        bot_id = self.scope["url_route"]["kwargs"]["bot_id"]
        self.bot = Bot.objects.visible_to(self.listener.user).filter(pk=bot_id).first()
        if self.bot is None:
            return False
        self.chat = (self.query.get("chat") or [None])[0] or None
        self.cursor = Cursor.from_query(self.query)
        # Forms in the partials post with the page's CSRF cookie (Django accepts the unmasked secret).
        self.csrf_token = self.scope.get("cookies", {}).get(settings.CSRF_COOKIE_NAME, "")
        return True

    async def join_groups(self) -> None:
        await self.join(group_name(self.bot.pk))

    async def page_changed(self, message: dict) -> None:
        await self.update()

    def render(self) -> str:
        try:
            html, self.cursor = bot_updates(self.bot, self.cursor, chat=self.chat, csrf_token=self.csrf_token)
        except Session.DoesNotExist:
            raise Gone from None
        return html


class BotListConsumer(LivePage):
    """``ws/bots/live``: the user's bots, their rows when the list changes and their badges when a status moves."""

    def find(self) -> bool:
        self.versions: dict | None = None
        return True

    async def join_groups(self) -> None:
        for bot_id in await on_any_thread(self.bot_ids)():
            await self.join(group_name(bot_id))

    def bot_ids(self) -> list:
        return list(Bot.objects.visible_to(self.listener.user).values_list("pk", flat=True))

    async def page_changed(self, message: dict) -> None:
        if message.get("status"):
            await self.update()

    async def list_changed(self, message: dict) -> None:
        self.versions = None  # the rows again, whole: a name may have changed
        await self.update()
        # Hear the bots it shows now, and only those.
        wanted = {group_name(bot_id) for bot_id in self.versions or ()}
        for group in [g for g in self.joined if g.startswith("bot.") and g not in wanted]:
            await self.leave(group)
        for group in wanted - set(self.joined):
            await self.join(group)

    async def bot_access(self, message: dict) -> None:
        """A bot was given away or deleted: the list follows (``list.changed``); the socket stays."""

    def render(self) -> str:
        html, self.versions = list_updates(self.listener.user, self.versions)
        return html
