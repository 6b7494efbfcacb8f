"""A bot's messages in the JSON API: its inbox and outbox, newest first; an operator's message out."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

import pydantic
from django.http import HttpRequest
from ninja import Router, Schema, Status
from pydantic import ConfigDict, Field, StringConstraints, field_validator

from botplatform.api import ApiError, parse_body, validation_fields
from bots import control
from bots.api.base import ERRORS, NOT_BLANK, ChatJid, Error, get_bot, json_body
from bots.models import TEXT_LIMIT, Message
from whatsapp.models import rfc3339

router = Router(tags=["bots"])


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

    chat: ChatJid | None = Field(None, description="Only this chat: a phone number, a user JID or a group JID.")
    limit: int = Field(50, ge=1, le=200, description="How many messages, newest first.")
    before: int | None = Field(None, ge=1, description="Only messages older than this message id (the next page).")


class OutboundIn(Schema):
    model_config = ConfigDict(extra="forbid", strict=True)

    to: ChatJid
    text: Annotated[
        str, StringConstraints(min_length=1, max_length=TEXT_LIMIT), Field(json_schema_extra={"pattern": NOT_BLANK})
    ]

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
    """OpenAPI description of a query string that the view reads itself with parse_query.

    A query string holds no null: a parameter left out is the model's None, so the
    schema of each is its non-null branch, without a null default.
    """
    parameters = []
    for name, prop in schema.model_json_schema()["properties"].items():
        prop = dict(prop)
        branches = [branch for branch in prop.pop("anyOf", []) if branch != {"type": "null"}]
        if branches:
            (branch,) = branches
            prop.update(branch)
        if "default" in prop and prop["default"] is None:
            del prop["default"]
        parameters.append(
            {"in": "query", "name": name, "required": False, "schema": prop, "description": prop.get("description", "")}
        )
    return {"parameters": parameters}


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
    message = control.queue_message(bot, data.to, data.text)
    return Status(202, {"id": message.pk, "status": message.status})
