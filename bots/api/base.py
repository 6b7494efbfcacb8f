"""What every endpoint of the JSON API shares: the bearer token, the error schemas, the bot lookup.

The error shape and the reading of bodies are the project's (botplatform/api.py);
the routers are mounted under /api/bots by botplatform/urls.py.
"""

from __future__ import annotations

import uuid

from django.http import HttpRequest
from ninja import Schema
from ninja.security import HttpBearer

from botplatform.api import ApiError
from bots.models import ApiToken, Bot


class BearerAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str):
        return ApiToken.objects.user_for(token)


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
