"""The bots of the JSON API: create, list, read, update, delete."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from ninja import Router, Schema, Status
from pydantic import AfterValidator, ConfigDict, Field, StringConstraints, WithJsonSchema, field_validator

from botplatform import outbound_proxy
from botplatform.api import parse_body
from bots import control
from bots.api.base import ERRORS, Error, WhatsappStatus, described, get_bot, json_body, stripped
from bots.models import MODEL_NAME_PATTERN, Bot
from whatsapp import jids
from whatsapp.models import rfc3339

router = Router(tags=["bots"])

# Its length is counted once trimmed, which minLength and maxLength cannot say: a pattern does.
Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=80),
    WithJsonSchema({"type": "string", "pattern": stripped(80), "description": "1 to 80 characters once trimmed."}),
]
SystemPrompt = Annotated[str, StringConstraints(max_length=8000)]
ModelName = Annotated[str, StringConstraints(pattern=MODEL_NAME_PATTERN)]
Temperature = Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)]
FallbackText = Annotated[str, StringConstraints(max_length=1000)]
NonTextReply = Annotated[str, StringConstraints(max_length=1000)]
# Stored stripped; "" is none of its own (WHATSAPP_PROXY, if the server sets one).
Proxy = Annotated[
    str,
    StringConstraints(max_length=outbound_proxy.MAX_LENGTH),
    AfterValidator(outbound_proxy.proxy_url),
    # Exactly what proxy_url accepts: surrounding spaces, and "" (no proxy of its own), included.
    described(jids.schema_pattern(outbound_proxy.URL, ""), outbound_proxy.EXAMPLES),
]


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
    proxy: Proxy = None  # type: ignore[assignment]

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
            "proxy": "proxy",
        }
        return {names[key]: getattr(self, key) for key in self.model_fields_set if key in names}


class BotCreate(BotFields):
    name: Name
    autoConnect: bool = True


class BotPatch(BotFields):
    pass


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
    proxy: str
    createdAt: str
    updatedAt: str
    whatsapp: WhatsappStatus


class BotList(Schema):
    bots: list[BotOut]


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
        # The owner's own setting, password included; never logged.
        "proxy": bot.proxy,
        "createdAt": rfc3339(bot.created_at),
        "updatedAt": rfc3339(bot.updated_at),
        "whatsapp": bot.session.status_payload(),
    }


@router.post(
    "", response={201: BotOut, **ERRORS}, openapi_extra=json_body(BotCreate), summary="Create a bot", exclude_none=True
)
def create_bot(request: HttpRequest):
    data = parse_body(request, BotCreate)
    bot = Bot.objects.create(owner=request.auth, **data.changes())
    if data.autoConnect:
        control.request_connect(bot, request.auth, autoconnect=True)
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
    control.delete_bot(get_bot(request, bot_id))
    return HttpResponse(status=204)


# --- Messages: the inbox and the outbox of a bot ------------------------------------------
