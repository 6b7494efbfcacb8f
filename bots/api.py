"""The bot part of the JSON API: create, list, read, update, delete; a bot's messages."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

import pydantic
from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from ninja import Router, Schema, Status
from pydantic import AfterValidator, ConfigDict, Field, StringConstraints, field_validator

from botplatform.api import ApiError, parse_body, validation_fields
from bots.models import MODEL_NAME_PATTERN, TEXT_LIMIT, Bot, Message
from whatsapp import jids
from whatsapp.models import Session, rfc3339

router = Router(tags=["bots"])

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=80)]
SystemPrompt = Annotated[str, StringConstraints(max_length=8000)]
ModelName = Annotated[str, StringConstraints(pattern=MODEL_NAME_PATTERN)]
Temperature = Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)]
FallbackText = Annotated[str, StringConstraints(max_length=1000)]
NonTextReply = Annotated[str, StringConstraints(max_length=1000)]


class BotFields(Schema):
    """Fields a client may set. Omitted fields keep their value; null is refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: Name = None  # type: ignore[assignment]
    systemPrompt: SystemPrompt = None  # type: ignore[assignment]
    model: ModelName = None  # type: ignore[assignment]
    temperature: Temperature = None  # type: ignore[assignment]
    whatsappProvider: Literal["neonize", "simulator"] = None  # type: ignore[assignment]
    fallbackText: FallbackText = None  # type: ignore[assignment]
    nonTextReply: NonTextReply = None  # type: ignore[assignment]
    replyInGroups: bool = None  # type: ignore[assignment]
    isActive: bool = None  # type: ignore[assignment]

    @field_validator("whatsappProvider")
    @classmethod
    def simulator_enabled(cls, value: str) -> str:
        if value == "simulator" and not settings.WHATSAPP_SIMULATOR:
            raise ValueError("The simulator is not enabled on this server.")
        return value

    # Not named model_fields: that would shadow pydantic's class attribute, which Ninja reads.
    def changes(self) -> dict:
        """The provided fields as Bot model field names."""
        names = {
            "name": "name",
            "systemPrompt": "system_prompt",
            "model": "model",
            "temperature": "temperature",
            "whatsappProvider": "whatsapp_provider",
            "fallbackText": "fallback_text",
            "nonTextReply": "non_text_reply",
            "replyInGroups": "reply_in_groups",
            "isActive": "is_active",
        }
        return {names[key]: getattr(self, key) for key in self.model_fields_set if key in names}


class BotCreate(BotFields):
    name: Name
    autoConnect: bool = True


class BotPatch(BotFields):
    pass


class WhatsappStatus(Schema):
    status: str
    qrCode: str | None = None
    qrExpiresAt: str | None = None
    pairingCode: str | None = None
    jid: str | None = None
    phone: str | None = None
    pushName: str | None = None
    lastError: str | None = None
    seq: int
    updatedAt: str


class BotOut(Schema):
    id: uuid.UUID
    name: str
    systemPrompt: str
    whatsappProvider: str
    model: str
    temperature: float
    fallbackText: str
    nonTextReply: str
    replyInGroups: bool
    isActive: bool
    createdAt: str
    updatedAt: str
    whatsapp: WhatsappStatus


class BotList(Schema):
    bots: list[BotOut]


class ErrorBody(Schema):
    code: str
    message: str
    fields: dict[str, str] | None = None


class Error(Schema):
    error: ErrorBody


def bot_payload(bot: Bot) -> dict:
    return {
        "id": str(bot.id),
        "name": bot.name,
        "systemPrompt": bot.system_prompt,
        "whatsappProvider": bot.whatsapp_provider,
        "model": bot.model,
        "temperature": bot.temperature,
        "fallbackText": bot.fallback_text,
        "nonTextReply": bot.non_text_reply,
        "replyInGroups": bot.reply_in_groups,
        "isActive": bot.is_active,
        "createdAt": rfc3339(bot.created_at),
        "updatedAt": rfc3339(bot.updated_at),
        "whatsapp": bot.session.status_payload(),
    }


def get_bot(request: HttpRequest, bot_id: uuid.UUID) -> Bot:
    """The caller's bot, or 404 for a bot that does not exist or is someone else's."""
    bot = Bot.objects.visible_to(request.auth).select_related("session").filter(pk=bot_id).first()
    if bot is None:
        raise ApiError(404, "not_found", "No such bot.")
    return bot


def json_body(schema: type[Schema]) -> dict:
    """OpenAPI description of a body that the view reads itself with parse_body."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": schema.model_json_schema(ref_template="#/components/schemas/{model}")}
            },
        }
    }


ERRORS = {400: Error, 401: Error, 404: Error, 413: Error, 415: Error}


@router.post(
    "", response={201: BotOut, **ERRORS}, openapi_extra=json_body(BotCreate), summary="Create a bot", exclude_none=True
)
def create_bot(request: HttpRequest):
    data = parse_body(request, BotCreate)
    bot = Bot.objects.create(owner=request.auth, **data.changes())
    if data.autoConnect:
        from whatsapp.control import request_connect

        request_connect(bot, request.auth, autoconnect=True)
        bot.session.refresh_from_db()
    return Status(201, bot_payload(bot))


@router.get("", response={200: BotList, 401: Error}, summary="List your bots", exclude_none=True)
def list_bots(request: HttpRequest):
    bots = Bot.objects.visible_to(request.auth).select_related("session")
    return {"bots": [bot_payload(bot) for bot in bots]}


@router.get("/{uuid:bot_id}", response={200: BotOut, **ERRORS}, summary="Get a bot", exclude_none=True)
def read_bot(request: HttpRequest, bot_id: uuid.UUID):
    return bot_payload(get_bot(request, bot_id))


@router.patch(
    "/{uuid:bot_id}",
    response={200: BotOut, **ERRORS},
    openapi_extra=json_body(BotPatch),
    summary="Update a bot",
    exclude_none=True,
)
def update_bot(request: HttpRequest, bot_id: uuid.UUID):
    bot = get_bot(request, bot_id)
    changes = parse_body(request, BotPatch).changes()
    if changes:
        for field, value in changes.items():
            setattr(bot, field, value)
        bot.save(update_fields=[*changes, "updated_at"])
    return bot_payload(bot)


@router.delete("/{uuid:bot_id}", response={204: None, **ERRORS}, summary="Delete a bot")
def delete_bot(request: HttpRequest, bot_id: uuid.UUID):
    bot = get_bot(request, bot_id)
    with transaction.atomic():
        Bot.objects.filter(pk=bot.pk).update(deleted_at=timezone.now())
        # The hosting shard sees the deleted bot, logs it out and releases it.
        Session.objects.filter(pk=bot.pk).update(desired_connected=False, logout_requested=True)
    from whatsapp.control import nudge_shards

    transaction.on_commit(nudge_shards)
    return HttpResponse(status=204)


# --- Messages: the inbox and the outbox of a bot ------------------------------------------


class MessageOut(Schema):
    id: int
    waId: str | None
    chat: str
    sender: str
    direction: Literal["in", "out"]
    type: str
    text: str
    status: str
    createdAt: str


class MessageList(Schema):
    messages: list[MessageOut]


class MessageQuery(Schema):
    model_config = ConfigDict(extra="forbid")

    chat: Annotated[str, AfterValidator(jids.chat_jid)] | None = Field(
        None, description="Only this chat: a phone number, a user JID or a group JID."
    )
    limit: int = Field(50, ge=1, le=200, description="How many messages, newest first.")
    before: int | None = Field(None, ge=1, description="Only messages older than this message id (the next page).")


class OutboundIn(Schema):
    model_config = ConfigDict(extra="forbid", strict=True)

    to: Annotated[str, AfterValidator(jids.chat_jid)]
    text: Annotated[str, StringConstraints(min_length=1, max_length=TEXT_LIMIT)]

    @field_validator("text")
    @classmethod
    def not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("The text must not be blank.")
        return text


class Queued(Schema):
    id: int
    status: str


def message_payload(message: Message) -> dict:
    return {
        "id": message.pk,
        "waId": message.wa_id or None,
        "chat": message.chat,
        "sender": message.sender,
        "direction": message.direction,
        "type": message.type,
        "text": message.text,
        "status": message.status,
        "createdAt": rfc3339(message.created_at),
    }


def parse_query(request: HttpRequest, schema: type[MessageQuery]) -> MessageQuery:
    """Read the query string after the auth and lookup checks, so a stranger's bot is a 404 first."""
    try:
        return schema.model_validate(request.GET.dict())
    except pydantic.ValidationError as exc:
        fields = validation_fields(exc.errors(include_url=False), locations=())
        raise ApiError(400, "validation_error", "Some fields are invalid.", fields) from None


def query_parameters(schema: type[MessageQuery]) -> dict:
    """OpenAPI description of a query string that the view reads itself with parse_query."""
    properties = schema.model_json_schema()["properties"]
    return {
        "parameters": [
            {"in": "query", "name": name, "required": False, "schema": prop, "description": prop.get("description", "")}
            for name, prop in properties.items()
        ]
    }


@router.get(
    "/{uuid:bot_id}/messages",
    response={200: MessageList, 400: Error, 401: Error, 404: Error},
    openapi_extra=query_parameters(MessageQuery),
    summary="List a bot's messages, newest first",
)
def list_messages(request: HttpRequest, bot_id: uuid.UUID):
    bot = get_bot(request, bot_id)
    query = parse_query(request, MessageQuery)
    messages = Message.objects.filter(bot=bot)
    if query.chat is not None:
        messages = messages.filter(chat=query.chat)
    if query.before is not None:
        messages = messages.filter(pk__lt=query.before)
    return {"messages": [message_payload(m) for m in messages.order_by("-pk")[: query.limit]]}


@router.post(
    "/{uuid:bot_id}/messages",
    response={202: Queued, **ERRORS},
    openapi_extra=json_body(OutboundIn),
    summary="Send a message from the bot's number",
    description="Queued at once; the shard hosting the bot sends it while connected (later if it is not).",
)
def send_message(request: HttpRequest, bot_id: uuid.UUID):
    bot = get_bot(request, bot_id)
    data = parse_body(request, OutboundIn)
    from whatsapp.control import queue_message

    message = queue_message(bot, data.to, data.text)
    return Status(202, {"id": message.pk, "status": message.status})
