"""The bot part of the JSON API (DESIGN.md section 6), through Django's whole request stack.

Every request goes through the URL resolver, the middleware, Ninja's auth and the
views, as a script or the wizard would send it; assertions are on what such a
client sees (status, JSON, headers) and on the rows the pool will act on.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid

import pytest
from django.contrib.auth.models import User
from django.test import Client

from bots.models import ApiToken, Bot
from tests.helpers import RFC3339_UTC, ApiClient, assert_error, assert_invalid, error_of, make_bot
from whatsapp.models import Session

BOT_KEYS = {
    "id",
    "name",
    "systemPrompt",
    "whatsappProvider",
    "model",
    "temperature",
    "fallbackText",
    "nonTextReply",
    "replyInGroups",
    "isActive",
    "proxy",
    "createdAt",
    "updatedAt",
    "whatsapp",
}
MIB = 1024 * 1024
# Valid JSON, just over the limit: only the size is wrong with it.
TOO_LARGE = json.dumps({"systemPrompt": "x" * MIB}).encode()


def bot_url(bot_or_id) -> str:
    return f"/api/bots/{getattr(bot_or_id, 'id', bot_or_id)}"


def snapshot(bot: Bot) -> dict:
    bot.refresh_from_db()
    session = Session.objects.get(pk=bot.pk)
    return {
        "name": bot.name,
        "system_prompt": bot.system_prompt,
        "model": bot.model,
        "temperature": bot.temperature,
        "whatsapp_provider": bot.whatsapp_provider,
        "fallback_text": bot.fallback_text,
        "reply_in_groups": bot.reply_in_groups,
        "is_active": bot.is_active,
        "updated_at": bot.updated_at,
        "deleted_at": bot.deleted_at,
        "desired_connected": session.desired_connected,
        "logout_requested": session.logout_requested,
    }


def send(client: Client, method: str, path: str, raw: bytes, content_type: str, headers: dict | None = None):
    """These bytes with this Content-Type, as they are: the test client would re-encode some."""
    return client.generic(method, path, raw, headers=headers, CONTENT_TYPE=content_type)


def csrf_client(user: User) -> tuple[Client, str]:
    """A logged-in browser that enforces CSRF, and the token its pages would give it."""
    client = Client(enforce_csrf_checks=True)
    client.get("/login/")  # sets the csrftoken cookie, as the login page does for a browser
    client.force_login(user)
    return client, client.cookies["csrftoken"].value


# --- Creating -------------------------------------------------------------------


def test_it_creates_a_bot_with_defaults(alice_api, alice, settings):
    settings.GEMINI_MODEL = "gemini-test-default"

    response = alice_api.post("/api/bots", {"name": "Atendimento"})

    assert response.status_code == 201, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == BOT_KEYS
    uuid.UUID(body["id"])
    assert body["name"] == "Atendimento"
    assert body["systemPrompt"] == ""
    assert body["model"] == "gemini-test-default"
    assert body["temperature"] == 0.7
    assert body["whatsappProvider"] == settings.WHATSAPP_DEFAULT_PROVIDER
    assert body["fallbackText"].strip()
    assert "não" in body["fallbackText"] or "Desculpe" in body["fallbackText"]
    assert "texto" in body["nonTextReply"]
    assert body["replyInGroups"] is False
    assert body["isActive"] is True
    assert RFC3339_UTC.match(body["createdAt"]), body["createdAt"]
    assert RFC3339_UTC.match(body["updatedAt"]), body["updatedAt"]
    assert RFC3339_UTC.match(body["whatsapp"]["updatedAt"]), body["whatsapp"]

    bot = Bot.objects.get(pk=body["id"])
    assert bot.owner == alice
    assert bot.model == "gemini-test-default"


def test_it_creates_a_bot_with_every_field(alice_api):
    fields = {
        "name": "Vendas",
        "systemPrompt": "Você é um vendedor simpático.",
        "model": "gemini-2.5-pro",
        "temperature": 1.25,
        "whatsappProvider": "simulator",
        "fallbackText": "Volto já.",
        "replyInGroups": True,
        "isActive": False,
    }

    response = alice_api.post("/api/bots", {**fields, "autoConnect": False})

    assert response.status_code == 201, response.content
    body = response.json()
    assert {key: body[key] for key in fields} == fields
    # What was stored is what a later read returns.
    again = alice_api.get(bot_url(body["id"])).json()
    assert {key: again[key] for key in fields} == fields
    bot = Bot.objects.get(pk=body["id"])
    assert (bot.system_prompt, bot.model, bot.temperature) == (fields["systemPrompt"], "gemini-2.5-pro", 1.25)
    assert (bot.whatsapp_provider, bot.fallback_text) == ("simulator", "Volto já.")
    assert (bot.reply_in_groups, bot.is_active) == (True, False)


def test_it_connects_a_new_bot_by_default(alice_api):
    response = alice_api.post("/api/bots", {"name": "Conecta", "whatsappProvider": "simulator"})

    assert response.status_code == 201
    whatsapp = response.json()["whatsapp"]
    assert whatsapp["status"] == "connecting"
    assert whatsapp["seq"] >= 1
    assert "lastError" not in whatsapp
    session = Session.objects.get(pk=response.json()["id"])
    assert session.desired_connected is True
    assert session.status == "connecting"


def test_it_leaves_a_new_bot_disconnected_without_auto_connect(alice_api):
    response = alice_api.post("/api/bots", {"name": "Quieto", "autoConnect": False})

    assert response.status_code == 201
    whatsapp = response.json()["whatsapp"]
    assert whatsapp["status"] == "disconnected"
    assert isinstance(whatsapp["seq"], int)
    assert Session.objects.get(pk=response.json()["id"]).desired_connected is False


def test_it_still_creates_a_bot_when_auto_connect_is_rate_limited(alice_api, settings):
    settings.WHATSAPP_CONNECT_RATE_BOT = (5, 60)
    settings.WHATSAPP_CONNECT_RATE_USER = (2, 600)

    first = alice_api.post("/api/bots", {"name": "Um"})
    second = alice_api.post("/api/bots", {"name": "Dois"})
    third = alice_api.post("/api/bots", {"name": "Três"})

    assert [r.status_code for r in (first, second, third)] == [201, 201, 201]
    assert first.json()["whatsapp"]["status"] == "connecting"
    assert second.json()["whatsapp"]["status"] == "connecting"
    limited = third.json()["whatsapp"]
    assert limited["status"] == "disconnected"
    assert limited["lastError"] == "rate_limited"
    assert Session.objects.get(pk=third.json()["id"]).desired_connected is False
    assert Bot.objects.filter(pk=third.json()["id"], deleted_at__isnull=True).exists()


def test_it_does_not_count_bots_created_without_auto_connect_against_the_rate(alice_api, settings):
    settings.WHATSAPP_CONNECT_RATE_USER = (1, 600)

    quiet = alice_api.post("/api/bots", {"name": "Quieto", "autoConnect": False})
    loud = alice_api.post("/api/bots", {"name": "Conecta"})

    assert quiet.json()["whatsapp"]["status"] == "disconnected"
    assert loud.json()["whatsapp"]["status"] == "connecting"


# --- Field rules -----------------------------------------------------------------

INVALID_FIELDS = [
    pytest.param("name", "", id="name-empty"),
    pytest.param("name", "   \t\n ", id="name-blank"),
    pytest.param("name", "x" * 81, id="name-81"),
    pytest.param("name", 42, id="name-number"),
    pytest.param("name", ["Ana"], id="name-list"),
    pytest.param("name", None, id="name-null"),
    pytest.param("name", "a\x00b", id="name-nul-character"),
    pytest.param("systemPrompt", "x" * 8001, id="systemPrompt-8001"),
    pytest.param("systemPrompt", None, id="systemPrompt-null"),
    pytest.param("systemPrompt", "a\x00b", id="systemPrompt-nul-character"),
    pytest.param("model", "Gemini-2.5-flash", id="model-uppercase"),
    pytest.param("model", ".gemini", id="model-leading-dot"),
    pytest.param("model", "-gemini", id="model-leading-dash"),
    pytest.param("model", "a" * 65, id="model-65"),
    pytest.param("model", "", id="model-empty"),
    pytest.param("model", "gemini 2.5", id="model-space"),
    pytest.param("model", "gemini/2.5", id="model-slash"),
    pytest.param("model", "gemini-2.5-flash\n", id="model-trailing-newline"),
    pytest.param("model", None, id="model-null"),
    pytest.param("temperature", -0.1, id="temperature-negative"),
    pytest.param("temperature", 2.01, id="temperature-2.01"),
    pytest.param("temperature", "1", id="temperature-string"),
    pytest.param("temperature", True, id="temperature-boolean"),
    pytest.param("temperature", None, id="temperature-null"),
    pytest.param("whatsappProvider", "whatsapp", id="provider-unknown"),
    pytest.param("whatsappProvider", "Neonize", id="provider-capitalised"),
    pytest.param("whatsappProvider", "", id="provider-empty"),
    pytest.param("whatsappProvider", None, id="provider-null"),
    pytest.param("fallbackText", "x" * 1001, id="fallbackText-1001"),
    pytest.param("fallbackText", None, id="fallbackText-null"),
    pytest.param("fallbackText", "a\x00b", id="fallbackText-nul-character"),
    pytest.param("nonTextReply", "x" * 1001, id="nonTextReply-1001"),
    pytest.param("nonTextReply", None, id="nonTextReply-null"),
    pytest.param("nonTextReply", 5, id="nonTextReply-number"),
    pytest.param("replyInGroups", "true", id="replyInGroups-string"),
    pytest.param("replyInGroups", 1, id="replyInGroups-int"),
    pytest.param("replyInGroups", None, id="replyInGroups-null"),
    pytest.param("isActive", "false", id="isActive-string"),
    pytest.param("isActive", 0, id="isActive-int"),
    pytest.param("isActive", None, id="isActive-null"),
]


@pytest.mark.parametrize(("field", "value"), INVALID_FIELDS)
def test_it_refuses_an_invalid_field_on_create(alice_api, field, value):
    body = {"name": "Valid", field: value}

    response = alice_api.post("/api/bots", body)

    assert_invalid(response, field)
    assert not Bot.objects.exists()


@pytest.mark.parametrize(("field", "value"), INVALID_FIELDS)
def test_it_refuses_an_invalid_field_on_update(alice_api, alice, field, value):
    bot = make_bot(alice, name="Original")
    before = snapshot(bot)

    response = alice_api.patch(bot_url(bot), {field: value})

    assert_invalid(response, field)
    assert snapshot(bot) == before


def test_it_refuses_a_create_without_a_name(alice_api):
    response = alice_api.post("/api/bots", {"systemPrompt": "Sem nome"})

    error = assert_invalid(response, "name")
    assert "required" in error["fields"]["name"].lower()


def test_it_refuses_an_empty_create(alice_api):
    assert_invalid(alice_api.post("/api/bots", {}), "name")


def test_it_names_every_invalid_field(alice_api):
    response = alice_api.post("/api/bots", {"name": "", "temperature": 3, "model": "X", "colour": "blue"})

    error = assert_invalid(response, "name")
    assert set(error["fields"]) == {"name", "temperature", "model", "colour"}


@pytest.mark.parametrize("key", ["colour", "system_prompt", "whatsapp_provider", "fallback_text", "is_active", "id"])
def test_it_refuses_unknown_keys(alice_api, alice, key):
    bot = make_bot(alice)
    before = snapshot(bot)

    created = alice_api.post("/api/bots", {"name": "Valid", key: "x"})
    patched = alice_api.patch(bot_url(bot), {key: "x"})

    assert_invalid(created, key)
    assert_invalid(patched, key)
    assert Bot.objects.count() == 1
    assert snapshot(bot) == before


@pytest.mark.parametrize("key", ["body", "path", "query", "payload"])
def test_it_names_an_unknown_key_even_when_it_sounds_like_a_location(alice_api, key):
    response = alice_api.post("/api/bots", {"name": "Valid", key: 1})

    error = assert_invalid(response, key)
    assert error["fields"][key] == "Unknown field."


def test_it_refuses_auto_connect_on_update(alice_api, alice):
    bot = make_bot(alice)

    assert_invalid(alice_api.patch(bot_url(bot), {"autoConnect": True}), "autoConnect")


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_it_refuses_a_non_boolean_auto_connect(alice_api, value):
    assert_invalid(alice_api.post("/api/bots", {"name": "Valid", "autoConnect": value}), "autoConnect")


@pytest.mark.parametrize(
    ("field", "value", "stored"),
    [
        pytest.param("name", "  Ana  ", "Ana", id="name-trimmed"),
        pytest.param("name", "\tAna Maria\n", "Ana Maria", id="name-trimmed-tabs"),
        pytest.param("name", "x" * 80, "x" * 80, id="name-80"),
        pytest.param("name", "  " + "x" * 80 + "  ", "x" * 80, id="name-80-after-trimming"),
        pytest.param("name", "Ação 🤖", "Ação 🤖", id="name-unicode"),
        pytest.param("systemPrompt", "", "", id="systemPrompt-empty"),
        pytest.param("systemPrompt", "x" * 8000, "x" * 8000, id="systemPrompt-8000"),
        pytest.param("model", "a" * 64, "a" * 64, id="model-64"),
        pytest.param("model", "0", "0", id="model-one-digit"),
        pytest.param("model", "gemini-2.0-flash-lite", "gemini-2.0-flash-lite", id="model-dots-and-dashes"),
        pytest.param("temperature", 0, 0, id="temperature-int-0"),
        pytest.param("temperature", 2, 2, id="temperature-int-2"),
        pytest.param("temperature", 1.5, 1.5, id="temperature-float"),
        pytest.param("whatsappProvider", "neonize", "neonize", id="provider-neonize"),
        pytest.param("whatsappProvider", "simulator", "simulator", id="provider-simulator"),
        pytest.param("fallbackText", "", "", id="fallbackText-empty"),
        pytest.param("fallbackText", "x" * 1000, "x" * 1000, id="fallbackText-1000"),
        pytest.param("nonTextReply", "", "", id="nonTextReply-empty"),
        pytest.param("nonTextReply", "Só leio texto.", "Só leio texto.", id="nonTextReply-text"),
        pytest.param("replyInGroups", True, True, id="replyInGroups-true"),
        pytest.param("isActive", False, False, id="isActive-false"),
    ],
)
def test_it_accepts_a_valid_field(alice_api, alice, field, value, stored):
    bot = make_bot(alice, name="Original")

    created = alice_api.post("/api/bots", {"name": "Valid", field: value, "autoConnect": False})
    patched = alice_api.patch(bot_url(bot), {field: value})

    assert created.status_code == 201, created.content
    assert created.json()[field] == stored
    assert patched.status_code == 200, patched.content
    assert patched.json()[field] == stored
    assert alice_api.get(bot_url(bot)).json()[field] == stored


def test_it_refuses_the_simulator_when_it_is_disabled(alice_api, alice, settings):
    settings.WHATSAPP_SIMULATOR = False
    bot = make_bot(alice, whatsapp_provider="neonize")

    created = alice_api.post("/api/bots", {"name": "Sim", "whatsappProvider": "simulator"})
    patched = alice_api.patch(bot_url(bot), {"whatsappProvider": "simulator"})

    assert_invalid(created, "whatsappProvider")
    assert_invalid(patched, "whatsappProvider")
    assert Bot.objects.count() == 1
    bot.refresh_from_db()
    assert bot.whatsapp_provider == "neonize"
    # neonize stays available.
    assert alice_api.post("/api/bots", {"name": "Real", "whatsappProvider": "neonize"}).status_code == 201


# --- Reading and listing ----------------------------------------------------------------


def test_it_lists_only_the_callers_live_bots(alice_api, alice, bob):
    mine = make_bot(alice, name="Mine")
    also_mine = make_bot(alice, name="Also mine")
    deleted_bot(alice)
    make_bot(bob, name="Bob's")

    response = alice_api.get("/api/bots")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"bots"}
    assert {bot["id"] for bot in body["bots"]} == {str(mine.id), str(also_mine.id)}
    for bot in body["bots"]:
        assert set(bot) == BOT_KEYS


def test_it_lists_nothing_for_a_user_without_bots(bob_api, alice):
    make_bot(alice)

    response = bob_api.get("/api/bots")

    assert response.status_code == 200
    assert response.json() == {"bots": []}


def test_it_reads_a_bot(alice_api, alice):
    bot = make_bot(alice, name="Leitura", system_prompt="Seja breve.", temperature=0.2, reply_in_groups=True)

    response = alice_api.get(bot_url(bot))

    assert response.status_code == 200
    body = response.json()
    assert set(body) == BOT_KEYS
    assert body["id"] == str(bot.id)
    assert body["name"] == "Leitura"
    assert body["systemPrompt"] == "Seja breve."
    assert body["temperature"] == 0.2
    assert body["replyInGroups"] is True
    assert body["whatsapp"]["status"] == "disconnected"
    assert RFC3339_UTC.match(body["createdAt"])


# --- Updating ----------------------------------------------------------------------


def test_it_updates_only_the_fields_given(alice_api, alice):
    bot = make_bot(
        alice,
        name="Antes",
        system_prompt="Prompt",
        model="gemini-2.5-flash",
        temperature=0.5,
        fallback_text="Ops",
        whatsapp_provider="simulator",
    )
    before = alice_api.get(bot_url(bot)).json()

    response = alice_api.patch(bot_url(bot), {"name": "  Depois ", "temperature": 1.1})

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["name"] == "Depois"
    assert body["temperature"] == 1.1
    unchanged = BOT_KEYS - {"name", "temperature", "updatedAt", "whatsapp"}
    assert {key: body[key] for key in unchanged} == {key: before[key] for key in unchanged}
    assert body["updatedAt"] >= before["updatedAt"]
    bot.refresh_from_db()
    assert (bot.name, bot.temperature, bot.system_prompt, bot.fallback_text) == ("Depois", 1.1, "Prompt", "Ops")
    assert alice_api.get(bot_url(bot)).json() == body


def test_it_accepts_an_empty_update(alice_api, alice):
    bot = make_bot(alice, name="Igual")
    before = alice_api.get(bot_url(bot)).json()

    response = alice_api.patch(bot_url(bot), {})

    assert response.status_code == 200
    assert response.json() == before


def test_it_does_not_connect_a_bot_on_update(alice_api, alice):
    bot = make_bot(alice)

    alice_api.patch(bot_url(bot), {"name": "Outro"})

    session = Session.objects.get(pk=bot.pk)
    assert (session.status, session.desired_connected) == ("disconnected", False)


# --- Deleting ----------------------------------------------------------------------


def test_it_deletes_a_bot(alice_api):
    bot_id = alice_api.post("/api/bots", {"name": "Adeus"}).json()["id"]
    assert Session.objects.get(pk=bot_id).desired_connected is True

    response = alice_api.delete(bot_url(bot_id))

    assert response.status_code == 204
    assert response.content == b""
    assert alice_api.get("/api/bots").json() == {"bots": []}
    assert_error(alice_api.get(bot_url(bot_id)), 404, "not_found")
    # Hidden at once, kept for the hosting shard to log out and release.
    bot = Bot.objects.get(pk=bot_id)
    assert bot.deleted_at is not None
    session = Session.objects.get(pk=bot_id)
    assert session.desired_connected is False
    assert session.logout_requested is True


def test_it_deletes_only_the_bot_asked_for(alice_api, alice):
    doomed = make_bot(alice, name="Doomed")
    kept = make_bot(alice, name="Kept")

    assert alice_api.delete(bot_url(doomed)).status_code == 204

    assert [bot["id"] for bot in alice_api.get("/api/bots").json()["bots"]] == [str(kept.id)]
    kept.refresh_from_db()
    assert kept.deleted_at is None
    assert Session.objects.get(pk=kept.pk).logout_requested is False


# --- 404 ------------------------------------------------------------------------------


def deleted_bot(owner: User) -> Bot:
    bot = make_bot(owner, name="Gone")
    Bot.objects.filter(pk=bot.pk).update(deleted_at=bot.created_at)
    return bot


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
@pytest.mark.parametrize(
    "path",
    [
        pytest.param(lambda alice: bot_url(uuid.uuid4()), id="missing"),
        pytest.param(lambda alice: "/api/bots/not-a-uuid", id="not-a-uuid"),
        pytest.param(lambda alice: "/api/bots/12345", id="a-number"),
        pytest.param(lambda alice: bot_url(str(uuid.uuid4()).upper()), id="uppercase-uuid"),
        pytest.param(lambda alice: bot_url(deleted_bot(alice)), id="deleted"),
    ],
)
def test_it_answers_404_for_a_bot_that_is_not_there(alice_api, alice, method, path):
    response = alice_api.request(method, path(alice), {"name": "Valid"} if method == "PATCH" else None)

    assert_error(response, 404, "not_found")


def test_it_answers_404_for_unknown_api_paths(alice_api, alice):
    bot = make_bot(alice)

    for path in ("/api/nothing", "/api/bots/", f"{bot_url(bot)}/nothing", "/api/v2/bots", "/api/"):
        assert_error(alice_api.get(path), 404, "not_found")
        assert_error(alice_api.post(path, {"name": "x"}), 404, "not_found")


def test_it_answers_404_for_unknown_api_paths_without_auth(anonymous_api):
    assert_error(anonymous_api.get("/api/nothing"), 404, "not_found")


# --- Tenancy ----------------------------------------------------------------------------


def test_it_hides_another_users_bot_on_every_route(alice_api, bob_api, alice, bob):
    bot = make_bot(alice, name="Da Alice", system_prompt="Segredo", temperature=0.3)
    before = snapshot(bot)
    url = bot_url(bot)

    responses = {
        "read": bob_api.get(url),
        "update": bob_api.patch(url, {"name": "Do Bob", "temperature": 2}),
        "update-invalid": bob_api.patch(url, {"name": "", "colour": "red"}),
        "update-invalid-json": bob_api.patch(url, raw=b"{not json"),
        "update-array": bob_api.patch(url, raw=b"[]"),
        "update-too-large": bob_api.patch(url, raw=TOO_LARGE),
        "update-too-large-text": bob_api.patch(url, raw=TOO_LARGE, content_type="text/plain"),
        "update-not-json": bob_api.patch(url, raw=b"name=Bob", content_type="application/x-www-form-urlencoded"),
        "delete": bob_api.delete(url),
    }

    for route, response in responses.items():
        assert response.status_code == 404, (route, response.status_code, response.content[:200])
        assert_error(response, 404, "not_found")
    # Same answer as for a bot that never existed: nothing tells bob it is there.
    assert responses["read"].json() == bob_api.get(bot_url(uuid.uuid4())).json()
    assert str(bot.id) not in {b["id"] for b in bob_api.get("/api/bots").json()["bots"]}
    assert snapshot(bot) == before
    assert alice_api.get(url).json()["name"] == "Da Alice"


# --- Order of checks: 401, 404, 413, 415, 400 ----------------------------------------------


def test_it_refuses_a_body_over_1_mib(alice_api, alice):
    bot = make_bot(alice)
    before = snapshot(bot)

    created = alice_api.post("/api/bots", raw=TOO_LARGE)
    patched = alice_api.patch(bot_url(bot), raw=TOO_LARGE)

    assert_error(created, 413, "payload_too_large")
    assert_error(patched, 413, "payload_too_large")
    assert Bot.objects.count() == 1
    assert snapshot(bot) == before


def test_it_refuses_a_body_over_1_mib_on_a_delete(alice_api, alice):
    bot = make_bot(alice)
    before = snapshot(bot)

    assert_error(alice_api.delete(bot_url(bot), raw=TOO_LARGE), 413, "payload_too_large")
    assert snapshot(bot) == before
    # Under the limit, a body is ignored.
    assert alice_api.delete(bot_url(bot), raw=b'{"x": 1}').status_code == 204


def test_it_accepts_a_body_of_exactly_1_mib(alice_api):
    padding = MIB - len(json.dumps({"name": "Grande", "systemPrompt": ""}).encode())
    body = json.dumps({"name": "Grande", "systemPrompt": "x" * padding}).encode()
    assert len(body) == MIB

    response = alice_api.post("/api/bots", raw=body)

    # Not 413: the size is allowed, the prompt is what is too long.
    assert_invalid(response, "systemPrompt")


def test_it_checks_the_size_before_the_content_type_and_the_json(alice_api):
    too_large_garbage = b"<" * (MIB + 1)

    assert_error(
        alice_api.post("/api/bots", raw=too_large_garbage, content_type="text/plain"), 413, "payload_too_large"
    )
    assert_error(alice_api.post("/api/bots", raw=too_large_garbage), 413, "payload_too_large")


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/xml", "application/json-patch+json"],
)
def test_it_refuses_a_body_that_is_not_json(alice_api, alice, content_type):
    bot = make_bot(alice)

    # Even valid JSON, and even invalid data, is refused for its content type first.
    created = alice_api.post("/api/bots", {"name": "Valid"}, content_type=content_type)
    patched = alice_api.patch(bot_url(bot), {"name": ""}, content_type=content_type)

    assert_error(created, 415, "unsupported_media_type")
    assert_error(patched, 415, "unsupported_media_type")
    assert Bot.objects.count() == 1


def test_it_refuses_a_multipart_body(alice_api):
    response = alice_api.client.post("/api/bots", {"name": "Form"}, headers=alice_api.headers)

    assert_error(response, 415, "unsupported_media_type")


def test_it_accepts_json_with_a_charset(alice_api):
    response = alice_api.post("/api/bots", {"name": "Charset"}, content_type="application/json; charset=utf-8")

    assert response.status_code == 201


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"{", id="truncated"),
        pytest.param(b"{'name': 'single quotes'}", id="single-quotes"),
        pytest.param(b'{"name": "x",}', id="trailing-comma"),
        pytest.param(b"\xff\xfe\x00", id="not-utf8"),
        pytest.param(b'{"name": "x"} {}', id="two-documents"),
    ],
)
def test_it_refuses_invalid_json(alice_api, raw):
    response = alice_api.post("/api/bots", raw=raw)

    assert_error(response, 400, "invalid_json")
    assert not Bot.objects.exists()


@pytest.mark.parametrize("raw", [b"[]", b'[{"name": "x"}]', b'"name"', b"42", b"null", b"true"])
def test_it_refuses_a_json_body_that_is_not_an_object(alice_api, alice, raw):
    bot = make_bot(alice)

    assert_error(alice_api.post("/api/bots", raw=raw), 400, "validation_error")
    assert_error(alice_api.patch(bot_url(bot), raw=raw), 400, "validation_error")


def test_it_refuses_an_empty_json_body(alice_api):
    response = send(alice_api.client, "POST", "/api/bots", b"", "application/json", alice_api.headers)

    assert_error(response, 400, "invalid_json")


def test_it_checks_the_json_before_validating_fields(alice_api):
    assert_error(alice_api.post("/api/bots", raw=b'{"name": ""'), 400, "invalid_json")


@pytest.mark.parametrize(
    ("method", "path_of", "body"),
    [
        ("GET", lambda bot: "/api/bots", None),
        ("POST", lambda bot: "/api/bots", {"name": "Valid"}),
        ("GET", bot_url, None),
        ("PATCH", bot_url, {"name": "Valid"}),
        ("DELETE", bot_url, None),
    ],
)
def test_it_answers_401_without_credentials(anonymous_api, alice, method, path_of, body):
    bot = make_bot(alice)

    response = anonymous_api.request(method, path_of(bot), body)

    error = assert_error(response, 401, "unauthorized")
    assert "fields" not in error
    assert response["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer not-a-real-token",
        "Bearer ",
        "Bearer",
        "Token abc",
        "Basic YWxpY2U6cGFzc3dvcmQtYWxpY2U=",
        "bearer",
    ],
)
def test_it_answers_401_for_a_bad_token(alice, authorization):
    make_bot(alice)
    api = ApiClient(Client(), {"Authorization": authorization})

    for response in (api.get("/api/bots"), api.post("/api/bots", {"name": "Valid"})):
        assert_error(response, 401, "unauthorized")
        assert response["WWW-Authenticate"] == "Bearer"
    assert Bot.objects.count() == 1


def test_it_answers_401_for_a_token_of_an_inactive_user(alice_api, alice):
    bot = make_bot(alice)
    alice.is_active = False
    alice.save()

    assert_error(alice_api.get("/api/bots"), 401, "unauthorized")
    assert_error(alice_api.get(bot_url(bot)), 401, "unauthorized")
    assert_error(alice_api.delete(bot_url(bot)), 401, "unauthorized")
    bot.refresh_from_db()
    assert bot.deleted_at is None


def test_it_answers_401_for_a_token_that_was_deleted(alice):
    token, secret = ApiToken.issue(alice)
    api = ApiClient(Client(), {"Authorization": f"Bearer {secret}"})
    assert api.get("/api/bots").status_code == 200

    token.delete()

    assert_error(api.get("/api/bots"), 401, "unauthorized")


@pytest.mark.parametrize(
    ("method", "body", "raw", "content_type"),
    [
        ("PATCH", None, TOO_LARGE, "application/json"),
        ("PATCH", None, b"{oops", "text/plain"),
        ("PATCH", {"colour": "red"}, None, "application/json"),
        ("DELETE", None, None, "application/json"),
    ],
)
def test_it_answers_401_before_anything_else(anonymous_api, alice, method, body, raw, content_type):
    for path in (bot_url(make_bot(alice)), bot_url(uuid.uuid4())):
        response = anonymous_api.request(method, path, body, raw=raw, content_type=content_type)
        assert_error(response, 401, "unauthorized")


def test_it_answers_401_before_checking_a_new_bots_body(anonymous_api):
    assert_error(anonymous_api.post("/api/bots", raw=TOO_LARGE), 401, "unauthorized")
    assert_error(anonymous_api.post("/api/bots", raw=b"x", content_type="text/plain"), 401, "unauthorized")
    assert_error(anonymous_api.post("/api/bots", {"name": ""}), 401, "unauthorized")


@pytest.mark.parametrize(
    ("method", "path_of"),
    [
        ("PUT", lambda bot: "/api/bots"),
        ("DELETE", lambda bot: "/api/bots"),
        ("PATCH", lambda bot: "/api/bots"),
        ("PUT", bot_url),
        ("POST", bot_url),
    ],
)
def test_it_answers_405_for_an_unsupported_method(alice_api, alice, method, path_of):
    bot = make_bot(alice)

    response = alice_api.request(method, path_of(bot), {"name": "Valid"})

    assert_error(response, 405, "method_not_allowed")
    allowed = {"/api/bots": {"GET", "POST"}}.get(path_of(bot), {"GET", "PATCH", "DELETE"})
    assert set(response["Allow"].replace(" ", "").split(",")) == allowed
    assert Bot.objects.get().name == bot.name


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
@pytest.mark.parametrize("path", ["/api/openapi.json", "/api/docs"])
def test_it_answers_405_to_a_write_on_the_openapi_document_and_its_page(alice, method, path):
    session, csrf_token = csrf_client(alice)
    clients = {
        "anonymous": (Client(enforce_csrf_checks=True), {}),
        "bearer": (Client(enforce_csrf_checks=True), {"Authorization": f"Bearer {ApiToken.issue(alice)[1]}"}),
        # CSRF, which would answer 403 first, does not apply to pages that take no write.
        "session without CSRF token": (session, {}),
        "session with CSRF token": (session, {"X-CSRFToken": csrf_token}),
    }
    for name, (client, headers) in clients.items():
        response = send(client, method, path, b'{"name": "x"}', "application/json", headers)

        assert response["Allow"] == "GET, HEAD", name
        assert_error(response, 405, "method_not_allowed")


@pytest.mark.parametrize("path", ["/api/openapi.json", "/api/docs"])
def test_it_still_serves_the_openapi_document_and_its_page_to_get_and_head(anonymous_api, path):
    assert anonymous_api.get(path).status_code == 200
    response = anonymous_api.client.head(path)
    assert response.status_code == 200
    assert response.content == b""


# --- Nothing a client sends gives a 500 or an HTML page --------------------------------

NASTY_BODIES = [
    pytest.param(b"[" * 200_000, "application/json", id="deeply-nested-array"),
    pytest.param(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "application/json", id="deeply-nested-object"),
    pytest.param(b'{"name": "x", "temperature": 1' + b"0" * 5000 + b"}", "application/json", id="huge-integer"),
    pytest.param(b'{"name": "x", "temperature": 1e999}', "application/json", id="infinite-float"),
    pytest.param(b'{"name": "x", "temperature": NaN}', "application/json", id="nan"),
    pytest.param(b'{"name": "x", "temperature": -Infinity}', "application/json", id="minus-infinity"),
    pytest.param(b'{"name": "\\ud800"}', "application/json", id="lone-surrogate"),
    pytest.param(b'{"name": "a\\u0000b"}', "application/json", id="nul-in-a-value"),
    pytest.param(b'{"na\\u0000me": "x"}', "application/json", id="nul-in-a-key"),
    pytest.param(b'{"name": "x", "name": 5}', "application/json", id="duplicate-key"),
    pytest.param(b'{"name": {"nested": [1, 2, {"deep": null}]}}', "application/json", id="object-as-name"),
    pytest.param('{"name": "é"}'.encode("latin-1"), "application/json; charset=latin-1", id="json-in-latin-1"),
    pytest.param(b"\x00" * 100, "application/json", id="nul-bytes"),
    pytest.param(b"a=" + b"x" * (MIB + 10), "application/x-www-form-urlencoded", id="huge-form"),
    pytest.param(b"&".join(b"a%d=1" % i for i in range(5000)), "application/x-www-form-urlencoded", id="many-fields"),
    pytest.param(b"garbage", "multipart/form-data", id="multipart-without-boundary"),
    pytest.param(b"garbage", "multipart/form-data; boundary=xyz", id="multipart-garbage"),
    pytest.param(b"a=1", "application/x-www-form-urlencoded; charset=latin-1", id="form-latin-1"),
    pytest.param(b'{"name": "x"}', "", id="no-content-type"),
    pytest.param(b'{"name": ""}', "application/json; charset=no-such-charset", id="unknown-charset"),
]


def assert_client_error(response) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.content[:300])
    error_of(response)


@pytest.mark.parametrize(("raw", "content_type"), NASTY_BODIES)
def test_it_never_answers_500_to_a_bearer_client(alice_api, alice, raw, content_type):
    bot = make_bot(alice)

    for response in (
        send(alice_api.client, "POST", "/api/bots", raw, content_type, alice_api.headers),
        send(alice_api.client, "PATCH", bot_url(bot), raw, content_type, alice_api.headers),
    ):
        assert_client_error(response)
    assert Bot.objects.count() == 1


@pytest.mark.parametrize(("raw", "content_type"), NASTY_BODIES)
def test_it_never_answers_500_to_a_browser_session(alice, raw, content_type):
    # A browser session makes Django look for a CSRF token in form bodies.
    client, token = csrf_client(alice)
    bot = make_bot(alice)

    for headers in ({}, {"X-CSRFToken": token}):
        for response in (
            send(client, "POST", "/api/bots", raw, content_type, headers),
            send(client, "PATCH", bot_url(bot), raw, content_type, headers),
        ):
            assert_client_error(response)
    assert Bot.objects.count() == 1


def test_it_answers_413_and_415_to_a_browser_session_with_a_form_body(alice):
    client, token = csrf_client(alice)
    headers = {"X-CSRFToken": token}

    huge = client.post(
        "/api/bots", data=b"a=" + b"x" * MIB, content_type="application/x-www-form-urlencoded", headers=headers
    )
    form = client.post(
        "/api/bots", data=b"name=Form", content_type="application/x-www-form-urlencoded", headers=headers
    )

    assert_error(huge, 413, "payload_too_large")
    assert_error(form, 415, "unsupported_media_type")
    assert not Bot.objects.exists()


def test_it_does_not_take_a_csrf_token_from_a_form_body(alice):
    client, token = csrf_client(alice)

    response = client.post(
        "/api/bots",
        data=f"csrfmiddlewaretoken={token}&name=Form".encode(),
        content_type="application/x-www-form-urlencoded",
    )

    assert_error(response, 403, "csrf_failed")


def test_it_answers_json_for_odd_requests(alice_api, alice):
    bot = make_bot(alice)

    # Query strings the routes do not use are ignored, unless the database could not hold them.
    for response in (alice_api.get("/api/bots?limit=abc"), alice_api.get(bot_url(bot) + "?x=" + "y" * 5000)):
        assert response.status_code == 200
    assert_error(alice_api.get("/api/bots?name=%00"), 400, "bad_request")
    for response in (
        alice_api.get("/api/bots/%00"),
        alice_api.get("/api/bots/" + "a" * 3000),
        alice_api.request("OPTIONS", "/api/bots"),
        alice_api.patch(bot_url(bot)),
    ):
        assert_client_error(response)


# --- Auth ---------------------------------------------------------------------------------


def test_it_does_not_store_a_tokens_secret(alice):
    token, secret = ApiToken.issue(alice, name="script")

    assert re.fullmatch(r"[A-Za-z0-9_-]{40,}", secret)
    token.refresh_from_db()
    assert token.key_hash == hashlib.sha256(secret.encode()).hexdigest()
    stored = ApiToken.objects.filter(pk=token.pk).values().get()
    assert all(secret not in str(value) for value in stored.values())
    # The secret still authenticates: the hash is what is looked up.
    api = ApiClient(Client(), {"Authorization": f"Bearer {secret}"})
    assert api.get("/api/bots").status_code == 200


def test_it_acts_as_the_tokens_owner(alice_api, alice):
    response = alice_api.post("/api/bots", {"name": "Da Alice"})

    assert Bot.objects.get(pk=response.json()["id"]).owner == alice


def test_it_needs_no_csrf_token_with_a_bearer_token(alice):
    _, secret = ApiToken.issue(alice)
    api = ApiClient(Client(enforce_csrf_checks=True), {"Authorization": f"Bearer {secret}"})

    created = api.post("/api/bots", {"name": "Script"})

    assert created.status_code == 201
    bot_url_ = bot_url(created.json()["id"])
    assert api.patch(bot_url_, {"name": "Script 2"}).status_code == 200
    assert api.delete(bot_url_).status_code == 204


def test_it_lets_a_browser_session_read_without_a_csrf_token(alice):
    bot = make_bot(alice)
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)

    listed = client.get("/api/bots")
    read = client.get(bot_url(bot))

    assert listed.status_code == 200
    assert [b["id"] for b in listed.json()["bots"]] == [str(bot.id)]
    assert read.status_code == 200


def test_it_refuses_a_browser_session_write_without_a_csrf_token(alice):
    bot = make_bot(alice, name="Intacto")
    before = snapshot(bot)
    client, _ = csrf_client(alice)

    responses = [
        client.post("/api/bots", {"name": "Forjado"}, content_type="application/json"),
        client.patch(bot_url(bot), {"name": "Forjado"}, content_type="application/json"),
        client.delete(bot_url(bot)),
        client.post("/api/bots", {"name": "Forjado"}, content_type="application/json", headers={"X-CSRFToken": "x"}),
        client.delete(bot_url(bot), headers={"X-CSRFToken": "a" * 32}),
    ]

    for response in responses:
        assert_error(response, 403, "csrf_failed")
    assert Bot.objects.count() == 1
    assert snapshot(bot) == before


def test_it_lets_a_browser_session_write_with_a_csrf_token(alice):
    client, token = csrf_client(alice)
    headers = {"X-CSRFToken": token}

    created = client.post("/api/bots", {"name": "Navegador"}, content_type="application/json", headers=headers)
    url = bot_url(created.json()["id"])
    patched = client.patch(url, {"name": "Navegador 2"}, content_type="application/json", headers=headers)
    deleted = client.delete(url, headers=headers)

    assert created.status_code == 201, created.content
    assert Bot.objects.get(pk=created.json()["id"]).owner == alice
    assert patched.status_code == 200
    assert patched.json()["name"] == "Navegador 2"
    assert deleted.status_code == 204


def test_it_lets_a_browser_that_logged_in_through_the_login_page_write(alice):
    client = Client(enforce_csrf_checks=True)
    client.get("/login/")
    login = client.post(
        "/login/",
        {"username": "alice", "password": "password-alice", "csrfmiddlewaretoken": client.cookies["csrftoken"].value},
    )
    assert login.status_code == 302
    # Logging in rotates the token; the browser uses the new cookie.
    token = client.cookies["csrftoken"].value

    response = client.post(
        "/api/bots", {"name": "Login"}, content_type="application/json", headers={"X-CSRFToken": token}
    )

    assert response.status_code == 201, response.content


def test_it_checks_csrf_only_for_a_logged_in_session(db):
    # Unknown callers learn they must authenticate (401), not that the CSRF token is wrong.
    client = Client(enforce_csrf_checks=True)
    client.get("/login/")

    response = client.post("/api/bots", {"name": "x"}, content_type="application/json")

    assert_error(response, 401, "unauthorized")


def test_it_tries_the_bearer_token_before_the_session(alice, bob):
    bobs_bot = make_bot(bob, name="Do Bob")
    _, secret = ApiToken.issue(alice)
    client = Client(enforce_csrf_checks=True)
    client.force_login(bob)
    headers = {"Authorization": f"Bearer {secret}"}

    listed = client.get("/api/bots", headers=headers)
    created = client.post("/api/bots", {"name": "Da Alice"}, content_type="application/json", headers=headers)
    bobs = client.get(bot_url(bobs_bot), headers=headers)

    assert listed.status_code == 200
    assert listed.json() == {"bots": []}
    # No CSRF token needed: the request is alice's bearer request, not bob's session.
    assert created.status_code == 201, created.content
    assert Bot.objects.get(pk=created.json()["id"]).owner == alice
    assert_error(bobs, 404, "not_found")
    # Without the header the same browser is bob again.
    assert [b["id"] for b in client.get("/api/bots").json()["bots"]] == [str(bobs_bot.id)]


def test_it_ignores_the_session_of_an_inactive_user(alice):
    client = Client()
    client.force_login(alice)
    alice.is_active = False
    alice.save()

    assert_error(client.get("/api/bots"), 401, "unauthorized")


# --- OpenAPI ----------------------------------------------------------------------------


def resolve(document: dict, schema: dict) -> dict:
    while "$ref" in schema:
        *_, name = schema["$ref"].split("/")
        schema = document["components"]["schemas"][name]
    return schema


def test_it_publishes_an_openapi_document(anonymous_api):
    response = anonymous_api.get("/api/openapi.json")

    assert response.status_code == 200
    document = json.loads(response.content)
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    assert {"get", "post"} <= set(paths["/api/bots"])
    item = next(value for key, value in paths.items() if re.fullmatch(r"/api/bots/\{\w+\}", key))
    assert {"get", "patch", "delete"} <= set(item)

    create = resolve(document, paths["/api/bots"]["post"]["requestBody"]["content"]["application/json"]["schema"])
    assert {"name", "systemPrompt", "model", "temperature", "autoConnect"} <= set(create["properties"])
    assert "name" in create.get("required", [])
    update = resolve(document, item["patch"]["requestBody"]["content"]["application/json"]["schema"])
    assert "name" in update["properties"]
    assert "autoConnect" not in update["properties"]
    assert "201" in paths["/api/bots"]["post"]["responses"]


def test_it_serves_the_api_docs_without_a_cdn(anonymous_api):
    response = anonymous_api.get("/api/docs")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    page = response.content.decode()
    assert "openapi.json" in page
    assert "cdn." not in page
    assert "unpkg.com" not in page
    # The page's own scripts and styles come from this server.
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page)
    assert assets
    for asset in assets:
        assert Client().get(asset).status_code == 200, asset
