"""The Django admin as staff use it: lists, search, filters, read-only records, API tokens."""

from __future__ import annotations

import hashlib
import re
from html import unescape

import pytest
from django.contrib.auth.models import User
from django.test import Client

from bots.models import ApiToken, Bot
from tests.helpers import make_bot, make_message
from whatsapp.models import ConnectRequest, Session, SessionEvent, Status


@pytest.fixture
def admin_client(staff: User) -> Client:
    client = Client()
    client.force_login(staff)
    return client


def page_of(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def result_rows(response) -> list[dict[str, str]]:
    """The rows of a changelist as the staff member reads them: {column: text}."""
    page = page_of(response)
    body = re.search(r'<table id="result_list">.*?<tbody>(.*?)</tbody>', page, re.S)
    if body is None:
        return []
    rows = []
    for row in re.findall(r"<tr>(.*?)</tr>", body.group(1), re.S):
        cells = re.findall(r'<(td|th) class="field-(\w+)[^"]*">(.*?)</\1>', row, re.S)
        rows.append({name: plain_text(html) for _, name, html in cells})
    return rows


def plain_text(html: str) -> str:
    html = re.sub(r'<img [^>]*alt="([^"]*)"[^>]*>', r"\1", html)
    return unescape(re.sub(r"<[^>]+>", "", html)).strip()


def column(response, name: str) -> list[str]:
    return [row[name] for row in result_rows(response)]


def set_session(bot: Bot, **fields) -> None:
    Session.objects.filter(bot=bot).update(**fields)


def add_event(bot: Bot, version: int, event: str, status: str, detail: str = "") -> SessionEvent:
    return SessionEvent.objects.create(session=bot.session, version=version, event=event, status=status, detail=detail)


def bot_form(owner: User, **fields) -> dict:
    data = {
        "owner": owner.pk,
        "name": "Front desk",
        "is_active": "on",
        "system_prompt": "You answer questions about opening hours.",
        "model": "gemini-2.5-flash",
        "temperature": "0.7",
        "fallback_text": "Sorry, try again later.",
        "whatsapp_provider": "neonize",
    }
    data.update(fields)
    return data


# --- Bots ----------------------------------------------------------------------


def test_it_lists_bots_with_their_owner_provider_and_connection(admin_client, alice, bob):
    make_bot(alice, name="Support", whatsapp_provider="neonize")
    sales = make_bot(bob, name="Sales", whatsapp_provider="simulator")
    set_session(sales, status=Status.CONNECTED, phone="5511988887777")

    rows = result_rows(admin_client.get("/admin/bots/bot/"))

    shown = {(row["name"], row["owner"], row["whatsapp_provider"], row["connection_status"]) for row in rows}
    assert shown == {
        ("Sales", "bob", "Simulator", "connected"),
        ("Support", "alice", "WhatsApp (neonize)", "disconnected"),
    }
    assert all(row["is_active"] == "True" for row in rows)
    assert all(row["model"] == "gemini-2.5-flash" for row in rows)
    assert all(row["created_at"] for row in rows)


def test_it_searches_bots_by_name_owner_phone_and_id(admin_client, alice, bob):
    support = make_bot(alice, name="Support")
    sales = make_bot(bob, name="Sales")
    set_session(sales, phone="5511988887777")

    def found(query: str) -> list[str]:
        return column(admin_client.get("/admin/bots/bot/", {"q": query}), "name")

    assert found("suppo") == ["Support"]
    assert found("bob") == ["Sales"]
    assert found("988887777") == ["Sales"]
    assert found(str(support.id)) == ["Support"]
    assert found("nobody") == []


def test_it_filters_bots_by_provider_session_status_and_deletion(admin_client, alice):
    make_bot(alice, name="Real phone", whatsapp_provider="neonize")
    simulated = make_bot(alice, name="Simulated", whatsapp_provider="simulator")
    set_session(simulated, status=Status.QR_REQUIRED)
    gone = make_bot(alice, name="Retired")
    Bot.objects.filter(pk=gone.pk).update(deleted_at="2025-01-01T00:00:00Z")

    def filtered(**query: str) -> set[str]:
        return set(column(admin_client.get("/admin/bots/bot/", query), "name"))

    assert filtered(whatsapp_provider__exact="neonize") == {"Real phone"}
    assert filtered(session__status__exact="qr_required") == {"Simulated"}
    assert filtered(deleted="yes") == {"Retired"}
    assert filtered(deleted="no") == {"Real phone", "Simulated"}


def test_it_creates_a_bot_with_its_session_from_the_add_form(admin_client, alice):
    form = page_of(admin_client.get("/admin/bots/bot/add/"))
    assert 'name="name"' in form
    assert 'value="gemini-2.5-flash"' in form  # the settings' default model is prefilled

    response = admin_client.post("/admin/bots/bot/add/", bot_form(alice))

    assert response.status_code == 302
    bot = Bot.objects.get(name="Front desk")
    assert bot.owner == alice
    assert bot.session.status == Status.DISCONNECTED
    assert column(admin_client.get("/admin/whatsapp/session/"), "status") == ["disconnected"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("temperature", "5", "The temperature goes from 0 to 2."),
        ("model", "Gemini Pro!", "Use lower-case letters"),
        ("name", "   ", "This field is required."),
    ],
)
def test_it_refuses_a_bot_the_api_would_refuse(admin_client, alice, field, value, message):
    response = admin_client.post("/admin/bots/bot/add/", bot_form(alice, **{field: value}))

    assert message in page_of(response)
    assert not Bot.objects.exists()


def test_it_refuses_a_simulator_bot_when_the_simulator_is_off(admin_client, alice, settings):
    settings.WHATSAPP_SIMULATOR = False

    response = admin_client.post("/admin/bots/bot/add/", bot_form(alice, whatsapp_provider="simulator"))

    assert "The simulator is not enabled on this server." in page_of(response)
    assert not Bot.objects.exists()


# --- Messages --------------------------------------------------------------------


def test_it_lists_searches_and_filters_messages(admin_client, alice):
    bot = make_bot(alice, name="Support")
    make_message(bot, "Do you open on Sundays?", wa_id="IN-1")
    make_message(bot, "We open at 10 on Sundays.", direction="out", status="sent", ai_latency_ms=812)
    make_message(bot, "Refund please", chat="5511977776666@s.whatsapp.net", status="failed")

    def texts(**query: str) -> list[str]:
        return column(admin_client.get("/admin/bots/message/", query), "short_text")

    rows = result_rows(admin_client.get("/admin/bots/message/"))
    reply = next(row for row in rows if row["short_text"] == "We open at 10 on Sundays.")
    assert len(rows) == 3
    assert reply["bot"] == "Support"
    assert reply["direction"] == "outbound"
    assert reply["chat"] == "5511999990001@s.whatsapp.net"
    assert (reply["type"], reply["status"], reply["ai_latency_ms"]) == ("text", "sent", "812")
    assert reply["created_at"]
    assert sorted(texts(q="sundays")) == ["Do you open on Sundays?", "We open at 10 on Sundays."]
    assert texts(q="5511977776666") == ["Refund please"]
    assert texts(direction__exact="out") == ["We open at 10 on Sundays."]
    assert texts(status__exact="failed") == ["Refund please"]


def test_it_keeps_messages_read_only(admin_client, alice):
    bot = make_bot(alice, name="Support")
    message = make_message(bot, "Do you open on Sundays?")
    url = f"/admin/bots/message/{message.pk}/change/"

    changelist = page_of(admin_client.get("/admin/bots/message/"))
    change = page_of(admin_client.get(url))
    add = admin_client.get("/admin/bots/message/add/")
    post = admin_client.post(url, {"text": "rewritten", "status": "replied"})

    assert "/admin/bots/message/add/" not in changelist
    assert "Do you open on Sundays?" in change
    assert 'name="text"' not in change and 'name="status"' not in change
    assert 'name="_save"' not in change
    assert add.status_code == 403
    assert post.status_code == 403
    message.refresh_from_db()
    assert (message.text, message.status) == ("Do you open on Sundays?", "received")


# --- WhatsApp sessions and their events ------------------------------------------------


def test_it_lists_searches_and_filters_sessions(admin_client, alice, bob):
    support = make_bot(alice, name="Support", whatsapp_provider="neonize")
    sales = make_bot(bob, name="Sales")
    set_session(support, status=Status.CONNECTED, desired_connected=True, phone="5511911112222", lease_owner="host-a:0")
    set_session(sales, status=Status.FAILED, failures=3, last_error="boom")

    def bots(**query: str) -> list[str]:
        return column(admin_client.get("/admin/whatsapp/session/", query), "bot")

    rows = {row["bot"]: row for row in result_rows(admin_client.get("/admin/whatsapp/session/"))}
    assert set(rows) == {"Support", "Sales"}
    assert rows["Support"]["status"] == "connected"
    assert rows["Support"]["desired_connected"] == "True"
    assert rows["Support"]["phone"] == "5511911112222"
    assert rows["Support"]["lease_owner"] == "host-a:0"
    assert (rows["Sales"]["status"], rows["Sales"]["failures"]) == ("failed", "3")
    assert rows["Sales"]["updated_at"]
    assert bots(status__exact="connected") == ["Support"]
    assert bots(q="911112222") == ["Support"]
    assert bots(q="bob") == ["Sales"]
    assert bots(bot__whatsapp_provider__exact="simulator") == ["Sales"]


def test_it_shows_a_session_read_only_with_its_events_newest_first(admin_client, alice):
    bot = make_bot(alice, name="Support")
    set_session(bot, status=Status.CONNECTED, phone="5511911112222", lease_owner="host-a:0", lease_epoch=4)
    add_event(bot, 1, "connecting", Status.CONNECTING)
    add_event(bot, 2, "qr", Status.QR_REQUIRED, "first QR code")
    add_event(bot, 3, "connected", Status.CONNECTED, "paired as 5511911112222")
    url = f"/admin/whatsapp/session/{bot.pk}/change/"

    change = page_of(admin_client.get(url))
    post = admin_client.post(url, {"status": "disconnected", "lease_owner": ""})

    assert "5511911112222" in change and "host-a:0" in change
    assert "paired as 5511911112222" in change and "first QR code" in change
    assert change.index("paired as 5511911112222") < change.index("first QR code")
    for internal in ("status", "desired_connected", "version", "lease_owner", "lease_epoch", "qr_code", "jid"):
        assert f'name="{internal}"' not in change
    assert 'name="_save"' not in change
    assert post.status_code == 403
    session = Session.objects.get(bot=bot)
    assert (session.status, session.lease_owner, session.lease_epoch) == (Status.CONNECTED, "host-a:0", 4)


def test_it_neither_adds_nor_deletes_sessions(admin_client, alice):
    bot = make_bot(alice, name="Support")

    assert admin_client.get("/admin/whatsapp/session/add/").status_code == 403
    assert admin_client.post(f"/admin/whatsapp/session/{bot.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Session.objects.filter(bot=bot).exists()


def test_it_lists_session_events_read_only(admin_client, alice, bob):
    support = make_bot(alice, name="Support")
    sales = make_bot(bob, name="Sales")
    add_event(support, 1, "connected", Status.CONNECTED, "paired as 5511911112222")
    event = add_event(sales, 1, "failed", Status.FAILED, "websocket closed")

    def details(**query: str) -> list[str]:
        return column(admin_client.get("/admin/whatsapp/sessionevent/", query), "detail")

    rows = {row["detail"]: row for row in result_rows(admin_client.get("/admin/whatsapp/sessionevent/"))}
    assert set(rows) == {"paired as 5511911112222", "websocket closed"}
    failure = rows["websocket closed"]
    assert (failure["version"], failure["event"], failure["status"]) == ("1", "failed", "failed")
    assert failure["bot"] == "Sales"
    assert failure["created_at"]
    assert details(status__exact="failed") == ["websocket closed"]
    assert details(event="connected") == ["paired as 5511911112222"]
    assert details(q="websocket") == ["websocket closed"]
    assert details(q="Support") == ["paired as 5511911112222"]

    change = page_of(admin_client.get(f"/admin/whatsapp/sessionevent/{event.pk}/change/"))
    assert "websocket closed" in change
    assert 'name="detail"' not in change and 'name="_save"' not in change
    assert admin_client.get("/admin/whatsapp/sessionevent/add/").status_code == 403


# --- API tokens --------------------------------------------------------------------


def test_it_shows_a_new_api_token_once_and_stores_only_its_hash(admin_client, alice):
    created = admin_client.post("/admin/bots/apitoken/add/", {"user": alice.pk, "name": "deploy script"})
    response = admin_client.get(created["Location"])

    page = page_of(response)
    secret = re.search(r"The new token is ([A-Za-z0-9_-]+) ", page).group(1)
    assert len(secret) >= 40
    assert page.count(secret) == 1
    token = ApiToken.objects.get()
    assert token.name == "deploy script"
    assert token.key_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in repr(list(ApiToken.objects.values()))
    assert "messages" not in created.cookies, "the secret never travels in a cookie"
    assert not any(secret in morsel.value for morsel in created.cookies.values())
    assert ApiToken.objects.user_for(secret) == alice
    assert Client().get("/api/bots", headers={"Authorization": f"Bearer {secret}"}).status_code == 200

    changelist = page_of(admin_client.get("/admin/bots/apitoken/"))
    change = page_of(admin_client.get(f"/admin/bots/apitoken/{token.pk}/change/"))
    assert secret not in changelist and secret not in change
    assert column(admin_client.get("/admin/bots/apitoken/"), "prefix") == [secret[:8]]
    assert token.key_hash not in change


def test_it_shows_tokens_without_letting_staff_edit_them(admin_client, alice, bob):
    alice_token, _ = ApiToken.issue(alice, name="laptop")
    ApiToken.issue(bob, name="ci")
    url = f"/admin/bots/apitoken/{alice_token.pk}/change/"

    rows = {row["name"]: row for row in result_rows(admin_client.get("/admin/bots/apitoken/"))}
    searched = column(admin_client.get("/admin/bots/apitoken/", {"q": "bob"}), "name")
    change = page_of(admin_client.get(url))
    post = admin_client.post(url, {"user": bob.pk, "name": "stolen"})

    assert set(rows) == {"laptop", "ci"}
    assert (rows["laptop"]["prefix"], rows["laptop"]["user"]) == (alice_token.prefix, "alice")
    assert rows["laptop"]["created_at"] and rows["laptop"]["last_used_at"] == "-"
    assert searched == ["ci"]
    assert "laptop" in change
    assert 'name="user"' not in change and 'name="name"' not in change
    assert post.status_code == 403
    alice_token.refresh_from_db()
    assert (alice_token.user, alice_token.name) == (alice, "laptop")


def test_it_revokes_a_token_deleted_in_the_admin(admin_client, alice):
    token, secret = ApiToken.issue(alice, name="laptop")

    response = admin_client.post(f"/admin/bots/apitoken/{token.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert ApiToken.objects.user_for(secret) is None
    assert Client().get("/api/bots", headers={"Authorization": f"Bearer {secret}"}).status_code == 401


# --- Who gets in ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/admin/", "/admin/bots/bot/", "/admin/bots/apitoken/add/"])
def test_it_sends_an_operator_to_the_admin_login(alice, path):
    client = Client()
    client.force_login(alice)

    response = client.get(path)

    assert response.status_code == 302
    assert response["Location"].startswith(f"/admin/login/?next={path}")


def test_it_shows_staff_every_model_on_the_admin_index(admin_client):
    page = page_of(admin_client.get("/admin/"))

    for path in (
        "/admin/bots/bot/",
        "/admin/bots/message/",
        "/admin/bots/apitoken/",
        "/admin/whatsapp/session/",
        "/admin/whatsapp/sessionevent/",
    ):
        assert f'href="{path}"' in page


# --- Bot actions and the session history on the bot's page -------------------------------------


def run_action(admin_client: Client, action: str, *bots: Bot):
    return admin_client.post(
        "/admin/bots/bot/", {"action": action, "_selected_action": [bot.pk for bot in bots]}, follow=True
    )


def test_it_connects_bots_from_the_admin(admin_client, staff, alice, bob):
    support = make_bot(alice, name="Support")
    sales = make_bot(bob, name="Sales")

    page = page_of(run_action(admin_client, "connect_whatsapp", support, sales))

    assert "Asked 2 bots to connect" in page
    for bot in (support, sales):
        session = Session.objects.get(bot=bot)
        assert (session.status, session.desired_connected) == (Status.CONNECTING, True)
    assert set(ConnectRequest.objects.values_list("user__username", flat=True)) == {"staff"}


def test_it_reports_rate_limited_connects_in_the_admin(admin_client, alice, settings):
    settings.WHATSAPP_CONNECT_RATE_BOT = (1, 60)
    bot = make_bot(alice, name="Support")
    run_action(admin_client, "connect_whatsapp", bot)
    Session.objects.filter(bot=bot).update(status=Status.QR_TIMEOUT)

    page = page_of(run_action(admin_client, "connect_whatsapp", bot))

    assert re.search(r"Too many connect requests; try again later for: Support \(\d+ s\)\.", unescape(page))
    assert "Asked 1 bot to connect" not in page
    assert Session.objects.get(bot=bot).status == Status.QR_TIMEOUT
    assert ConnectRequest.objects.count() == 1


def test_it_disconnects_and_logs_out_bots_from_the_admin(admin_client, alice):
    support = make_bot(alice, name="Support")
    sales = make_bot(alice, name="Sales")
    Session.objects.update(desired_connected=True, status=Status.CONNECTED)

    disconnected = page_of(run_action(admin_client, "disconnect_whatsapp", support))
    logged_out = page_of(run_action(admin_client, "logout_whatsapp", sales))

    assert "Asked 1 bot to disconnect." in disconnected
    assert "Asked 1 bot to log out." in logged_out
    support_session, sales_session = Session.objects.get(bot=support), Session.objects.get(bot=sales)
    assert (support_session.desired_connected, support_session.logout_requested) == (False, False)
    assert (sales_session.desired_connected, sales_session.logout_requested) == (False, True)


def test_it_shows_the_session_and_its_history_on_the_bots_page(admin_client, alice):
    bot = make_bot(alice, name="Support")
    set_session(bot, status=Status.CONNECTED, phone="5511911112222", last_error="")
    add_event(bot, 1, "connecting", Status.CONNECTING)
    add_event(bot, 2, "qr", Status.QR_REQUIRED, "first QR code")
    add_event(bot, 3, "connected", Status.CONNECTED, "paired as 5511911112222")

    page = page_of(admin_client.get(f"/admin/bots/bot/{bot.pk}/change/"))

    assert "WhatsApp session" in page and "5511911112222" in page
    assert page.index("paired as 5511911112222") < page.index("first QR code")
    assert 'name="session-0-status"' not in page and 'name="session-0-phone"' not in page
    assert 'value="connect_whatsapp"' not in page, "actions live on the list"
    # Saving the bot leaves the session alone; the form posts the read-only inline's management form as a browser would.
    inline = dict(re.findall(r'name="(session-(?:TOTAL|INITIAL|MIN_NUM|MAX_NUM)_FORMS)" value="(\d+)"', page))
    assert inline["session-TOTAL_FORMS"] == "1"
    response = admin_client.post(f"/admin/bots/bot/{bot.pk}/change/", {**bot_form(alice), **inline, "name": "Renamed"})
    assert response.status_code == 302
    assert Bot.objects.get(pk=bot.pk).name == "Renamed"
    assert Session.objects.get(bot=bot).status == Status.CONNECTED
