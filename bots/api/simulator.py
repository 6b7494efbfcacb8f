"""The simulator's endpoints (docs/simulator.md): the phone and the network, driven over HTTP.

They exist only while the simulator is enabled and only for simulator bots.
The web only writes rows; the shard hosting the bot acts on them.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Annotated, Literal

from django.conf import settings
from django.http import HttpRequest
from ninja import Router, Schema
from ninja import Status as Answer
from pydantic import AfterValidator, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator

from botplatform.api import ApiError, parse_body, read_body
from bots.api.base import ERRORS, WHOLE, Error, PhoneDigits, PhoneJid, UserJid, described, find_bot, json_body
from bots.control import nudge_shards
from bots.models import Bot, Provider
from whatsapp import jids
from whatsapp.models import SimulatorCommand, SimulatorDevice, SimulatorInbound, SimulatorSent, Status, rfc3339
from whatsapp.providers.simulator import new_message_id

router = Router(tags=["simulator"])

# What a phone can send, as WhatsApp delivers it: the kinds the neonize adapter tells apart.
# Media types carry a `caption` (the customer's words); the file itself is not simulated.
MEDIA_TYPES = ("image", "video", "document")
TYPES = Literal[
    "text", "image", "audio", "ptt", "video", "document", "sticker", "location", "reaction", "revoke", "edit", "poll"
]
# A group, or a feed: status posts (status@broadcast) and channels (<id>@newsletter).
GroupOrFeedJid = Annotated[
    str, AfterValidator(jids.group_or_feed_jid), described(jids.GROUP_OR_FEED_PATTERN, jids.GROUP_OR_FEED_EXAMPLES)
]


class Scan(Schema):
    model_config = ConfigDict(extra="forbid", strict=True)
    phone: PhoneDigits | None = None
    pushName: Annotated[str, StringConstraints(max_length=128)] | None = None
    code: Annotated[str, StringConstraints(strip_whitespace=True, to_upper=True, max_length=9)] | None = None
    # What the phone's camera read from the QR image: it pairs only if it is a code the bot is showing.
    qr: Annotated[str, StringConstraints(max_length=512)] | None = None


class InboundIn(Schema):
    # A text message (the default type) needs a text: either another type, or a text of one character or more.
    # A senderAlt goes only with a `from` that is a LID; a caption only with an image, a video or a document.
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "allOf": [
                {
                    "anyOf": [
                        {"required": ["type"], "properties": {"type": {"not": {"const": "text"}}}},
                        {"required": ["text"], "properties": {"text": {"minLength": 1}}},
                    ]
                },
                {
                    "anyOf": [
                        {"not": {"required": ["senderAlt"]}},
                        {"properties": {"senderAlt": {"type": "null"}}},
                        {"properties": {"from": {"type": "string", "pattern": "@lid$"}}},
                    ]
                },
                {
                    "anyOf": [
                        {"not": {"required": ["caption"]}},
                        {"properties": {"caption": {"type": "null"}}},
                        {"required": ["type"], "properties": {"type": {"enum": list(MEDIA_TYPES)}}},
                    ]
                },
            ]
        },
    )
    from_: UserJid = Field(alias="from")
    # The phone JID of a `from` that is a LID, as WhatsApp gives it beside (whatsmeow's SenderAlt).
    senderAlt: PhoneJid | None = None
    # Before `text` and `caption`, whose validators read it: an error then names the field.
    type: TYPES = "text"
    text: Annotated[str, StringConstraints(max_length=65536)] = Field("", validate_default=True)
    caption: Annotated[str, StringConstraints(max_length=65536)] | None = None
    id: Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")] | None = None
    pushName: Annotated[str, StringConstraints(max_length=128)] = ""
    fromMe: bool = False
    chat: GroupOrFeedJid | None = None
    mentions: list[UserJid] = Field(default_factory=list, max_length=256)
    timestamp: Annotated[int, Field(ge=0, le=10**14), WHOLE] | None = None

    @field_validator("senderAlt")
    @classmethod
    def alt_of_a_lid(cls, alt: str | None, info: ValidationInfo) -> str | None:
        # An invalid `from` is not in info.data: that error alone is reported.
        sender = info.data.get("from_")
        if alt is not None and sender is not None and not jids.is_lid(sender):
            raise ValueError(
                "senderAlt is the phone JID of a sender addressed by LID: give it only when from is a @lid JID."
            )
        return alt

    @field_validator("text")
    @classmethod
    def text_for_text(cls, text: str, info: ValidationInfo) -> str:
        # An invalid `type` is not in info.data: that error alone is reported.
        if info.data.get("type") == "text" and not text:
            raise ValueError("A text message needs a text.")
        return text

    @field_validator("caption")
    @classmethod
    def caption_of_media(cls, caption: str | None, info: ValidationInfo) -> str | None:
        if caption is not None and info.data.get("type", "text") not in MEDIA_TYPES:
            raise ValueError("Only an image, a video or a document has a caption.")
        return caption


class Accepted(Schema):
    id: str | None = None


class SentItem(Schema):
    id: str
    to: str
    text: str
    at: str


class SentList(Schema):
    sent: list[SentItem]


def simulator_bot(request: HttpRequest, bot_id: uuid.UUID) -> Bot:
    bot = find_bot(request, bot_id)
    if not settings.WHATSAPP_SIMULATOR or bot.whatsapp_provider != Provider.SIMULATOR:
        raise ApiError(404, "not_found", "No such simulator bot.")
    read_body(request)
    return bot


def optional_json_body(schema: type[Schema]) -> dict:
    """Like json_body, for a body a client may leave out."""
    extra = json_body(schema)
    extra["requestBody"]["required"] = False
    return extra


def command(bot: Bot, kind: str, data: dict | None = None) -> None:
    SimulatorCommand.objects.create(bot=bot, kind=kind, data=data or {})
    nudge_shards()


SIM_ERRORS = {**ERRORS, 409: Error}
# Documented in the OpenAPI document only while the simulator is enabled.
SHOWN = settings.WHATSAPP_SIMULATOR


@router.post(
    "/{uuid:bot_id}/simulator/scan",
    response={202: Accepted, **SIM_ERRORS},
    openapi_extra=optional_json_body(Scan),
    summary="The phone scans the QR code (or enters the pairing code)",
    exclude_none=True,
    include_in_schema=SHOWN,
)
def scan(request: HttpRequest, bot_id: uuid.UUID):
    bot = simulator_bot(request, bot_id)
    data = parse_body(request, Scan, optional=True)
    session = bot.session
    if session.status != Status.QR_REQUIRED or not (session.qr_code or session.pairing_code):
        raise ApiError(409, "no_qr", "No QR code or pairing code is showing for this bot.")
    if data.code is not None and data.code != session.pairing_code:
        raise ApiError(409, "wrong_code", "That is not the pairing code this bot is showing.")
    command(bot, SimulatorCommand.Kind.SCAN, data.model_dump(exclude_none=True))
    return Answer(202, {})


@router.post(
    "/{uuid:bot_id}/simulator/inbound",
    response={202: Accepted, **ERRORS},
    openapi_extra=json_body(InboundIn),
    summary="Someone sends the bot a message",
    include_in_schema=SHOWN,
)
def inbound(request: HttpRequest, bot_id: uuid.UUID):
    bot = simulator_bot(request, bot_id)
    data = parse_body(request, InboundIn)
    wa_id = data.id or new_message_id()
    timestamp = (
        datetime.datetime.fromtimestamp(data.timestamp / 1000, tz=datetime.UTC)
        if data.timestamp is not None
        else datetime.datetime.now(tz=datetime.UTC)
    )
    SimulatorInbound.objects.create(
        bot=bot,
        wa_id=wa_id,
        chat=data.chat or data.from_,
        sender=data.from_,
        sender_alt=data.senderAlt or "",
        push_name=data.pushName,
        from_me=data.fromMe,
        type=data.type,
        text=data.caption if data.caption is not None else data.text,
        mentions=data.mentions,
        timestamp=timestamp,
    )
    nudge_shards()
    return Answer(202, {"id": wa_id})


@router.post(
    "/{uuid:bot_id}/simulator/unlink",
    response={202: Accepted, **SIM_ERRORS},
    summary="The phone removes the linked device",
    exclude_none=True,
    include_in_schema=SHOWN,
)
def unlink(request: HttpRequest, bot_id: uuid.UUID):
    bot = simulator_bot(request, bot_id)
    if not SimulatorDevice.objects.filter(pk=bot.pk).exists():
        raise ApiError(409, "not_paired", "This bot has no linked device.")
    command(bot, SimulatorCommand.Kind.UNLINK)
    return Answer(202, {})


@router.post(
    "/{uuid:bot_id}/simulator/drop",
    response={202: Accepted, **SIM_ERRORS},
    summary="The network drops the bot's connection",
    exclude_none=True,
    include_in_schema=SHOWN,
)
def drop(request: HttpRequest, bot_id: uuid.UUID):
    bot = simulator_bot(request, bot_id)
    if bot.session.status != Status.CONNECTED:
        raise ApiError(409, "not_connected", "This bot is not connected.")
    command(bot, SimulatorCommand.Kind.DROP)
    return Answer(202, {})


@router.get(
    "/{uuid:bot_id}/simulator/sent",
    response={200: SentList, **ERRORS},
    summary="What the simulated network received from the bot",
    include_in_schema=SHOWN,
)
def sent(request: HttpRequest, bot_id: uuid.UUID):
    bot = simulator_bot(request, bot_id)
    rows = SimulatorSent.objects.filter(bot=bot).order_by("id")
    return {"sent": [{"id": r.wa_id, "to": r.to, "text": r.text, "at": rfc3339(r.created_at)} for r in rows]}
