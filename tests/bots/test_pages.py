"""The operator's pages: log in, the bot list, the create-bot wizard, pairing, conversations, settings, languages."""

from __future__ import annotations

import datetime
import re

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.test import Client, override_settings
from django.utils import timezone

from bots.models import Bot, Message
from tests.helpers import make_bot, make_message, make_user
from whatsapp import state
from whatsapp.models import ConnectRequest, Session, SessionEvent, Status


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_it_shows_a_login_form(db):
    response = Client().get("/login/")

    assert response.status_code == 200
    page = response.content.decode()
    assert '<form method="post" action="/login/">' in page
    assert 'name="username"' in page
    assert 'name="password"' in page
    assert "csrfmiddlewaretoken" in page


def test_it_logs_in_with_username_and_password_and_lands_on_the_bot_list(alice, bob):
    make_bot(alice, name="Alice's helper")
    make_bot(bob, name="Bob's secret bot")
    client = Client(enforce_csrf_checks=True)
    login_page = client.get("/login/")
    csrf = login_page.cookies["csrftoken"].value

    response = client.post("/login/", {"username": "alice", "password": "password-alice", "csrfmiddlewaretoken": csrf})

    assert response.status_code == 302
    assert response["Location"] == "/"
    home = client.get("/")
    assert home.status_code == 200
    assert "Alice&#x27;s helper" in home.content.decode()
    assert "Bob&#x27;s secret bot" not in home.content.decode()


def test_it_refuses_a_wrong_password(alice):
    client = Client()

    response = client.post("/login/", {"username": "alice", "password": "wrong"})

    assert response.status_code == 200
    assert "didn't match" in response.content.decode()
    assert client.get("/").status_code == 302


def test_it_lists_only_the_users_own_live_bots(alice, bob):
    make_bot(alice, name="Support", whatsapp_provider="neonize")
    old = make_bot(alice, name="Old bot")
    Bot.objects.filter(pk=old.pk).update(deleted_at=timezone.now())
    make_bot(bob, name="Sales")

    response = logged_in(alice).get("/")

    page = response.content.decode()
    assert response.status_code == 200
    assert "Support" in page
    assert "WhatsApp (neonize)" in page
    assert "disconnected" in page
    assert "Old bot" not in page
    assert "Sales" not in page


def test_it_tells_a_user_without_bots_how_to_create_one(bob):
    response = logged_in(bob).get("/")

    assert "You have no bots yet" in response.content.decode()


def test_it_sends_an_anonymous_visitor_to_the_login_page(db):
    response = Client().get("/")

    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/"


def test_it_logs_out_by_post(alice):
    client = logged_in(alice)

    response = client.post("/logout/")

    assert response.status_code == 302
    assert response["Location"] == "/login/"
    assert client.get("/")["Location"] == "/login/?next=/"


def test_it_does_not_log_out_by_get(alice):
    client = logged_in(alice)

    response = client.get("/logout/")

    assert response.status_code == 405
    assert client.get("/").status_code == 200


def test_it_answers_health_checks_with_the_database_state(db):
    response = Client().get("/healthz")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["status"] == "ok" and body["checks"]["database"] == "ok"
    assert "no-cache" in response["Cache-Control"]


def test_it_serves_the_stylesheet_the_pages_link_to(db):
    page = Client().get("/login/").content.decode()
    href = re.search(r'<link rel="stylesheet" href="([^"]+)">', page).group(1)

    # WhiteNoise answers with a file response, read through streaming_content.
    response = Client().get(href)
    plain = Client().get("/static/css/app.css")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/css")
    assert b".topbar" in b"".join(response.streaming_content)
    assert plain.status_code == 200


# --- The operator's pages (bots/views.py) ---------------------------------------------

HTMX = {"HX-Request": "true"}
QR = "data:image/png;base64,iVBORw0KGgo="


def set_status(bot: Bot, event: str, status: str, **changes) -> Session:
    """A status change through the one write path, as the pool makes it."""
    return state.record(bot.pk, event, status, **changes)


def message(bot: Bot, text: str, **fields) -> Message:
    return make_message(bot, text, **{"chat": "5511955554444@s.whatsapp.net", **fields})


def wizard(client: Client, step: int, headers: dict | None = None, **fields):
    return client.post("/bots/new/", {"step": step, **fields}, headers=headers or {})


PERSONA = {"name": "Padaria", "system_prompt": "Você é a atendente da padaria."}
AI = {"model": "gemini-2.5-flash", "temperature": "0.4", "fallback_text": "Volto já.", "reply_in_groups": "on"}


def test_it_lists_bots_with_links_live_badges_and_a_way_to_create_one(alice):
    bot = make_bot(alice, name="Support")

    page = logged_in(alice).get("/").content.decode()

    assert f'href="/bots/{bot.pk}/"' in page
    assert 'href="/bots/new/"' in page
    assert f'id="status-{bot.pk}"' in page
    assert 'ws-connect="/ws/bots/live?lang=en"' in page
    assert 'data-live-poll="/bots/live"' in page
    assert "/static/vendor/htmx-2.0.11.min.js" in page and "/static/vendor/htmx-ext-ws-2.0.4.min.js" in page
    assert "unpkg.com" not in page and "cdn" not in page.lower()


def test_it_serves_the_vendored_htmx_and_its_websocket_extension(db):
    for path in ("/static/vendor/htmx-2.0.11.min.js", "/static/vendor/htmx-ext-ws-2.0.4.min.js", "/static/js/app.js"):
        response = Client().get(path)
        assert response.status_code == 200, path
        assert b"htmx" in b"".join(response.streaming_content)


def test_it_polls_the_list_of_the_users_own_bots(alice, bob):
    mine = make_bot(alice, name="Mine")
    theirs = make_bot(bob, name="Theirs")
    set_status(mine, "connecting", Status.CONNECTING)

    response = logged_in(alice).get("/bots/live", headers=HTMX)

    page = response.content.decode()
    assert response.status_code == 200
    assert '<div id="bot-list" hx-swap-oob="true">' in page
    assert f'<span id="status-{mine.pk}" class="badge status-connecting" data-seq="1">' in page and "Mine" in page
    assert str(theirs.pk) not in page and "Theirs" not in page
    empty = logged_in(make_user("carol")).get("/bots/live").content.decode()
    assert "You have no bots yet" in empty, "a user with no bots polls the empty list"


def test_it_walks_through_the_wizard_and_lands_on_the_pairing_panel(alice):
    client = logged_in(alice)

    first = client.get("/bots/new/")
    step2 = wizard(client, 0, HTMX, **PERSONA)
    step3 = wizard(client, 1, HTMX, **PERSONA, **AI)
    done = wizard(client, 2, HTMX, **PERSONA, **AI, whatsapp_provider="simulator")

    assert "Step 1 of 3:" in first.content.decode() and 'name="name"' in first.content.decode()
    page = step2.content.decode()
    assert step2.status_code == 200 and "<html" not in page, "htmx gets the wizard partial alone"
    assert "Step 2 of 3:" in page and 'value="gemini-2.5-flash"' in page
    assert '<input type="hidden" name="name" value="Padaria">' in page
    assert 'name="whatsapp_provider"' in step3.content.decode()
    bot = Bot.objects.get(owner=alice)
    assert done.status_code == 200 and done["HX-Redirect"] == f"/bots/{bot.pk}/"
    assert (bot.name, bot.system_prompt, bot.model, bot.temperature) == (
        "Padaria",
        "Você é a atendente da padaria.",
        "gemini-2.5-flash",
        0.4,
    )
    assert (bot.fallback_text, bot.reply_in_groups, bot.whatsapp_provider) == ("Volto já.", True, "simulator")
    session = Session.objects.get(pk=bot.pk)
    assert session.status == Status.CONNECTING and session.desired_connected, "straight to pairing"
    assert ConnectRequest.objects.filter(bot=bot, user=alice).count() == 1
    assert "was created" in client.get(f"/bots/{bot.pk}/").content.decode()


@pytest.mark.parametrize(
    ("step", "fields", "error"),
    [
        (0, {"name": "   "}, "This field is required."),
        (0, {"name": "x" * 81}, "Ensure this value has at most 80 characters"),
        (0, {"name": "Ok", "system_prompt": "x" * 8001}, "Ensure this value has at most 8000 characters"),
        (1, {**AI, "temperature": "2.5"}, "The temperature goes from 0 to 2."),
        (1, {**AI, "model": "Gemini Pro"}, "Use lower-case letters"),
        (1, {**AI, "fallback_text": "x" * 1001}, "Ensure this value has at most 1000 characters"),
        (2, {"whatsapp_provider": "telegram"}, "Select a valid choice."),
    ],
)
def test_it_refuses_in_the_wizard_what_the_api_refuses(alice, step, fields, error):
    response = wizard(logged_in(alice), step, HTMX, **{**PERSONA, **fields})

    assert response.status_code == 422
    assert error in response.content.decode()
    assert 'aria-invalid="true"' in response.content.decode()
    assert not Bot.objects.exists()


def test_it_checks_the_carried_steps_again_before_creating_the_bot(alice):
    response = wizard(logged_in(alice), 2, HTMX, name="x" * 81, **AI, whatsapp_provider="simulator")

    page = response.content.decode()
    assert response.status_code == 422
    assert "Step 1 of 3:" in page and "at most 80 characters" in page
    assert not Bot.objects.exists()


def test_it_goes_back_a_step_keeping_what_was_typed(alice):
    response = wizard(logged_in(alice), 1, HTMX, **PERSONA, temperature="9", back="1")

    page = response.content.decode()
    assert response.status_code == 200
    assert "Step 1 of 3:" in page and 'value="Padaria"' in page
    assert '<input type="hidden" name="temperature" value="9">' in page
    assert "errorlist" not in page


def test_it_offers_no_simulator_when_it_is_off(alice, settings):
    settings.WHATSAPP_SIMULATOR = False

    response = wizard(logged_in(alice), 1, **PERSONA, **AI)
    refused = wizard(logged_in(alice), 2, **PERSONA, **AI, whatsapp_provider="simulator")

    assert 'value="neonize"' in response.content.decode()
    assert 'value="simulator"' not in response.content.decode()
    assert refused.status_code == 422 and not Bot.objects.exists()


def test_it_creates_the_bot_even_when_connecting_is_rate_limited(alice, settings):
    settings.WHATSAPP_CONNECT_RATE_USER = (0, 600)
    client = logged_in(alice)

    response = wizard(client, 2, **PERSONA, **AI, whatsapp_provider="simulator")

    bot = Bot.objects.get(owner=alice)
    assert response.status_code == 302 and response["Location"] == f"/bots/{bot.pk}/"
    assert Session.objects.get(pk=bot.pk).last_error == "rate_limited"
    page = client.get(response["Location"]).content.decode()
    assert "asked to connect too often" in page
    assert "Link to WhatsApp" in page


@pytest.mark.parametrize("path", ["", "live", "settings/", "chats/5511955554444@s.whatsapp.net/"])
def test_it_hides_other_peoples_and_deleted_bots(alice, bob, path):
    theirs = make_bot(bob)
    gone = make_bot(alice)
    message(theirs, "oi")
    message(gone, "oi")
    Bot.objects.filter(pk=gone.pk).update(deleted_at=timezone.now())
    client = logged_in(alice)

    assert client.get(f"/bots/{theirs.pk}/{path}").status_code == 404
    assert client.get(f"/bots/{gone.pk}/{path}").status_code == 404
    assert Client().get(f"/bots/{theirs.pk}/{path}").status_code == 302


@pytest.mark.parametrize("action", ["connect", "disconnect", "logout", "pair-phone"])
def test_it_takes_actions_by_post_only_on_your_own_bots(alice, bob, action):
    mine, theirs = make_bot(alice), make_bot(bob)

    assert logged_in(alice).get(f"/bots/{mine.pk}/{action}").status_code == 405
    assert logged_in(alice).post(f"/bots/{theirs.pk}/{action}", {"phone": "5511987654321"}).status_code == 404
    assert Client().post(f"/bots/{mine.pk}/{action}").status_code == 302
    assert Session.objects.get(pk=theirs.pk).version == 0


def test_it_shows_the_live_qr_with_its_countdown_and_the_phone_pairing_form(alice):
    bot = make_bot(alice)
    expires = timezone.now() + datetime.timedelta(seconds=42)
    set_status(bot, "connecting", Status.CONNECTING)
    set_status(bot, "qr", Status.QR_REQUIRED, qr_code=QR, qr_expires_at=expires)

    page = logged_in(alice).get(f"/bots/{bot.pk}/").content.decode()

    assert f'<img id="qr" class="qr" src="{QR}"' in page
    assert 'alt="QR code to link this bot: scan it with WhatsApp on your phone"' in page
    assert re.search(r'data-countdown="4[12]"', page)
    assert 'data-seq="2"' in page
    assert f'action="/bots/{bot.pk}/pair-phone"' in page
    assert f'ws-connect="/ws/bots/{bot.pk}/live?lang=en"' in page
    assert f'data-live-poll="/bots/{bot.pk}/live"' in page
    assert 'id="live-cursor" hidden data-seq="2" data-after="0"' in page
    # The history, newest first, from the event log.
    assert page.index('id="event-2"') < page.index('id="event-1"')


@pytest.mark.parametrize(
    ("status", "changes", "shown", "actions"),
    [
        (Status.CONNECTED, {"phone": "5511987654321", "push_name": "Loja"}, "+5511987654321", ["disconnect", "logout"]),
        (Status.QR_TIMEOUT, {}, "The QR code expired before it was scanned.", ["connect"]),
        (Status.LOGGED_OUT, {}, "Logged out", ["connect"]),
        (Status.FAILED, {"last_error": "stream_replaced"}, "stream_replaced", ["connect"]),
        (Status.CONNECTING, {"last_error": "network dropped"}, "Retrying after: network dropped", ["disconnect"]),
        (Status.DISCONNECTED, {"last_error": "rate_limited"}, "It asked to connect too often.", ["connect"]),
    ],
)
def test_it_shows_what_can_be_done_in_each_connection_state(alice, status, changes, shown, actions):
    bot = make_bot(alice)
    set_status(bot, status, status, **changes)

    page = logged_in(alice).get(f"/bots/{bot.pk}/").content.decode()

    assert shown in page
    panel = page[page.index('id="pairing-panel"') :]
    assert sorted(re.findall(rf'hx-post="/bots/{bot.pk}/(connect|disconnect|logout)"', panel)) == sorted(actions)


def test_it_connects_from_the_panel_and_answers_htmx_with_the_panel_out_of_band(alice):
    bot = make_bot(alice)

    response = logged_in(alice).post(f"/bots/{bot.pk}/connect", headers=HTMX)

    page = response.content.decode()
    assert response.status_code == 200
    assert '<div id="pairing-panel" class="panel" tabindex="-1" data-seq="1" data-status="connecting"' in page
    assert f'<span id="status-{bot.pk}" class="badge status-connecting" data-seq="1" hx-swap-oob="true">' in page
    assert "Connecting to WhatsApp…" in page
    assert Session.objects.get(pk=bot.pk).desired_connected
    assert ConnectRequest.objects.filter(bot=bot).count() == 1


def test_it_connects_without_javascript_too(alice):
    bot = make_bot(alice)
    client = logged_in(alice)

    response = client.post(f"/bots/{bot.pk}/connect")

    assert response.status_code == 302 and response["Location"] == f"/bots/{bot.pk}/"
    assert "Connecting to WhatsApp…" in client.get(response["Location"]).content.decode()


def test_it_does_not_ask_again_while_a_qr_is_showing(alice):
    bot = make_bot(alice)
    set_status(bot, "qr", Status.QR_REQUIRED, qr_code=QR)

    response = logged_in(alice).post(f"/bots/{bot.pk}/connect", headers=HTMX)

    assert response.status_code == 200 and 'data-status="qr_required"' in response.content.decode()
    assert not ConnectRequest.objects.exists()


def test_it_says_clearly_when_connecting_is_rate_limited(alice, settings):
    settings.WHATSAPP_CONNECT_RATE_BOT = (1, 60)
    bot = make_bot(alice)
    client = logged_in(alice)
    client.post(f"/bots/{bot.pk}/connect", headers=HTMX)
    set_status(bot, "qr_timeout", Status.QR_TIMEOUT)

    response = client.post(f"/bots/{bot.pk}/connect", headers=HTMX)

    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 60
    assert re.search(
        r'<p class="error" role="alert">Too many connection attempts. Try again in \d+ seconds?.</p>',
        response.content.decode(),
    )
    assert Session.objects.get(pk=bot.pk).status == Status.QR_TIMEOUT


def test_it_pairs_by_phone_number(alice):
    bot = make_bot(alice)

    response = logged_in(alice).post(f"/bots/{bot.pk}/pair-phone", {"phone": "+55 11 98765-4321"}, headers=HTMX)
    wrong = logged_in(alice).post(f"/bots/{bot.pk}/pair-phone", {"phone": "+5511987654321"}, headers=HTMX)

    assert response.status_code == 422
    assert "Enter the number in digits with the country code" in response.content.decode()
    assert wrong.status_code == 200 and "Asking WhatsApp for a pairing code…" in wrong.content.decode()
    session = Session.objects.get(pk=bot.pk)
    assert (session.status, session.pairing_phone) == (Status.CONNECTING, "5511987654321")


def test_it_refuses_to_pair_a_connected_bot_again(alice):
    bot = make_bot(alice)
    set_status(bot, "connected", Status.CONNECTED)

    response = logged_in(alice).post(f"/bots/{bot.pk}/pair-phone", {"phone": "5511987654321"}, headers=HTMX)

    assert response.status_code == 409
    assert "Log it out first" in response.content.decode()
    assert not ConnectRequest.objects.exists()


def test_it_disconnects_and_logs_out_through_the_pool(alice):
    bot = make_bot(alice)
    set_status(bot, "connected", Status.CONNECTED, desired_connected=True)
    client = logged_in(alice)

    disconnected = client.post(f"/bots/{bot.pk}/disconnect", headers=HTMX)
    assert "The phone stays linked." in disconnected.content.decode()
    assert not Session.objects.get(pk=bot.pk).desired_connected

    logged_out = client.post(f"/bots/{bot.pk}/logout", headers=HTMX)
    assert "The device will be unlinked from the phone." in logged_out.content.decode()
    assert Session.objects.get(pk=bot.pk).logout_requested


def test_it_polls_what_changed_since_the_page_was_rendered(alice):
    bot = make_bot(alice)
    first = message(bot, "Oi", push_name="Maria", created_at=timezone.now() - datetime.timedelta(minutes=1))
    client = logged_in(alice)

    unchanged = client.get(f"/bots/{bot.pk}/live", {"seq": 0, "after": first.pk}, headers=HTMX)
    set_status(bot, "connecting", Status.CONNECTING)
    set_status(bot, "qr", Status.QR_REQUIRED, qr_code=QR)
    second = message(bot, "Tudo bem?", push_name="Maria")
    changed = client.get(f"/bots/{bot.pk}/live", {"seq": 0, "after": first.pk}, headers=HTMX)

    assert unchanged.status_code == 204
    page = changed.content.decode()
    assert 'id="pairing-panel"' in page and 'data-seq="2"' in page and QR in page
    assert '<ol hx-swap-oob="afterbegin:#history">' in page
    assert page.index('id="event-2"') < page.index('id="event-1"')
    assert '<ul id="chat-list" class="chats" hx-swap-oob="true">' in page and "Tudo bem?" in page
    assert f'<div id="live-cursor" hidden data-seq="2" data-after="{second.pk}" hx-swap-oob="true">' in page
    assert 'id="connection-announce" hx-swap-oob="innerHTML">WhatsApp: waiting for QR scan' in page


def test_it_polls_a_conversation_for_new_messages_and_status_changes(alice):
    bot = make_bot(alice)
    chat = "5511955554444@s.whatsapp.net"
    inbound = message(bot, "Oi", created_at=timezone.now() - datetime.timedelta(minutes=1))
    message(bot, "Elsewhere", chat="5511900000000@s.whatsapp.net")
    client = logged_in(alice)
    query = {"chat": chat, "seq": 0, "after": inbound.pk, "pending": f"{inbound.pk}:received"}

    reply = message(bot, "Olá!", direction="out", status="queued", in_reply_to=inbound)
    Message.objects.filter(pk=inbound.pk).update(status="replied")
    page = client.get(f"/bots/{bot.pk}/live", query, headers=HTMX).content.decode()

    assert '<ol hx-swap-oob="beforeend:#messages">' in page
    assert f'<li id="msg-{reply.pk}" class="msg msg-out" data-status="queued" data-pending>' in page
    assert f'<li id="msg-{inbound.pk}" class="msg msg-in" data-status="replied" hx-swap-oob="true">' in page
    assert "Elsewhere" not in page and "pairing-panel" not in page


def test_it_sends_recent_messages_again_in_case_one_committed_late(alice):
    """Ids are taken at insert: a message with a smaller id than one already shown may commit after it."""
    bot = make_bot(alice)
    late = message(bot, "Committed late")
    shown = message(bot, "Shown first")

    page = (
        logged_in(alice)
        .get(f"/bots/{bot.pk}/live", {"chat": late.chat, "seq": 0, "after": shown.pk}, headers=HTMX)
        .content.decode()
    )

    assert f'id="msg-{late.pk}"' in page and "Committed late" in page


def test_it_shows_a_conversation_and_queues_what_the_operator_sends(alice):
    bot = make_bot(alice)
    chat = "5511955554444@s.whatsapp.net"
    message(bot, "Oi! Vocês abrem domingo?", push_name="Maria")
    client = logged_in(alice)

    page = client.get(f"/bots/{bot.pk}/chats/{chat}/").content.decode()
    sent = client.post(f"/bots/{bot.pk}/chats/{chat}/send", {"text": "Abrimos sim!"}, headers=HTMX)
    empty = client.post(f"/bots/{bot.pk}/chats/{chat}/send", {"text": ""}, headers=HTMX)

    assert "<h1>Maria</h1>" in page and "+5511955554444" in page
    assert 'role="log"' in page and "Oi! Vocês abrem domingo?" in page
    assert f'ws-connect="/ws/bots/{bot.pk}/live?lang=en&amp;chat=5511955554444%40s.whatsapp.net"' in page
    queued = Message.objects.get(bot=bot, direction="out")
    assert (queued.chat, queued.text, queued.status, queued.in_reply_to) == (chat, "Abrimos sim!", "queued", None)
    # The form comes back empty and focused; the message reaches the page live, like every other.
    assert sent.status_code == 200 and sent["HX-Trigger"] == '{"live:changed": {}}'
    assert 'id="send-form"' in sent.content.decode() and "autofocus" in sent.content.decode()
    assert "Abrimos sim!" not in sent.content.decode()
    assert empty.status_code == 422 and "This field is required." in empty.content.decode()
    assert client.get(f"/bots/{bot.pk}/chats/5511900000000@s.whatsapp.net/").status_code == 404


def test_it_starts_a_conversation_with_a_number(alice):
    bot = make_bot(alice)
    client = logged_in(alice)

    response = client.post(f"/bots/{bot.pk}/chats/new", {"to": "+5511955554444", "text": "Bom dia!"}, headers=HTMX)
    invalid = client.post(f"/bots/{bot.pk}/chats/new", {"to": "maria", "text": "Bom dia!"}, headers=HTMX)

    assert response["HX-Redirect"] == f"/bots/{bot.pk}/chats/5511955554444@s.whatsapp.net/"
    assert Message.objects.get(bot=bot).status == "queued"
    assert invalid.status_code == 422 and "with the country code" in invalid.content.decode()


def test_it_edits_the_bots_settings_with_the_apis_rules(alice):
    bot = make_bot(alice, name="Old name")
    client = logged_in(alice)
    fields = {
        "name": "New name",
        "system_prompt": "",
        "model": "gemini-2.5-pro",
        "temperature": "1",
        "fallback_text": "Já volto.",
    }

    form = client.get(f"/bots/{bot.pk}/settings/").content.decode()
    refused = client.post(f"/bots/{bot.pk}/settings/", {**fields, "model": "GPT 4"})
    saved = client.post(f"/bots/{bot.pk}/settings/", fields)

    assert 'value="Old name"' in form
    assert refused.status_code == 422 and "Use lower-case letters" in refused.content.decode()
    assert saved.status_code == 302
    bot.refresh_from_db()
    assert (bot.name, bot.model, bot.temperature, bot.is_active) == ("New name", "gemini-2.5-pro", 1.0, False)


def test_it_speaks_brazilian_portuguese_to_a_browser_that_asks_for_it(alice):
    bot = make_bot(alice, name="Padaria")
    set_status(bot, "qr_timeout", Status.QR_TIMEOUT)
    client = logged_in(alice)

    home = client.get("/", headers={"Accept-Language": "pt-BR,pt;q=0.9"}).content.decode()
    panel = client.get(f"/bots/{bot.pk}/", headers={"Accept-Language": "pt-BR"}).content.decode()
    wizard_page = client.get("/bots/new/", headers={"Accept-Language": "pt-BR"}).content.decode()

    assert '<html lang="pt-br">' in home
    assert "Seus bots" in home and "QR expirado" in home and "Novo bot" in home
    assert 'ws-connect="/ws/bots/live?lang=pt-br"' in home
    assert "O QR code expirou antes de ser lido." in panel and "Mostrar um novo QR code" in panel
    assert "Passo 1 de 3:" in wizard_page and "Nome e persona" in wizard_page and "Próximo" in wizard_page


def test_it_switches_language_on_request(alice):
    client = logged_in(alice)

    response = client.post("/i18n/setlang/", {"language": "pt-br", "next": "/"})

    assert response.status_code == 302 and response["Location"] == "/"
    assert client.cookies[django_settings.LANGUAGE_COOKIE_NAME].value == "pt-br"
    assert "Seus bots" in client.get("/", headers={"Accept-Language": "en"}).content.decode()


@override_settings(LANGUAGE_CODE="en")
def test_it_renders_live_partials_in_the_pages_language(alice):
    bot = make_bot(alice)
    set_status(bot, "qr_timeout", Status.QR_TIMEOUT)

    page = logged_in(alice).get(f"/bots/{bot.pk}/live", {"seq": 0}, headers={"Accept-Language": "pt-BR"})

    assert "Mostrar um novo QR code" in page.content.decode()
    assert SessionEvent.objects.count() == 1


# --- Content-Security-Policy --------------------------------------------------------------------

STRICT_POLICY = {
    "default-src": "'self'",
    "img-src": "'self' data:",
    "style-src": "'self'",
    "script-src": "'self'",
    "connect-src": "'self'",
    "frame-ancestors": "'none'",
    "object-src": "'none'",
    "base-uri": "'self'",
}


def policy_of(response) -> dict[str, str]:
    header = response["Content-Security-Policy"]
    return dict(part.strip().split(" ", 1) for part in header.split(";"))


def test_every_page_has_a_strict_content_security_policy(alice, staff):
    bot = make_bot(alice)
    make_message(bot, "Oi!")
    client = logged_in(alice)
    pages = [
        "/",
        f"/bots/{bot.pk}/",
        f"/bots/{bot.pk}/settings/",
        "/bots/new/",
        f"/bots/{bot.pk}/chats/5511999990001@s.whatsapp.net/",
    ]
    responses = [client.get(path) for path in pages]
    admin = logged_in(staff)
    responses += [Client().get("/login/"), Client().get("/admin/login/")]
    responses += [admin.get(path) for path in ("/admin/", "/admin/bots/bot/", f"/admin/bots/bot/{bot.pk}/change/")]
    responses.append(client.get("/no-such-page/"))

    for response in responses:
        assert response.status_code in (200, 404), response.status_code
        assert policy_of(response) == STRICT_POLICY
        body = response.content.decode()
        # Nothing the policy would refuse: no inline script or style, no event handler attributes.
        assert not re.search(r"<script(?![^>]*\b(src|type=\"application/json\")=)", body), "an inline script"
        assert not re.search(r"<style|\sstyle=\"|\son[a-z]+=\"", body), "an inline style or handler"


def test_the_api_docs_allow_only_swagger_uis_own_styles_and_say_where_they_are(alice):
    response = logged_in(alice).get("/api/docs")

    page = response.content.decode()
    assert response.status_code == 200
    assert policy_of(response) == {**STRICT_POLICY, "style-src": "'self' 'unsafe-inline'"}
    assert '<html lang="en">' in page and 'name="viewport"' in page
    assert '<a href="/">' in page, "a way back to the bots"
    assert "cdn" not in page.lower(), "Swagger UI is served from the vendored copy"


@pytest.mark.parametrize(
    "path",
    ["/bots/{bot}/chats/%00/", "/bots/{bot}/live?chat=%00", "/bots/{bot}/?x=%00", "/?%00=1", "/login/?next=%00"],
)
def test_a_nul_character_in_an_address_is_a_bad_request_not_a_server_error(alice, path):
    """PostgreSQL cannot store a NUL: looked up, it was a 500 page (psycopg.DataError)."""
    bot = make_bot(alice)

    response = logged_in(alice).get(path.format(bot=bot.pk))

    assert response.status_code == 400
    assert "Bad request" in response.content.decode()


def test_a_nul_character_in_an_api_address_is_a_bad_request_in_the_error_shape(alice_api):
    response = alice_api.get("/api/bots?%00=1")

    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_request"
