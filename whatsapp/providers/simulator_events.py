"""What the simulated phone sends, as neonize's own ``MessageEv``: one translation for both providers.

A pending simulator message is built into the protobuf event neonize would hand the adapter
for the same message (whatsmeow's ``parseMessageSource`` and ``UnwrapRaw`` already applied: an
edit arrives with ``IsEdit`` and the new content), and goes through the adapter's own
:func:`neonize_events.inbound_from`: the simulator cannot read a message otherwise than neonize
does. neonize is imported on first use; a shard has it loaded already (its neonize provider).
"""

from __future__ import annotations

import datetime

from whatsapp import jids
from whatsapp.models import SimulatorInbound
from whatsapp.providers.base import Inbound
from whatsapp.providers.neonize_events import inbound_from, jid_from_string

# The message WhatsApp's phone app sends for each of the simulator's types, caption or text in it.
MIMETYPES = {"image": "image/jpeg", "audio": "audio/ogg; codecs=opus", "video": "video/mp4"}


def content(kind: str, text: str, mentions: list[str]):
    from neonize.proto.waCommon.WACommon_pb2 import MessageKey
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as wa

    context = wa.ContextInfo(mentionedJID=mentions) if mentions else None
    earlier = MessageKey(remoteJID="", fromMe=False, ID="3EB0EARLIER")
    built = {
        "text": lambda: (
            wa.Message(extendedTextMessage=wa.ExtendedTextMessage(text=text, contextInfo=context))
            if context
            else wa.Message(conversation=text)
        ),
        "image": lambda: wa.Message(
            imageMessage=wa.ImageMessage(caption=text, mimetype=MIMETYPES["image"], contextInfo=context)
        ),
        "audio": lambda: wa.Message(audioMessage=wa.AudioMessage(mimetype=MIMETYPES["audio"])),
        "ptt": lambda: wa.Message(audioMessage=wa.AudioMessage(mimetype=MIMETYPES["audio"], PTT=True)),
        "video": lambda: wa.Message(
            videoMessage=wa.VideoMessage(caption=text, mimetype=MIMETYPES["video"], contextInfo=context)
        ),
        "document": lambda: wa.Message(
            documentMessage=wa.DocumentMessage(caption=text, fileName="arquivo.pdf", contextInfo=context)
        ),
        "sticker": lambda: wa.Message(stickerMessage=wa.StickerMessage(mimetype="image/webp")),
        "location": lambda: wa.Message(
            locationMessage=wa.LocationMessage(degreesLatitude=-23.5505, degreesLongitude=-46.6333)
        ),
        "reaction": lambda: wa.Message(reactionMessage=wa.ReactionMessage(key=earlier, text=text or "👍")),
        "revoke": lambda: wa.Message(protocolMessage=wa.ProtocolMessage(type=wa.ProtocolMessage.REVOKE, key=earlier)),
        # whatsmeow unwraps an edit: the new content, with IsEdit set on the event.
        "edit": lambda: wa.Message(conversation=text),
        "poll": lambda: wa.Message(pollCreationMessage=wa.PollCreationMessage(name=text or "Enquete")),
    }
    return built[kind]()


def message_event(row: SimulatorInbound):
    """The row as the ``MessageEv`` neonize would give the adapter."""
    from neonize.events import MessageEv
    from neonize.proto import Neonize_pb2 as proto

    # The simulator's API names the customer as the sender of a message the bot's own phone sent
    # (`fromMe`): their phone JID is then both alternates, as RecipientAlt is for whatsmeow.
    source = proto.MessageSource(
        Chat=jid_from_string(row.chat),
        Sender=jid_from_string(row.sender),
        IsFromMe=row.from_me,
        IsGroup=jids.is_group(row.chat) or row.chat.endswith("@broadcast"),
        AddressingMode=proto.LID if jids.is_lid(row.sender) else proto.PN,
    )
    if row.sender_alt:
        source.SenderAlt.CopyFrom(jid_from_string(row.sender_alt))
        if row.from_me:
            source.RecipientAlt.CopyFrom(jid_from_string(row.sender_alt))
    timestamp = row.timestamp or datetime.datetime.now(datetime.UTC)
    info = proto.MessageInfo(
        MessageSource=source,
        ID=row.wa_id,
        Type="text" if row.type in ("text", "edit") else "media",
        Pushname=row.push_name,
        Timestamp=int(timestamp.timestamp() * 1000),  # neonize: milliseconds
    )
    return MessageEv(Info=info, Message=content(row.type, row.text, list(row.mentions)), IsEdit=row.type == "edit")


def inbound_of(row: SimulatorInbound) -> Inbound | None:
    """What the shard gets for the row: what neonize's adapter makes of the same message."""
    return inbound_from(message_event(row))
