"""Personas and helpers shared by the whole suite.

alice and bob are operators with bots of their own; staff uses the admin.
`api` clients authenticate as a real client would: a bearer token made by the
platform itself, or a logged-in browser session with CSRF enforced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from django.contrib.auth.models import User
from django.test import Client

from bots.models import ApiToken, Bot


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


@pytest.fixture
def alice(db) -> User:
    return make_user("alice")


@pytest.fixture
def bob(db) -> User:
    return make_user("bob")


@pytest.fixture
def staff(db) -> User:
    return make_user("staff", is_staff=True, is_superuser=True)


def token_client(user: User) -> ApiClient:
    _, secret = ApiToken.issue(user)
    return ApiClient(Client(), {"Authorization": f"Bearer {secret}"})


@pytest.fixture
def alice_api(alice) -> ApiClient:
    return token_client(alice)


@pytest.fixture
def bob_api(bob) -> ApiClient:
    return token_client(bob)


@pytest.fixture
def anonymous_api(db) -> ApiClient:
    return ApiClient(Client(), {})


def make_bot(owner: User, **fields) -> Bot:
    fields.setdefault("name", f"{owner.username}'s bot")
    fields.setdefault("whatsapp_provider", "simulator")
    return Bot.objects.create(owner=owner, **fields)


def error_of(response) -> dict:
    """The error object of an API error response, checking the shape on the way."""
    assert response["Content-Type"].startswith("application/json"), response.content[:200]
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"]), body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]
