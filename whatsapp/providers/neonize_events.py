"""neonize's events, as the provider interface has them: translation and the handlers of one client.

Handlers run on Go's threads (one per client): they translate and enqueue, nothing slow
(docs/neonize.md). ``inbound_from`` reads a ``MessageEv`` the way whatsmeow hands it over,
wrappers (ephemeral, view-once, device-sent, edited) already unwrapped.
"""

from __future__ import annotations

import datetime
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

from whatsapp import jids
from whatsapp.providers import connect_failures
from whatsapp.providers.base import Events, Inbound

logger = logging.getLogger(__name__)

FIRST_QR_SECONDS = 60.0
NEXT_QR_SECONDS = 20.0


def jid_from_string(value: str):
    """``5511…:12@s.whatsapp.net`` as the full JID whatsmeow's GetDevice matches on."""
    from neonize.proto.Neonize_pb2 import JID

    user_device, _, server = value.partition("@")
    user, _, device = user_device.partition(":")
    return JID(User=user, Device=int(device or 0), Server=server, RawAgent=0, Integrator=0, IsEmpty=False)


def jid_string(jid) -> str:
    from neonize.utils.jid import Jid2String

    return Jid2String(jid)


def chat_string(jid) -> str:
    from neonize.utils.jid import Jid2String, JIDToNonAD

    return Jid2String(JIDToNonAD(jid))


# --- Event translation: neonize's protobuf events into the provider interface --------


def addressed(message) -> tuple[str, ...]:
    """Whom a message addresses: the JIDs it mentions, and the author of the message it quotes
    (a reply to the bot's own message addresses the bot, in a group too).

    Read from the context info of whatever the message is: a text, or a photo's, video's or
    document's caption, each of which carries its own.
    """
    found: list[str] = []
    for _, content in message.ListFields():
        fields = getattr(getattr(content, "DESCRIPTOR", None), "fields_by_name", {})
        if "contextInfo" not in fields or not content.HasField("contextInfo"):
            continue
        context = content.contextInfo
        found.extend(context.mentionedJID)
        if context.HasField("quotedMessage") and context.participant:
            found.append(context.participant)
    return tuple(dict.fromkeys(found))


# Parts of a message that say nothing themselves: group encryption keys, the message's secret.
NOT_CONTENT = frozenset(
    {"senderKeyDistributionMessage", "fastRatchetKeySenderKeyDistributionMessage", "messageContextInfo"}
)
# About another message, or a vote: a revoke or an edit (protocolMessage), a reaction, a pin...
# Never a new question, so not stored (docs/neonize.md).
ABOUT_ANOTHER = frozenset(
    {
        "protocolMessage",
        "reactionMessage",
        "encReactionMessage",
        "pollUpdateMessage",
        "keepInChatMessage",
        "pinInChatMessage",
        "encEventResponseMessage",
    }
)


def kind_of(message) -> str:
    from neonize.utils.message import extract_text

    if message.HasField("imageMessage"):
        return "image"
    if message.HasField("audioMessage"):  # a voice note (ptt) too
        return "audio"
    if message.HasField("stickerMessage"):
        return "sticker"
    if message.HasField("conversation") or message.HasField("extendedTextMessage"):
        return "text"
    if message.HasField("videoMessage") or message.HasField("documentMessage"):
        # A caption is the customer's words, read as text (whatsmeow has unwrapped a document
        # sent with a caption already); the file itself is not read.
        return "text" if extract_text(message).strip() else "other"
    return "other"


def inbound_from(event) -> Inbound | None:
    """A neonize MessageEv as an Inbound message; None for what is not a message for the bot.

    One person is one chat: a LID sender (or, for the bot's own phone, a LID chat) is kept under
    the phone JID whatsmeow gives beside it (SenderAlt, RecipientAlt), else under the LID.
    Status posts, channels (newsletters), edits, revokes, reactions and votes are not messages
    for the bot: None.
    """
    from neonize.utils.message import extract_text

    info = event.Info
    source = info.MessageSource
    message = event.Message
    parts = {field.name for field, _ in message.ListFields()} - NOT_CONTENT
    if not parts or parts & ABOUT_ANOTHER or event.IsEdit or info.Edit:
        return None
    chat, sender = jids.conversation(
        chat_string(source.Chat),
        chat_string(source.Sender),
        sender_alt=chat_string(source.SenderAlt),
        recipient_alt=chat_string(source.RecipientAlt) if source.IsFromMe else "",
    )
    if jids.is_feed(chat):
        return None
    timestamp = None
    if info.Timestamp:
        # neonize sends milliseconds (Go UnixMilli).
        timestamp = datetime.datetime.fromtimestamp(info.Timestamp / 1000, tz=datetime.UTC)
    return Inbound(
        wa_id=info.ID,
        chat=chat,
        sender=sender,
        text=extract_text(message) or "",
        type=kind_of(message),
        push_name=info.Pushname,
        from_me=source.IsFromMe,
        is_group=jids.is_group(chat),
        mentions=addressed(message),
        timestamp=timestamp,
    )


def own_lid(client) -> str:
    """The account's LID as neonize got it before any event (``client.me``, Go's FetchMe); '' if none."""
    me = getattr(client, "me", None)
    if me is None or not me.HasField("LID") or not me.LID.User:
        return ""
    return chat_string(me.LID)


class Handlers:
    """What one bot's neonize client calls on Go threads: translate, then only enqueue."""

    def __init__(
        self, bot_id: uuid.UUID, events: Events, on_event: Callable[[Any], bool], pair: Callable | None
    ) -> None:
        self.bot_id = bot_id
        self.events = events
        # Called first at every callback with the neonize client it came from (its dial is over):
        # False for a client that is no longer the bot's, whose events are dropped (a late
        # Connected from a stopped client would make the bot "connected" with no client).
        self.on_event = on_event
        self.pair = pair
        self.qr_count = 0
        self.pairing_code = ""

    def qr(self, client, data: bytes) -> None:
        if not self.on_event(client):
            return
        self.qr_count += 1
        payload = data.decode()
        lifetime = FIRST_QR_SECONDS if self.qr_count == 1 else NEXT_QR_SECONDS
        if self.qr_count == 1 and self.pair is not None:
            # The pairing code needs the websocket up, so it is asked for from the first QR,
            # on a thread of its own: nothing slow on Go's thread.
            threading.Thread(target=self._pair_then_show, args=(client, payload, lifetime), daemon=True).start()
            return
        self.events.qr(self.bot_id, payload, lifetime, self.pairing_code)

    def _pair_then_show(self, client, payload: str, lifetime: float) -> None:
        try:
            self.pairing_code = self.pair(client)
        except Exception as exc:
            logger.warning("bot %s: pairing code request failed: %s", self.bot_id, exc)
        self.events.qr(self.bot_id, payload, lifetime, self.pairing_code)

    def pair_status(self, client, event) -> None:
        from neonize.events import PairStatusEv

        if event.Status == PairStatusEv.SUCCESS:
            self.events.paired(self.bot_id, jid_string(event.ID), event.ID.User, event.BusinessName)
        else:
            self.events.disconnected(self.bot_id, f"pairing failed: {event.Error or 'unknown error'}")

    def connected(self, client, event) -> None:
        self._connected(client)

    def _connected(self, client) -> None:
        lid = own_lid(client)
        if lid:
            self.events.connected(self.bot_id, lid)
        else:
            self.events.connected(self.bot_id)

    def disconnected(self, client, event) -> None:
        # Only for a close whatsmeow did not expect, and it is reconnecting already (at 0, 2, 4... s).
        self.events.reconnecting(self.bot_id, "connection lost")

    def keepalive_timeout(self, client, event) -> None:
        # Pings unanswered: whatsmeow reconnects by itself after a while; sends fail meanwhile.
        self.events.reconnecting(self.bot_id, f"keepalive timeout ({event.ErrorCount} unanswered)")

    def keepalive_restored(self, client, event) -> None:
        self._connected(client)

    def logged_out(self, client, event) -> None:
        # whatsmeow's codes (connectionevents.go): 401 unlinked, 403 locked, 406 banned; the store
        # row is deleted in every case. What the operator can do differs: say which.
        self.events.logged_out(self.bot_id, connect_failures.logged_out(event))

    def stream_replaced(self, client, event) -> None:
        self.events.failed(self.bot_id, "stream_replaced")

    def temporary_ban(self, client, event) -> None:
        from neonize.events import TemporaryBanEv

        reason = TemporaryBanEv.TempBanReason.Name(event.Code) if event.Code else "unknown reason"
        # Expire is how long the ban lasts, in seconds.
        self.events.failed(self.bot_id, connect_failures.temporary_ban(reason, event.Expire))

    def client_outdated(self, client, event) -> None:
        self.events.failed(self.bot_id, connect_failures.REASONS[405][1])

    def connect_failure(self, client, event) -> None:
        # By code (connect_failures.py): retried, the end, or logged out, each saying what to do.
        outcome, reason = connect_failures.connect_failure(event)
        getattr(self.events, outcome.value)(self.bot_id, reason)

    def message(self, client, event) -> None:
        inbound = inbound_from(event)
        if inbound is not None:
            self.events.message(self.bot_id, inbound)

    def register(self, client) -> None:
        from neonize import events as ev

        client.event.qr(self.qr)
        for event_type, handler in (
            (ev.PairStatusEv, self.pair_status),
            (ev.ConnectedEv, self.connected),
            (ev.DisconnectedEv, self.disconnected),
            (ev.KeepAliveTimeoutEv, self.keepalive_timeout),
            (ev.KeepAliveRestoredEv, self.keepalive_restored),
            (ev.LoggedOutEv, self.logged_out),
            (ev.StreamReplacedEv, self.stream_replaced),
            (ev.TemporaryBanEv, self.temporary_ban),
            (ev.ClientOutdatedEv, self.client_outdated),
            (ev.ConnectFailureEv, self.connect_failure),
            (ev.MessageEv, self.message),
        ):
            # Plain functions, not bound methods: neonize keeps bound methods as weak refs.
            client.event(event_type)(lambda c, e, h=handler: h(c, e) if self.on_event(c) else None)
