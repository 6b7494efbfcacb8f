"""AI replies: every text that reaches a connected bot gets one answer (docs/invariants.md, 4 and 5).

The path of one inbound message, each step a compare-and-set fenced by the
shard's lease epoch, so a shard that lost a bot writes nothing for it:

1. stored ``received`` (bots/inbox.py), before anything else;
2. :func:`begin`: the rules of :func:`decide` end it ``ignored`` or ``failed``
   (stale), or mark it ``replying`` and read the persona and the chat's last
   turns from the database;
3. Gemini (bots/gemini.py), within the reply budget, the fallback text when it fails;
4. :func:`finish`: ``replied`` and its reply row ``queued``, in one transaction
   (``in_reply_to`` is unique: one reply per inbound message);
5. the outbox: :func:`claim` (``queued -> sending``), then the provider sends and
   runs :func:`mark_sent` as its commit, right after the message left.

These are plain sync functions, run on the shard's DB threads and called
directly by tests; the async driver that runs them for a shard's chats is
pool/replies.py. Every status change goes through :func:`_move`, which tells
the bot's pages after commit (bots/broadcasts.py).
"""

from __future__ import annotations

import datetime
import functools
import logging
import operator
import uuid
from dataclasses import dataclass
from typing import NamedTuple

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from bots import broadcasts, gemini
from bots.gemini import Turn
from bots.models import TEXT_LIMIT, Bot, Direction, Message, MessageStatus, MessageType
from whatsapp import jids
from whatsapp.models import Session

logger = logging.getLogger(__name__)

# The conversation Gemini sees: the last messages of the chat, at most this many characters.
HISTORY_MESSAGES = 20
HISTORY_CHARS = 12_000
ACTIVE = (MessageStatus.RECEIVED, MessageStatus.REPLYING)
MEDIA = (MessageType.IMAGE, MessageType.AUDIO, MessageType.STICKER)
INTERRUPTED = "interrupted while sending: it may or may not have reached WhatsApp, so it is not sent again"

Fence = tuple[str, int]  # (lease owner, lease epoch)


# --- The rules --------------------------------------------------------------------------


IGNORE, FAIL, CANNED, ASK = "ignore", "fail", "canned", "ask"


@dataclass(frozen=True)
class Decision:
    action: str  # IGNORE, FAIL, CANNED (a fixed text) or ASK (Gemini)
    reason: str = ""
    text: str = ""


def mentions_bot(message: Message, session: Session) -> bool:
    """Whether a message names the bot: by its phone JID, or by its LID in a LID-addressed group."""
    own = {jid for jid in (jids.account_jid(session.jid, session.phone), session.lid) if jid}
    return any(jids.bare(str(jid)) in own for jid in message.mentions or ())


def received_at(message: Message) -> datetime.datetime:
    """When the message was sent (WhatsApp's time) or, if earlier or unknown, stored."""
    return min(t for t in (message.sent_at, message.created_at) if t is not None)


def decide(message: Message, bot: Bot, session: Session, now: datetime.datetime) -> Decision:
    """What an inbound message gets: nothing, a fixed text, or Gemini's answer."""
    if message.from_me:
        return Decision(IGNORE, "own message")
    if bot.deleted_at is not None:
        return Decision(IGNORE, "bot deleted")
    if not bot.is_active:
        return Decision(IGNORE, "bot inactive")
    if message.chat.endswith(("@broadcast", "@newsletter")):
        return Decision(IGNORE, "not a chat")
    if jids.is_group(message.chat):
        if not bot.reply_in_groups:
            return Decision(IGNORE, "group message")
        if not mentions_bot(message, session):
            return Decision(IGNORE, "not mentioned")
    if (now - received_at(message)).total_seconds() > settings.WHATSAPP_REPLY_MAX_AGE:
        return Decision(FAIL, "stale")
    if message.type in MEDIA:
        if not bot.non_text_reply.strip():
            return Decision(IGNORE, "not text")
        return Decision(CANNED, text=bot.non_text_reply)
    if message.type != MessageType.TEXT:
        return Decision(IGNORE, "unsupported message type")
    if not message.text.strip():
        return Decision(IGNORE, "empty text")
    return Decision(ASK)


# --- The conversation -------------------------------------------------------------------


class Row(NamedTuple):
    """What the history needs of a stored message (tuples: model instances cost several times more)."""

    pk: int
    direction: str
    from_me: bool
    type: str
    text: str
    push_name: str
    sender: str
    status: str
    in_reply_to_id: int | None
    created_at: datetime.datetime


def turn_of(message: Message | Row, group: bool) -> Turn | None:
    """A stored message as a turn: what others wrote is the user's, what the bot's number sent the model's."""
    if message.direction == Direction.OUT or message.from_me:
        return ("model", message.text) if message.text.strip() else None
    text = message.text.strip()
    if message.type != MessageType.TEXT:
        text = f"[{message.type}] {text}".strip()
    if not text:
        return None
    if group:
        text = f"{message.push_name or jids.user_of(message.sender)}: {text}"
    return ("user", text)


def history(message: Message) -> list[Turn]:
    """The chat up to and including ``message``, as alternating turns that start with the user's.

    The newest HISTORY_MESSAGES messages, then as many as fit in HISTORY_CHARS;
    outbound messages that never left are not part of it; consecutive turns of
    one side are merged. A reply counts where it belongs, right after its
    question, even when it was written after later messages had arrived.
    """
    chat = Message.objects.filter(bot_id=message.bot_id, chat=message.chat).exclude(
        direction=Direction.OUT, status=MessageStatus.FAILED
    )
    earlier = [
        Row(*values)
        for values in chat.filter(
            Q(created_at__lt=message.created_at) | Q(created_at=message.created_at, pk__lt=message.pk)
        )
        .order_by("-created_at", "-pk")
        .values_list(*Row._fields)[:HISTORY_MESSAGES]
    ]
    answered = {row.in_reply_to_id for row in earlier if row.in_reply_to_id}
    late = [row.pk for row in earlier if row.status == MessageStatus.REPLIED and row.pk not in answered]
    if late:
        earlier += [Row(*values) for values in chat.filter(in_reply_to_id__in=late).values_list(*Row._fields)]
    questions = {row.pk: row for row in earlier}

    def position(row: Row) -> tuple:
        question = questions.get(row.in_reply_to_id)
        if question is not None:
            return (question.created_at, question.pk, 1)
        return (row.created_at, row.pk, 0)

    earlier.sort(key=position)
    group = jids.is_group(message.chat)
    turns: list[Turn] = []
    budget = HISTORY_CHARS
    for row in [message, *reversed(earlier[-HISTORY_MESSAGES:])]:
        turn = turn_of(row, group)
        if turn is None:
            continue
        if row is message:
            turn = (turn[0], turn[1][:HISTORY_CHARS])
        elif len(turn[1]) > budget:
            break
        budget -= len(turn[1])
        turns.append(turn)
    merged: list[Turn] = []
    for role, text in reversed(turns):
        if merged and merged[-1][0] == role:
            merged[-1] = (role, f"{merged[-1][1]}\n{text}")
        elif merged or role == "user":
            merged.append((role, text))
    return merged


# --- The database steps (sync: the shard's DB threads, and tests) -------------------------


@dataclass(frozen=True)
class Work:
    """A message a shard has to act on: an inbound one to answer, or an outbound one to send."""

    id: int
    bot_id: uuid.UUID
    chat: str
    direction: str
    text: str = ""

    @classmethod
    def of(cls, message: Message) -> Work:
        return cls(message.pk, message.bot_id, message.chat, message.direction, message.text)


@dataclass(frozen=True)
class Prompt:
    """What Gemini is asked for one inbound message."""

    message_id: int
    bot_id: uuid.UUID
    chat: str
    sender: str
    model: str
    temperature: float
    system_prompt: str
    fallback_text: str
    turns: list[Turn]


def holds_lease(fence: Fence) -> Exists:
    owner, epoch = fence
    return Exists(Session.objects.filter(bot_id=OuterRef("bot_id"), lease_owner=owner, lease_epoch=epoch))


def _move(message_id: int, statuses, fence: Fence | None, **changes) -> bool:
    """Compare-and-set a message's status, only while ``fence`` (if given) holds the bot's lease.

    In SQL: it is the pipeline's most frequent statement, and the ORM spends several
    times the database's time building it with an Exists() like :func:`holds_lease`.
    A move is told to the bot's pages after commit.
    """
    changes["updated_at"] = timezone.now()
    fields = [Message._meta.get_field(name) for name in changes]
    quote = connection.ops.quote_name
    table, sessions = quote(Message._meta.db_table), quote(Session._meta.db_table)
    sql = (
        f"UPDATE {table} SET {', '.join(f'{quote(field.column)} = %s' for field in fields)}"
        f" WHERE {quote('id')} = %s AND {quote('status')} IN ({', '.join(['%s'] * len(statuses))})"
    )
    params = [field.get_db_prep_save(changes[field.name], connection) for field in fields]
    params += [message_id, *(str(status) for status in statuses)]
    if fence is not None:
        sql += (
            f" AND EXISTS (SELECT 1 FROM {sessions} WHERE {sessions}.{quote('bot_id')} = {table}.{quote('bot_id')}"
            f" AND {sessions}.{quote('lease_owner')} = %s AND {sessions}.{quote('lease_epoch')} = %s)"
        )
        params += list(fence)
    sql += f" RETURNING {quote('bot_id')}"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        moved = cursor.fetchone()
    if moved is None:
        return False
    broadcasts.messages_changed(moved[0])
    return True


def begin(message_id: int, fence: Fence, now: datetime.datetime | None = None) -> Prompt | Work | None:
    """Decide on an inbound message: a Prompt for Gemini, a reply to send (Work), or None (nothing to do)."""
    message = (
        Message.objects.select_related("bot__session")
        .filter(pk=message_id, direction=Direction.IN, status__in=ACTIVE)
        .first()
    )
    if message is None:
        return None
    bot, session = message.bot, message.bot.session
    if (session.lease_owner, session.lease_epoch) != fence:
        return None
    decision = decide(message, bot, session, now or timezone.now())
    if decision.action in (IGNORE, FAIL):
        status = MessageStatus.IGNORED if decision.action == IGNORE else MessageStatus.FAILED
        _move(message_id, ACTIVE, fence, status=status, error=decision.reason)
        return None
    if decision.action == CANNED:
        return reply(
            message_id,
            ACTIVE,
            decision.text,
            fence,
            bot_id=bot.pk,
            chat=message.chat,
            sender=jids.account_jid(session.jid, session.phone),
        )
    if not _move(message_id, ACTIVE, fence, status=MessageStatus.REPLYING):
        return None
    return Prompt(
        message_id=message_id,
        bot_id=bot.pk,
        chat=message.chat,
        sender=jids.account_jid(session.jid, session.phone),
        model=bot.model,
        temperature=bot.temperature,
        system_prompt=bot.system_prompt,
        fallback_text=bot.fallback_text,
        turns=history(message),
    )


def reply(
    message_id: int,
    statuses,
    text: str,
    fence: Fence,
    *,
    bot_id: uuid.UUID,
    chat: str,
    sender: str,
    error: str = "",
    ai_latency_ms: int | None = None,
) -> Work | None:
    """Mark an inbound message answered and queue its reply, in one transaction (invariant 4).

    An empty ``text`` (a failed answer and no fallback text) ends it ``failed`` instead.
    Returns the queued reply, or None when there is nothing to send.
    """
    text = text.strip()[:TEXT_LIMIT]
    changes: dict = {"error": error[:500], "ai_latency_ms": ai_latency_ms}
    with transaction.atomic():
        if not text:
            _move(message_id, statuses, fence, status=MessageStatus.FAILED, **changes)
            return None
        if not _move(message_id, statuses, fence, status=MessageStatus.REPLIED, **changes):
            return None
        answer = Message.objects.queue(bot_id=bot_id, chat=chat, text=text, sender=sender, in_reply_to_id=message_id)
    return Work.of(answer)


def finish(prompt: Prompt, answer: gemini.Answer, fence: Fence) -> Work | None:
    """Gemini answered (or failed: then the fallback text goes, and the reason is kept)."""
    text = answer.text if answer.text is not None else prompt.fallback_text
    error = "" if answer.text is not None else answer.reason
    if answer.text is None and not prompt.fallback_text.strip():
        error = f"{error}; no fallback text"
    return reply(
        prompt.message_id,
        [MessageStatus.REPLYING],
        text,
        fence,
        bot_id=prompt.bot_id,
        chat=prompt.chat,
        sender=prompt.sender,
        error=error,
        ai_latency_ms=answer.latency_ms,
    )


def claim(message_id: int, fence: Fence) -> bool:
    """The outbox takes a queued message to send it."""
    return _move(message_id, [MessageStatus.QUEUED], fence, status=MessageStatus.SENDING)


def mark_sent(message_id: int, wa_id: str) -> None:
    """Run by the provider as the send's commit: the message left, so it is `sent`, lease or not."""
    if _move(message_id, [MessageStatus.SENDING], None, status=MessageStatus.SENT, wa_id=wa_id, sent_at=timezone.now()):
        return
    logger.warning("message %s was sent as %s but was no longer 'sending'", message_id, wa_id)


def requeue(message_id: int, fence: Fence) -> bool:
    return _move(message_id, [MessageStatus.SENDING], fence, status=MessageStatus.QUEUED)


def send_failed(message_id: int, fence: Fence, error: str) -> bool:
    return _move(message_id, [MessageStatus.SENDING], fence, status=MessageStatus.FAILED, error=error[:500])


def queued_in_chat(bot_id: uuid.UUID, chat: str, before: int) -> list[Work]:
    rows = Message.objects.filter(
        bot_id=bot_id, chat=chat, direction=Direction.OUT, status=MessageStatus.QUEUED, pk__lt=before
    ).order_by("pk")
    return [Work.of(row) for row in rows]


def pending(inbound_bots: list[uuid.UUID], outbound_bots: list[uuid.UUID], limit: int = 500) -> list[Work]:
    """Inbound messages still to answer and outbound ones still to send, oldest first."""
    wanted = []
    if inbound_bots:
        wanted.append(Q(bot_id__in=inbound_bots, status__in=ACTIVE))
    if outbound_bots:
        wanted.append(Q(bot_id__in=outbound_bots, status=MessageStatus.QUEUED))
    if not wanted:
        return []
    rows = (
        Message.objects.filter(functools.reduce(operator.or_, wanted))
        .only("bot_id", "chat", "direction", "text")
        .order_by("pk")[:limit]
    )
    return [Work.of(row) for row in rows]


def recover(bot_id: uuid.UUID, fence: Fence, resend: bool) -> list[Work]:
    """A shard took a bot: settle the sends its last host left half done, and return the work it left.

    A ``sending`` row may have left (WhatsApp has it, and the host died before its ``sent`` mark).
    With ``resend`` (a provider that delivers one message per ref) it is sent again, and arrives
    once. Otherwise (neonize) it is marked failed rather than risk sending it twice.
    """
    stuck = Message.objects.filter(bot_id=bot_id, status=MessageStatus.SENDING).filter(holds_lease(fence))
    if resend:
        settled = stuck.update(status=MessageStatus.QUEUED, updated_at=timezone.now())
    else:
        settled = stuck.update(status=MessageStatus.FAILED, error=INTERRUPTED, updated_at=timezone.now())
    if settled:
        broadcasts.messages_changed(bot_id)
    return pending([bot_id], [bot_id])
