"""The adapter's translation over real-shaped neonize message events (docs/neonize.md).

Each event is neonize 0.5.2's own protobuf (``MessageEv`` with its ``MessageInfo`` and
``MessageSource``, and a WhatsApp ``Message``), shaped as whatsmeow hands it over: wrappers
(ephemeral, view-once, document-with-caption, edited) already unwrapped, with their flags set.
Each case says what a user would notice: under which chat and sender it is kept, its type and
text, whom it addresses, and whether the bot answers it (the reply rules, bots/replies.py).
"""

from __future__ import annotations

import datetime
import uuid
from types import SimpleNamespace

import pytest

from bots import replies
from bots.models import Bot, Direction, Message
from whatsapp.models import Session
from whatsapp.providers.neonize_events import Handlers, inbound_from

neonize_events = pytest.importorskip("neonize.events")
from neonize.proto import Neonize_pb2 as proto  # noqa: E402
from neonize.proto.waCommon.WACommon_pb2 import MessageKey  # noqa: E402
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as wa  # noqa: E402

BOT_PHONE = "5511987654321"
BOT = f"{BOT_PHONE}@s.whatsapp.net"
BOT_LID = "203012345678901@lid"
CUSTOMER = "5511955554444@s.whatsapp.net"
CUSTOMER_LID = "198765432109876@lid"
GROUP = "120363025246125888@g.us"
NOW = datetime.datetime.now(datetime.UTC)
NON_TEXT_REPLY = "Por enquanto só leio mensagens de texto."


def jid(value: str, device: int = 0):
    user, _, server = value.partition("@")
    return proto.JID(User=user, Device=device, Server=server, RawAgent=0, Integrator=0, IsEmpty=False)


def event(
    message: wa.Message,
    *,
    chat: str = CUSTOMER,
    sender: str = "",
    device: int = 3,
    sender_alt: str = "",
    recipient_alt: str = "",
    from_me: bool = False,
    lid_addressed: bool = False,
    age: datetime.timedelta = datetime.timedelta(seconds=5),
    edit: str = "",
    **flags,
):
    """A MessageEv as whatsmeow's parseMessageSource and UnwrapRaw leave it (message.go, events.go)."""
    source = proto.MessageSource(
        Chat=jid(chat),
        Sender=jid(sender or chat, device),
        IsFromMe=from_me,
        IsGroup=chat.endswith(("@g.us", "@broadcast")),
        AddressingMode=proto.LID if lid_addressed else proto.PN,
    )
    if sender_alt:
        source.SenderAlt.CopyFrom(jid(sender_alt, device))  # whatsmeow copies the sender's device
    if recipient_alt:
        source.RecipientAlt.CopyFrom(jid(recipient_alt))
    info = proto.MessageInfo(
        MessageSource=source,
        ID="3EB0" + uuid.uuid4().hex[:16].upper(),
        Type="media" if not message.HasField("conversation") else "text",
        Pushname="Cliente",
        Timestamp=int((NOW - age).timestamp() * 1000),  # neonize: milliseconds
        Edit=edit,
    )
    return neonize_events.MessageEv(Info=info, Message=message, **flags)


def text(body: str, **context) -> wa.Message:
    return wa.Message(extendedTextMessage=wa.ExtendedTextMessage(text=body, contextInfo=wa.ContextInfo(**context)))


def quoting_the_bot(body: str, author: str = BOT) -> wa.Message:
    return text(
        body, stanzaID="3EB0BOTREPLY", participant=author, quotedMessage=wa.Message(conversation="Abrimos às 8h.")
    )


def outcome(inbound, session: Session) -> str:
    """What the customer sees happen: not kept at all, or the reply rule's verdict."""
    if inbound is None:
        return "not stored"
    now = datetime.datetime.now(datetime.UTC)
    message = Message(
        direction=Direction.IN,
        chat=inbound.chat,
        sender=inbound.sender,
        type=inbound.type,
        text=inbound.text,
        from_me=inbound.from_me,
        mentions=list(inbound.mentions),
        sent_at=inbound.timestamp,
        created_at=now,
    )
    bot = Bot(name="Padaria", reply_in_groups=True, non_text_reply=NON_TEXT_REPLY)
    decision = replies.decide(message, bot, session, now)
    return decision.action + (f": {decision.reason}" if decision.reason else "")


ASKED = replies.ASK
CANNED = replies.CANNED
UNSUPPORTED = "ignore: unsupported message type"
JPEG, OPUS, VCARD = "image/jpeg", "audio/ogg; codecs=opus", "BEGIN:VCARD\nFN:Ana\nEND:VCARD"
POLL = wa.PollCreationMessage(name="Qual sabor?", options=[wa.PollCreationMessage.Option(optionName="Queijo")])


def direct(name: str, message: wa.Message, kind: str, body: str, verdict: str, **flags):
    """A case of a customer writing to the bot directly, by phone JID: what kind of message it is kept as."""
    return pytest.param(event(message, **flags), (CUSTOMER, CUSTOMER, kind, body, (), verdict), id=name)


# (event, expected: chat, sender, type, text, mentions, outcome)
CASES = [
    pytest.param(
        event(wa.Message(conversation="Oi, vocês abrem hoje?")),
        (CUSTOMER, CUSTOMER, "text", "Oi, vocês abrem hoje?", (), ASKED),
        id="plain-conversation",
    ),
    pytest.param(
        event(text("Fala com @5511933334444 também", mentionedJID=["5511933334444@s.whatsapp.net"])),
        (CUSTOMER, CUSTOMER, "text", "Fala com @5511933334444 também", ("5511933334444@s.whatsapp.net",), ASKED),
        id="extended-text-with-mention",
    ),
    pytest.param(
        event(wa.Message(conversation="Oi"), chat=CUSTOMER_LID, sender_alt=CUSTOMER, lid_addressed=True),
        (CUSTOMER, CUSTOMER, "text", "Oi", (), ASKED),
        id="lid-sender-with-sender-alt-is-the-phone-chat",
    ),
    pytest.param(
        event(wa.Message(conversation="Oi"), chat=CUSTOMER_LID, lid_addressed=True),
        (CUSTOMER_LID, CUSTOMER_LID, "text", "Oi", (), ASKED),
        id="lid-sender-without-sender-alt-stays-the-lid",
    ),
    pytest.param(
        event(wa.Message(conversation="Oi"), sender_alt=CUSTOMER_LID),
        (CUSTOMER, CUSTOMER, "text", "Oi", (), ASKED),
        id="phone-sender-with-its-lid-beside",
    ),
    pytest.param(
        event(
            text("@203012345678901 qual o horário?", mentionedJID=[BOT_LID]),
            chat=GROUP,
            sender=CUSTOMER_LID,
            sender_alt=CUSTOMER,
            lid_addressed=True,
        ),
        (GROUP, CUSTOMER, "text", "@203012345678901 qual o horário?", (BOT_LID,), ASKED),
        id="lid-group-mentioning-the-bots-lid",
    ),
    pytest.param(
        event(text("@Ana viu isso?", mentionedJID=[CUSTOMER_LID]), chat=GROUP, sender="5521933334444@s.whatsapp.net"),
        (GROUP, "5521933334444@s.whatsapp.net", "text", "@Ana viu isso?", (CUSTOMER_LID,), "ignore: not mentioned"),
        id="lid-group-mentioning-someone-else",
    ),
    pytest.param(
        event(wa.Message(conversation="Bom dia, pessoal"), chat=GROUP, sender=CUSTOMER),
        (GROUP, CUSTOMER, "text", "Bom dia, pessoal", (), "ignore: not mentioned"),
        id="group-without-mention",
    ),
    pytest.param(
        event(quoting_the_bot("E amanhã?"), chat=GROUP, sender=CUSTOMER),
        (GROUP, CUSTOMER, "text", "E amanhã?", (BOT,), ASKED),
        id="group-quoted-reply-to-the-bot",
    ),
    pytest.param(
        event(quoting_the_bot("E amanhã?", BOT_LID), chat=GROUP, sender=CUSTOMER_LID, lid_addressed=True),
        (GROUP, CUSTOMER_LID, "text", "E amanhã?", (BOT_LID,), ASKED),
        id="lid-group-quoted-reply-to-the-bot-without-sender-alt",
    ),
    pytest.param(
        event(
            wa.Message(conversation="Já separei seu pedido"),
            chat=CUSTOMER_LID,
            sender=BOT,
            device=12,
            recipient_alt=CUSTOMER,
            from_me=True,
        ),
        (CUSTOMER, BOT, "text", "Já separei seu pedido", (), "ignore: own message"),
        id="from-me-to-a-lid-chat-with-recipient-alt",
    ),
    direct(
        "image-with-caption",
        wa.Message(imageMessage=wa.ImageMessage(caption="Tem esse?", mimetype=JPEG)),
        "image",
        "Tem esse?",
        CANNED,
    ),
    direct("image-without-caption", wa.Message(imageMessage=wa.ImageMessage(mimetype=JPEG)), "image", "", CANNED),
    direct(
        "view-once-image-unwrapped",
        wa.Message(imageMessage=wa.ImageMessage(mimetype=JPEG, viewOnce=True)),
        "image",
        "",
        CANNED,
        IsViewOnce=True,
    ),
    direct("audio", wa.Message(audioMessage=wa.AudioMessage(mimetype="audio/mpeg", seconds=31)), "audio", "", CANNED),
    direct(
        "voice-note-ptt",
        wa.Message(audioMessage=wa.AudioMessage(mimetype=OPUS, seconds=7, PTT=True)),
        "audio",
        "",
        CANNED,
    ),
    direct(
        "video-with-caption",
        wa.Message(videoMessage=wa.VideoMessage(caption="Quanto custa?", seconds=12)),
        "text",
        "Quanto custa?",
        ASKED,
    ),
    direct("video-without-caption", wa.Message(videoMessage=wa.VideoMessage(seconds=12)), "other", "", UNSUPPORTED),
    direct(
        "document-with-caption-unwrapped",
        wa.Message(documentMessage=wa.DocumentMessage(caption="Segue o pedido", fileName="pedido.pdf")),
        "text",
        "Segue o pedido",
        ASKED,
        IsDocumentWithCaption=True,
    ),
    direct("sticker", wa.Message(stickerMessage=wa.StickerMessage(mimetype="image/webp")), "sticker", "", CANNED),
    direct(
        "location",
        wa.Message(locationMessage=wa.LocationMessage(degreesLatitude=-23.5, degreesLongitude=-46.6)),
        "other",
        "",
        UNSUPPORTED,
    ),
    direct(
        "contact",
        wa.Message(contactMessage=wa.ContactMessage(displayName="Ana", vcard=VCARD)),
        "other",
        "",
        UNSUPPORTED,
    ),
    direct("poll-creation", wa.Message(pollCreationMessageV3=POLL), "other", "", UNSUPPORTED),
    pytest.param(
        event(
            text("Vocês entregam?", expiration=604800),
            IsEphemeral=True,
        ),
        (CUSTOMER, CUSTOMER, "text", "Vocês entregam?", (), ASKED),
        id="ephemeral-unwrapped",
    ),
    pytest.param(
        event(wa.Message(conversation="Oi, ainda estão abertos?"), age=datetime.timedelta(days=3)),
        (CUSTOMER, CUSTOMER, "text", "Oi, ainda estão abertos?", (), "fail: stale"),
        id="old-message-delivered-late",
    ),
    pytest.param(
        event(
            wa.Message(
                conversation="Oi, grupo",
                senderKeyDistributionMessage=wa.SenderKeyDistributionMessage(groupID=GROUP),
            ),
            chat=GROUP,
            sender=CUSTOMER,
        ),
        (GROUP, CUSTOMER, "text", "Oi, grupo", (), "ignore: not mentioned"),
        id="group-text-with-its-sender-key",
    ),
    pytest.param(
        event(
            wa.Message(
                senderKeyDistributionMessage=wa.SenderKeyDistributionMessage(groupID=GROUP),
                messageContextInfo=wa.MessageContextInfo(messageSecret=b"s" * 32),
            ),
            chat=GROUP,
            sender=CUSTOMER,
        ),
        None,
        id="sender-key-alone",
    ),
    pytest.param(
        event(wa.Message(reactionMessage=wa.ReactionMessage(key=MessageKey(ID="3EB0BOTREPLY"), text="👍"))),
        None,
        id="reaction",
    ),
    pytest.param(
        event(
            wa.Message(
                protocolMessage=wa.ProtocolMessage(type=wa.ProtocolMessage.REVOKE, key=MessageKey(ID="3EB0OLD"))
            ),
            edit="7",
        ),
        None,
        id="revoke",
    ),
    pytest.param(
        event(
            wa.Message(
                protocolMessage=wa.ProtocolMessage(
                    type=wa.ProtocolMessage.MESSAGE_EDIT,
                    key=MessageKey(ID="3EB0OLD"),
                    editedMessage=wa.Message(conversation="Oi, vocês abrem amanhã?"),
                )
            ),
            edit="1",
            IsEdit=True,
        ),
        None,
        id="edit-is-no-new-question",
    ),
    pytest.param(
        event(wa.Message(pollUpdateMessage=wa.PollUpdateMessage(pollCreationMessageKey=MessageKey(ID="3EB0POLL")))),
        None,
        id="poll-vote",
    ),
    pytest.param(
        event(wa.Message(conversation="Promoção de hoje!"), chat="status@broadcast", sender=CUSTOMER),
        None,
        id="status-broadcast",
    ),
    pytest.param(
        event(wa.Message(conversation="Novidades do canal"), chat="120363144038483540@newsletter", device=0),
        None,
        id="newsletter",
    ),
]


@pytest.mark.parametrize(("ev", "expected"), CASES)
def test_the_adapter_reads_what_whatsmeow_hands_over(ev, expected):
    session = Session(jid=f"{BOT_PHONE}:12@s.whatsapp.net", phone=BOT_PHONE, lid=BOT_LID)
    inbound = inbound_from(ev)

    if expected is None:
        assert inbound is None, "never stored, never answered"
        return
    chat, sender, kind, body, mentions, verdict = expected
    assert (inbound.chat, inbound.sender) == (chat, sender)
    assert (inbound.type, inbound.text, inbound.mentions) == (kind, body, mentions)
    assert inbound.is_group == chat.endswith("@g.us")
    assert inbound.from_me == ev.Info.MessageSource.IsFromMe
    assert inbound.wa_id == ev.Info.ID and inbound.push_name == "Cliente"
    assert outcome(inbound, session) == verdict


def test_a_mention_by_lid_needs_the_bots_lid():
    mention = event(text("@203012345678901 oi", mentionedJID=[BOT_LID]), chat=GROUP, sender=CUSTOMER_LID)
    before_connected = Session(jid=f"{BOT_PHONE}:12@s.whatsapp.net", phone=BOT_PHONE)

    assert outcome(inbound_from(mention), before_connected) == "ignore: not mentioned"
    assert outcome(inbound_from(mention), Session(phone=BOT_PHONE, lid=BOT_LID)) == ASKED


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, *args))


def test_the_bots_own_lid_arrives_with_connected():
    bot_id = uuid.uuid4()
    events = Recorder()
    handlers = Handlers(bot_id, events, lambda client: True, None)
    # neonize sets client.me (Go's FetchMe: the device's JID and LID) before any other event.
    client = SimpleNamespace(me=proto.Device(JID=jid(BOT, 12), LID=jid(BOT_LID, 12)))

    handlers.connected(client, neonize_events.ConnectedEv())
    handlers.keepalive_restored(client, neonize_events.KeepAliveRestoredEv())
    handlers.connected(SimpleNamespace(me=None), neonize_events.ConnectedEv())
    handlers.message(client, CASES[2].values[0])

    assert events.calls[:3] == [("connected", bot_id, BOT_LID), ("connected", bot_id, BOT_LID), ("connected", bot_id)]
    name, recipient, inbound, *_ = events.calls[3]
    assert (name, recipient, inbound.chat) == ("message", bot_id, CUSTOMER)
