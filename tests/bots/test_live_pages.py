"""The live sockets in-process: the pages' (bots/live.py) and the JSON events' (bots/consumers.py).

Driven through the real ASGI stack (handshake checks, cookies, session or token auth,
routing) with WebsocketCommunicator, on the configured channel layer (Redis in CI,
the in-memory one without it). The sockets read the database from other threads,
so the tests commit what they write (transactional database), and write it through
the platform's own write paths, which broadcast after commit.
"""

from __future__ import annotations

import gc

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connections
from django.test import Client

from bots import control, follower, replies, sockets
from bots.inbox import store_inbound
from bots.models import ApiToken, Bot
from tests.helpers import make_bot
from whatsapp import state
from whatsapp.models import Status
from whatsapp.providers.base import Inbound

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def close_connections_of_ended_threads():
    """The sockets' database work ran on the test's loop's threads, gone with it: their connections
    are unreachable, and must be closed (collected) or PostgreSQL cannot drop the test database."""
    yield
    gc.collect()
    await sync_to_async(connections.close_all)()


CHAT = "5511955554444@s.whatsapp.net"


def cookies_of(client: Client) -> str:
    client.get("/" if "_auth_user_id" in client.session else "/login/")  # a page: it sets the CSRF cookie
    return "; ".join(f"{name}={morsel.value}" for name, morsel in client.cookies.items())


def logged_in(user) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def communicator(path: str, *, cookie: str = "", origin: bytes = b"http://localhost", headers=()):
    from botplatform.asgi import application

    sent = [(b"origin", origin), (b"host", b"localhost"), (b"cookie", cookie.encode()), *headers]
    return WebsocketCommunicator(application, path, headers=sent)


async def connect(path: str, user=None, *, client: Client | None = None, **kwargs) -> WebsocketCommunicator:
    cookie = await sync_to_async(lambda: cookies_of(client or logged_in(user)))()
    ws = communicator(path, cookie=cookie, **kwargs)
    connected, _ = await ws.connect()
    assert connected
    return ws


async def closed_with(ws: WebsocketCommunicator) -> int:
    message = await ws.receive_output(timeout=5)
    assert message["type"] == "websocket.close", message
    return message["code"]


async def next_html(ws: WebsocketCommunicator, timeout: float = 5) -> str:
    return await ws.receive_from(timeout=timeout)


record = sync_to_async(state.record)
orm = sync_to_async


def receive(bot: Bot, text: str, wa_id: str) -> int:
    """A customer's message, stored as the shard stores it."""
    [message] = store_inbound([(bot.pk, Inbound(wa_id=wa_id, chat=CHAT, sender=CHAT, text=text))])
    return message.pk


# --- who may listen ------------------------------------------------------------------------


async def test_it_refuses_anonymous_visitors_and_other_peoples_bots(alice, bob):
    bot = await orm(make_bot)(bob)

    anonymous = await connect(f"/ws/bots/{bot.pk}/live")
    not_mine = await connect(f"/ws/bots/{bot.pk}/live", alice)
    missing = await connect("/ws/bots/00000000-0000-0000-0000-000000000000/live", alice)

    assert await closed_with(anonymous) == 4401
    assert await closed_with(not_mine) == 4404
    assert await closed_with(missing) == 4404
    assert await closed_with(await connect("/ws/bots/live")) == 4401


@pytest.mark.parametrize(
    "path",
    ["/ws/nowhere", "/ws/bots/not-a-uuid/live", "/api/bots/123/connection-events", "/ws/bots/live/extra"],
)
async def test_it_answers_404_at_the_handshake_for_a_path_with_no_route(path):
    ws = communicator(path)
    ws.scope["extensions"] = {"websocket.http.response": {}}  # what daphne says it offers (botplatform/handshake.py)
    await ws.send_input({"type": "websocket.connect"})

    start = await ws.receive_output(timeout=5)
    body = await ws.receive_output(timeout=5)
    assert (start["type"], start["status"]) == ("websocket.http.response.start", 404)
    assert body["type"] == "websocket.http.response.body" and body["body"].startswith(b"404")


@pytest.mark.parametrize(
    "origin",
    [b"http://localhost:1", b"https://localhost", b"http://evil.example.com", b"null", b"localhost"],
)
async def test_it_refuses_an_origin_that_is_not_the_pages_own(alice, origin):
    bot = await orm(make_bot)(alice)
    cookie = await orm(lambda: cookies_of(logged_in(alice)))()
    ws = communicator(f"/ws/bots/{bot.pk}/live", cookie=cookie, origin=origin)

    connected, _ = await ws.connect()

    assert not connected, "refused at the handshake (403), before any consumer"


async def test_it_takes_an_origin_from_the_trusted_list(alice, settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://bots.example.com"]
    bot = await orm(make_bot)(alice)

    ws = await connect(f"/ws/bots/{bot.pk}/live", alice, origin=b"https://bots.example.com")

    assert 'id="pairing-panel"' in await next_html(ws)
    await ws.disconnect()


async def test_it_closes_the_sockets_over_the_per_user_cap(alice, bob, settings):
    settings.WEBSOCKETS_PER_USER = 2
    bot = await orm(make_bot)(alice)
    theirs = await orm(make_bot)(bob)
    first = await connect(f"/ws/bots/{bot.pk}/live", alice)
    second = await connect("/ws/bots/live", alice)
    await next_html(first), await next_html(second)

    third = await connect(f"/ws/bots/{bot.pk}/live", alice)
    someone_else = await connect(f"/ws/bots/{theirs.pk}/live", bob)

    assert await closed_with(third) == 4429
    assert 'id="pairing-panel"' in await next_html(someone_else), "one user's sockets never use up another's"
    await first.disconnect()
    again = await connect(f"/ws/bots/{bot.pk}/live", alice)
    assert 'id="pairing-panel"' in await next_html(again), "a closed socket frees its place"
    for ws in (second, someone_else, again):
        await ws.disconnect()


async def test_a_socket_killed_by_the_server_leaves_nothing_behind(alice):
    """daphne cancels an instance that outlives its connection: its socket count and groups go with it."""
    bot = await orm(make_bot)(alice)
    ws = await connect(f"/ws/bots/{bot.pk}/live", alice)
    await next_html(ws)
    assert sockets.open_sockets[alice.pk] == 1

    ws.future.cancel()
    with pytest.raises(BaseException):  # noqa: B017 (the cancellation, whatever form it takes)
        await ws.future

    assert sockets.open_sockets[alice.pk] == 0
    # Nothing hears the bot's group now: a broadcast reaches no one and raises nothing.
    await record(bot.pk, "connecting", Status.CONNECTING)


# --- what a bot's page hears ------------------------------------------------------------------


async def test_it_sends_the_panel_and_history_the_page_missed_then_each_change(alice):
    bot = await orm(make_bot)(alice)
    await record(bot.pk, "connecting", Status.CONNECTING)

    ws = await connect(f"/ws/bots/{bot.pk}/live?seq=0&after=0&lang=en", alice)
    missed = await next_html(ws)
    await record(bot.pk, "qr", Status.QR_REQUIRED, qr_code="data:image/png;base64,AAAA")
    qr = await next_html(ws)

    assert 'id="pairing-panel"' in missed and 'data-seq="1"' in missed and "Connecting to WhatsApp…" in missed
    assert '<li id="event-1" class="event">' in missed
    assert 'hx-swap-oob="true"' in missed and '<div id="live-cursor" hidden data-seq="1"' in missed
    assert 'data-seq="2"' in qr and 'src="data:image/png;base64,AAAA"' in qr
    assert '<li id="event-2" class="event">' in qr and 'id="event-1"' not in qr, "only what is new"
    # The forms in the partials post with the page's CSRF cookie.
    assert 'name="csrfmiddlewaretoken" value=""' not in qr
    assert await ws.receive_nothing(timeout=0.3)
    await ws.disconnect()


async def test_it_sends_nothing_while_the_page_is_current(alice):
    bot = await orm(make_bot)(alice)
    session = await record(bot.pk, "connecting", Status.CONNECTING)

    ws = await connect(f"/ws/bots/{bot.pk}/live?seq={session.version}&after=0", alice)

    assert await ws.receive_nothing(timeout=0.4)
    await ws.disconnect()


async def test_it_shows_new_conversations_and_grows_an_open_one(alice):
    bot = await orm(make_bot)(alice)
    inbound = await orm(receive)(bot, "Oi!", "3EB0A1")

    page = await connect(f"/ws/bots/{bot.pk}/live?seq=0&after=0", alice)
    conversation = await connect(
        f"/ws/bots/{bot.pk}/live?seq=0&after={inbound}&chat={CHAT}&pending={inbound}:received", alice
    )
    chats = await next_html(page)
    assert '<ul id="chat-list" class="chats" hx-swap-oob="true">' in chats and "Oi!" in chats
    await next_html(conversation)  # recent messages once more, in case one committed late (bots/live.py)

    # The reply pipeline's steps, which broadcast after their commits.
    reply = await orm(replies.reply)(inbound, replies.ACTIVE, "Olá!", None, bot_id=bot.pk, chat=CHAT, sender="")
    grown = await next_html(conversation)

    assert '<ol hx-swap-oob="beforeend:#messages">' in grown
    assert f'<li id="msg-{reply.id}" class="msg msg-out" data-status="queued" data-pending>' in grown
    assert f'<li id="msg-{inbound}" class="msg msg-in" data-status="replied" hx-swap-oob="true">' in grown
    assert await orm(replies.claim)(reply.id, None)
    await orm(replies.mark_sent)(reply.id, "3EB0B2")
    sent = await next_html(conversation)
    while 'data-status="sent"' not in sent:  # the claim's `sending` may come on its own first
        sent = await next_html(conversation)
    assert f'<li id="msg-{reply.id}" class="msg msg-out" data-status="sent" hx-swap-oob="true">' in sent
    assert "data-pending" not in sent
    await page.disconnect()
    await conversation.disconnect()


async def test_it_speaks_the_pages_language(alice):
    bot = await orm(make_bot)(alice)
    await record(bot.pk, "qr_timeout", Status.QR_TIMEOUT)

    ws = await connect(f"/ws/bots/{bot.pk}/live?seq=0&lang=pt-br", alice)

    html = await next_html(ws)
    assert "O QR code expirou antes de ser lido." in html and "QR expirado" in html
    await ws.disconnect()


# --- the bot list -------------------------------------------------------------------------------


async def test_it_keeps_the_bot_list_badges_current(alice, bob):
    mine = await orm(make_bot)(alice, name="Mine")
    theirs = await orm(make_bot)(bob, name="Theirs")

    ws = await connect("/ws/bots/live", alice)
    everything = await next_html(ws)
    await record(theirs.pk, "connecting", Status.CONNECTING)
    await record(mine.pk, "connecting", Status.CONNECTING)
    changed = await next_html(ws)

    assert f'<span id="status-{mine.pk}" class="badge status-disconnected" data-seq="0"' in everything
    assert str(theirs.pk) not in everything + changed
    assert f'<span id="status-{mine.pk}" class="badge status-connecting" data-seq="1" hx-swap-oob="true">' in changed
    await ws.disconnect()


async def test_the_bot_list_follows_bots_created_renamed_and_given_away(alice, bob):
    ws = await connect("/ws/bots/live", alice)
    assert "You have no bots yet" in await next_html(ws)

    created = await orm(make_bot)(alice, name="Padaria")
    rows = await next_html(ws)
    assert '<div id="bot-list" hx-swap-oob="true">' in rows and "Padaria" in rows and f"bot-{created.pk}" in rows
    await record(created.pk, "connecting", Status.CONNECTING)
    assert 'status-connecting" data-seq="1" hx-swap-oob="true"' in await next_html(ws), "its badge moves too"

    created.name = "Padaria Central"
    await orm(created.save)()
    assert "Padaria Central" in await next_html(ws)

    created.owner = bob
    await orm(created.save)()
    html = await next_html(ws)
    while "You have no bots yet" not in html:
        html = await next_html(ws)
    await record(created.pk, "connected", Status.CONNECTED)
    assert await ws.receive_nothing(timeout=0.3), "a bot given away is not heard anymore"
    await ws.disconnect()


# --- rights lost ------------------------------------------------------------------------------


async def test_it_closes_when_the_bot_is_deleted_and_sends_nothing_after(alice):
    bot = await orm(make_bot)(alice)
    ws = await connect(f"/ws/bots/{bot.pk}/live", alice)
    await next_html(ws)

    await orm(control.delete_bot)(bot)
    await record(bot.pk, "connecting", Status.CONNECTING)

    assert await closed_with(ws) == 4404
    assert await ws.receive_nothing(timeout=0.3)


async def test_it_closes_when_the_bot_is_given_to_someone_else(alice, bob):
    bot = await orm(make_bot)(alice)
    ws = await connect(f"/ws/bots/{bot.pk}/live", alice)
    await next_html(ws)

    bot.owner = bob
    await orm(bot.save)()
    await record(bot.pk, "connecting", Status.CONNECTING)

    assert await closed_with(ws) == 4404
    assert await ws.receive_nothing(timeout=0.3)


async def test_it_closes_the_sockets_of_a_session_that_logs_out(alice):
    bot = await orm(make_bot)(alice)
    leaving, staying = await orm(logged_in)(alice), await orm(logged_in)(alice)
    page = await connect(f"/ws/bots/{bot.pk}/live", client=leaving)
    other_browser = await connect(f"/ws/bots/{bot.pk}/live", client=staying)
    await next_html(page), await next_html(other_browser)

    assert (await orm(leaving.post)("/logout/")).status_code == 302
    await record(bot.pk, "connecting", Status.CONNECTING)

    assert await closed_with(page) == 4401
    assert await page.receive_nothing(timeout=0.3)
    assert "status-connecting" in await next_html(other_browser), "another login of the same user stays"
    await other_browser.disconnect()


async def test_it_closes_every_socket_of_a_deactivated_user(alice, staff):
    bot = await orm(make_bot)(alice)
    ws = await connect(f"/ws/bots/{bot.pk}/live", alice)
    await next_html(ws)

    def deactivate():
        admin = logged_in(staff)
        user = User.objects.get(pk=alice.pk)
        data = {
            "username": user.username,
            "is_active": "",
            "date_joined_0": "2026-01-01",
            "date_joined_1": "00:00:00",
            "initial-date_joined_0": "2026-01-01",
            "initial-date_joined_1": "00:00:00",
        }
        return admin.post(f"/admin/auth/user/{user.pk}/change/", data)

    assert (await orm(deactivate)()).status_code == 302
    assert await closed_with(ws) == 4401


# --- the JSON connection events ------------------------------------------------------------------


async def events_socket(bot: Bot, secret: str) -> WebsocketCommunicator:
    ws = communicator(
        f"/api/bots/{bot.pk}/connection-events", headers=[(b"authorization", f"Bearer {secret}".encode())]
    )
    connected, _ = await ws.connect()
    assert connected
    return ws


async def test_the_json_events_send_each_frame_with_the_qr_image_then_close_on_revocation(alice):
    bot = await orm(make_bot)(alice)
    token, secret = await orm(ApiToken.issue)(alice)
    ws = await events_socket(bot, secret)
    first = await ws.receive_json_from(timeout=5)

    await orm(state.record_qr)(bot.pk, "2@ref,key,key,key", expires_at=None, pairing_code="")
    qr = await ws.receive_json_from(timeout=5)

    assert (first["event"], first["seq"]) == ("status", 0)
    assert qr["event"] == "qr" and qr["qrCode"].startswith("data:image/png;base64,")
    await orm(token.revoke)()
    await record(bot.pk, "connecting", Status.CONNECTING)
    assert await closed_with(ws) == 4401
    assert await ws.receive_nothing(timeout=0.3), "no frame after the revocation"


async def test_the_revoke_api_token_command_closes_its_sockets(alice):
    bot = await orm(make_bot)(alice)
    token, secret = await orm(ApiToken.issue)(alice)
    _, kept_secret = await orm(ApiToken.issue)(alice)
    revoked, other = await events_socket(bot, secret), await events_socket(bot, kept_secret)
    await revoked.receive_json_from(timeout=5), await other.receive_json_from(timeout=5)

    await orm(call_command)("revoke_api_token", token.prefix)

    assert await closed_with(revoked) == 4401
    await record(bot.pk, "connecting", Status.CONNECTING)
    assert (await other.receive_json_from(timeout=5))["event"] == "connecting", "the other token's socket stays"
    await other.disconnect()


# --- without Redis: the follower --------------------------------------------------------------------


@pytest.fixture
def embedded(settings):
    """The embedded default: no Redis, the in-memory layer, what other processes write found by the follower."""
    settings.REDIS_URL = None
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


async def test_without_redis_it_hears_what_a_shard_wrote_through_the_follower(alice, embedded, monkeypatch):
    monkeypatch.setattr(follower, "FOLLOW_SECONDS", 0.05)
    monkeypatch.setattr(follower, "TOKENS_SECONDS", 0.2)
    bot = await orm(make_bot)(alice)
    page = await connect(f"/ws/bots/{bot.pk}/live", alice)
    token, secret = await orm(ApiToken.issue)(alice)
    events = await events_socket(bot, secret)
    await next_html(page), await events.receive_json_from(timeout=5)

    def as_a_shard_would(fn, *args, **kwargs):
        # Another process: its broadcasts never reach this one.
        state.publish_from_this_thread(lambda *_: None)
        try:
            return fn(*args, **kwargs)
        finally:
            state.publish_from_this_thread(None)

    await orm(as_a_shard_would)(state.record_qr, bot.pk, "2@ref,key,key,key", expires_at=None, pairing_code="")
    assert 'id="qr"' in await next_html(page)
    frame = await events.receive_json_from(timeout=5)
    assert frame["event"] == "qr" and frame["qrCode"].startswith("data:image/png"), "the image, which the log lacks"

    await orm(as_a_shard_would)(receive, bot, "Oi!", "3EB0C3")
    assert "Oi!" in await next_html(page)

    await orm(as_a_shard_would)(ApiToken.objects.filter(pk=token.pk).delete)  # as revoke_api_token elsewhere
    assert await closed_with(events) == 4401
    await page.disconnect()


async def test_deleting_a_token_in_the_admin_closes_its_sockets(alice, staff):
    bot = await orm(make_bot)(alice)
    token, secret = await orm(ApiToken.issue)(alice)
    ws = await events_socket(bot, secret)
    await ws.receive_json_from(timeout=5)

    def delete_in_the_admin():
        return logged_in(staff).post(f"/admin/bots/apitoken/{token.pk}/delete/", {"post": "yes"})

    assert (await orm(delete_in_the_admin)()).status_code == 302
    assert not await orm(ApiToken.objects.filter(pk=token.pk).exists)()
    assert await closed_with(ws) == 4401


async def test_a_nul_character_in_a_socket_address_is_refused_at_the_handshake(alice):
    bot = await orm(make_bot)(alice)
    ws = communicator(f"/ws/bots/{bot.pk}/live?chat=%00")
    ws.scope["extensions"] = {"websocket.http.response": {}}
    await ws.send_input({"type": "websocket.connect"})

    start = await ws.receive_output(timeout=5)
    assert (start["type"], start["status"]) == ("websocket.http.response.start", 400)
