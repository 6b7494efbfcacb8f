"""Personas and helpers shared by the whole suite.

alice and bob are operators with bots of their own; staff uses the admin.
`api` clients authenticate as a real client would: a bearer token made by the
platform itself, or a logged-in browser session with CSRF enforced.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from django.contrib.auth.models import User
from django.test import Client

from bots.models import ApiToken, Bot, Message
from tests.processes import Proc, Web, start_pool, start_web


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


def make_message(bot: Bot, text: str, **fields) -> Message:
    fields.setdefault("chat", "5511999990001@s.whatsapp.net")
    fields.setdefault("sender", fields["chat"])
    fields.setdefault("direction", "in")
    fields.setdefault("status", "received")
    return Message.objects.create(bot=bot, text=text, **fields)


@pytest.fixture
def web() -> Iterator[Web]:
    """daphne serving the app on a free port, against the test database (tests.processes)."""
    server = start_web()
    yield server
    server.proc.stop()


@pytest.fixture
def pool() -> Iterator[Callable[..., Proc]]:
    """pool(*args, **env) starts `run_whatsapp` against the test database; all are stopped afterwards."""
    pools: list[Proc] = []

    def start(*args: str, **env: str) -> Proc:
        proc = start_pool(*args, **env)
        pools.append(proc)
        return proc

    yield start
    for proc in pools:
        proc.stop()


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
