"""What every endpoint of the JSON API shares: the bearer token, the error schemas, the bot lookup.

The error shape and the reading of bodies are the project's (botplatform/api.py);
the routers are mounted under /api/bots by botplatform/urls.py.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from django.http import HttpRequest
from ninja import Schema
from ninja.security import HttpBearer
from pydantic import AfterValidator, BeforeValidator, Field
from pydantic.fields import FieldInfo

from botplatform.api import ApiError, read_body
from bots.models import ApiToken, Bot
from whatsapp import jids


class BearerAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str):
        return ApiToken.objects.user_for(token)


# parse_body refuses a NUL character anywhere in a body (PostgreSQL cannot store one in text):
# json_body gives every string of a body schema without a pattern of its own this one.
NO_NUL = r"^[^\u0000]*$"
# A character that is neither NUL nor one that str.strip() removes.
SOLID = jids.char_class(jids.SPACES + "\x00", negated=True)
# A text with something in it other than spaces (a validator refuses a blank one), and no NUL.
NOT_BLANK = r"^[^\u0000]*" + SOLID + r"[^\u0000]*$"


def stripped(max_length: int) -> str:
    """The pattern of a text that, once stripped, has 1 to max_length characters, none of them NUL."""
    inner = SOLID + "|" + SOLID + r"[^\u0000]{0," + str(max_length - 2) + "}" + SOLID
    return "^" + jids.SPACE + "*(?:" + inner + ")" + jids.SPACE + "*$"


def whole(value):
    """2.0 for 2: JSON Schema's integers are numbers without a fraction, however a client spells them."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# After an integer's constraints, in a strict body: 2 or 2.0, not 2.5 nor "2".
WHOLE = BeforeValidator(whole)


def described(pattern: str, examples: list[str]) -> FieldInfo:
    """A pattern and examples for the OpenAPI document only: the validator beside it decides."""
    return Field(examples=examples, json_schema_extra={"pattern": pattern})


# Phone numbers and JIDs (docs/api.md), checked by whatsapp.jids; their patterns are made of the same rules.
PhoneDigits = Annotated[str, AfterValidator(jids.phone_digits), described(jids.PHONE_PATTERN, jids.PHONE_EXAMPLES)]
PhoneJid = Annotated[str, AfterValidator(jids.phone_jid), described(jids.PHONE_PATTERN, jids.PHONE_EXAMPLES)]
UserJid = Annotated[str, AfterValidator(jids.user_jid), described(jids.USER_PATTERN, jids.USER_EXAMPLES)]
ChatJid = Annotated[str, AfterValidator(jids.chat_jid), described(jids.CHAT_PATTERN, jids.CHAT_EXAMPLES)]
GroupJid = Annotated[str, AfterValidator(jids.group_jid), described(jids.GROUP_PATTERN, jids.GROUP_EXAMPLES)]


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


class ErrorBody(Schema):
    code: str
    message: str
    fields: dict[str, str] | None = None


class Error(Schema):
    error: ErrorBody


ERRORS = {400: Error, 401: Error, 404: Error, 413: Error, 415: Error}


def find_bot(request: HttpRequest, bot_id: uuid.UUID) -> Bot:
    """The caller's bot, or 404 for a bot that does not exist or is someone else's."""
    bot = Bot.objects.visible_to(request.auth).select_related("session").filter(pk=bot_id).first()
    if bot is None:
        raise ApiError(404, "not_found", "No such bot.")
    return bot


def get_bot(request: HttpRequest, bot_id: uuid.UUID) -> Bot:
    """find_bot, then 413 for a body over the limit.

    Endpoints that take no body would otherwise accept one unread; those that take
    one read it again with parse_body.
    """
    bot = find_bot(request, bot_id)
    read_body(request)
    return bot


def refuse_nul(node) -> None:
    """Give every string schema in this JSON Schema without a pattern, enum or format NO_NUL."""
    if isinstance(node, dict):
        if node.get("type") == "string" and not {"pattern", "enum", "const", "format"} & set(node):
            node["pattern"] = NO_NUL
        for value in node.values():
            refuse_nul(value)
    elif isinstance(node, list):
        for value in node:
            refuse_nul(value)


def json_body(schema: type[Schema]) -> dict:
    """OpenAPI description of a body that the view reads itself with parse_body."""
    body = schema.model_json_schema(ref_template="#/components/schemas/{model}")
    refuse_nul(body)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": body}}}}
