"""Helpers shared by the whole suite: a JSON client as a script uses it, objects made explicitly, API errors.

The personas (alice, bob, staff) and the process fixtures are in tests/conftest.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from django.contrib.auth.models import User
from django.test import Client

from bots.models import ApiToken, Bot, Message

# A time as the API writes it (docs/api.md): RFC 3339, UTC.
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


@dataclass
class ApiClient:
    """A JSON client for /api/ as a script would use it."""

    client: Client
    headers: dict

    def request(self, method: str, path: str, body=None, *, content_type="application/json", raw: bytes | None = None):
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        kwargs = {"headers": self.headers}
        if data is not None:
            kwargs.update(data=data, content_type=content_type)
        return getattr(self.client, method.lower())(path, **kwargs)

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def patch(self, path: str, body=None, **kw):
        return self.request("PATCH", path, body, **kw)

    def delete(self, path: str, **kw):
        return self.request("DELETE", path, **kw)


def make_user(username: str, **extra) -> User:
    return User.objects.create_user(username=username, password="password-" + username, **extra)


def token_client(user: User) -> ApiClient:
    _, secret = ApiToken.issue(user)
    return ApiClient(Client(), {"Authorization": f"Bearer {secret}"})


def make_bot(owner: User, **fields) -> Bot:
    fields.setdefault("name", f"{owner.username}'s bot")
    fields.setdefault("whatsapp_provider", "simulator")
    return Bot.objects.create(owner=owner, **fields)


def make_message(bot: Bot, text: str, **fields) -> Message:
    fields.setdefault("chat", "5511999990001@s.whatsapp.net")
    fields.setdefault("sender", fields["chat"])
    fields.setdefault("direction", "in")
    fields.setdefault("status", "received")
    return Message.objects.create(bot=bot, text=text, **fields)


def error_of(response) -> dict:
    """The error object of an API error response, checking the shape on the way."""
    assert response["Content-Type"].startswith("application/json"), response.content[:200]
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"]), body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def assert_error(response, status: int, code: str, field: str | None = None) -> dict:
    """An API error with this status and code (and, if given, a message for this field)."""
    assert response.status_code == status, (response.status_code, response.content[:300])
    error = error_of(response)
    assert error["code"] == code, error
    if field is not None:
        assert field in error.get("fields", {}), error
        assert isinstance(error["fields"][field], str) and error["fields"][field], error
    return error


def assert_invalid(response, field: str) -> dict:
    return assert_error(response, 400, "validation_error", field)
