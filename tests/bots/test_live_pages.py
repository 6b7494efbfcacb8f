"""The page consumers (bots/consumers.py): the same partials as the first render, out of band, over a WebSocket.

Driven through the real ASGI stack (origin check, cookies, session auth, routing) with
WebsocketCommunicator; the consumer reads the database from its own threads, so the
tests commit what they write (transactional database).
"""

from __future__ import annotations

import asyncio
import datetime

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.db import transaction
from django.test import Client
from django.utils import timezone

from bots import consumers
from bots.models import Bot, Message
from tests.conftest import make_bot
from whatsapp import state
from whatsapp.models import Status

pytestmark = pytest.mark.django_db(transaction=True)


def cookies_of(user) -> str:
    client = Client()
    if user is not None:
        client.force_login(user)
    client.get("/" if user is not None else "/login/")  # a page: it sets the CSRF cookie
    return "; ".join(f"{name}={morsel.value}" for name, morsel in client.cookies.items())


async def connect(path: str, user=None) -> WebsocketCommunicator:
    from botplatform.asgi import application

    cookie = await sync_to_async(cookies_of)(user)
    communicator = WebsocketCommunicator(
        application,
        path,
        headers=[(b"origin", b"http://localhost"), (b"host", b"localhost"), (b"cookie", cookie.encode())],
    )
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def closed_with(communicator: WebsocketCommunicator) -> int:
    message = await communicator.receive_output(timeout=5)
    assert message["type"] == "websocket.close", message
    return message["code"]


async def next_html(communicator: WebsocketCommunicator, timeout: float = 5) -> str:
    return await communicator.receive_from(timeout=timeout)


record = sync_to_async(state.record)


@pytest.fixture
def fast(monkeypatch):
    monkeypatch.setattr(consumers, "POLL_SECONDS", 0.05)


async def test_it_refuses_anonymous_visitors_and_other_peoples_bots(alice, bob):
    bot = await sync_to_async(make_bot)(bob)

    anonymous = await connect(f"/ws/bots/{bot.pk}/live")
    not_mine = await connect(f"/ws/bots/{bot.pk}/live", alice)
    missing = await connect("/ws/bots/00000000-0000-0000-0000-000000000000/live", alice)

    assert await closed_with(anonymous) == 4401
    assert await closed_with(not_mine) == 4404
    assert await closed_with(missing) == 4404
    assert await closed_with(await connect("/ws/bots/live")) == 4401


async def test_it_sends_the_panel_and_history_the_page_missed_then_each_change(alice, fast):
    bot = await sync_to_async(make_bot)(alice)
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


async def test_it_sends_nothing_while_the_page_is_current(alice, fast):
    bot = await sync_to_async(make_bot)(alice)
    session = await record(bot.pk, "connecting", Status.CONNECTING)

    ws = await connect(f"/ws/bots/{bot.pk}/live?seq={session.version}&after=0", alice)

    assert await ws.receive_nothing(timeout=0.4)
    await ws.disconnect()


async def test_it_shows_new_conversations_and_grows_an_open_one(alice, fast):
    bot = await sync_to_async(make_bot)(alice)
    chat = "5511955554444@s.whatsapp.net"
    create = sync_to_async(Message.objects.create)
    # A minute old: recent messages are sent again once, in case one committed late.
    minute_ago = timezone.now() - datetime.timedelta(minutes=1)
    inbound = await create(
        bot=bot, chat=chat, sender=chat, direction="in", text="Oi!", status="received", created_at=minute_ago
    )

    page = await connect(f"/ws/bots/{bot.pk}/live?seq=0&after=0", alice)
    conversation = await connect(
        f"/ws/bots/{bot.pk}/live?seq=0&after={inbound.pk}&chat={chat}&pending={inbound.pk}:received", alice
    )
    chats = await next_html(page)
    assert '<ul id="chat-list" class="chats" hx-swap-oob="true">' in chats and "Oi!" in chats
    assert await conversation.receive_nothing(timeout=0.3)

    def answer() -> Message:
        # As the reply pipeline does: the reply row and the `replied` mark commit together.
        with transaction.atomic():
            Message.objects.filter(pk=inbound.pk).update(status="replied")
            return Message.objects.create(
                bot=bot, chat=chat, direction="out", text="Olá!", status="queued", in_reply_to=inbound
            )

    reply = await sync_to_async(answer)()
    grown = await next_html(conversation)

    assert '<ol hx-swap-oob="beforeend:#messages">' in grown
    assert f'<li id="msg-{reply.pk}" class="msg msg-out" data-status="queued" data-pending>' in grown
    assert f'<li id="msg-{inbound.pk}" class="msg msg-in" data-status="replied" hx-swap-oob="true">' in grown
    await sync_to_async(Message.objects.filter(pk=reply.pk).update)(status="sent")
    sent = await next_html(conversation)
    assert f'<li id="msg-{reply.pk}" class="msg msg-out" data-status="sent" hx-swap-oob="true">' in sent
    assert "data-pending" not in sent
    await page.disconnect()
    await conversation.disconnect()


async def test_it_speaks_the_pages_language(alice, fast):
    bot = await sync_to_async(make_bot)(alice)
    await record(bot.pk, "qr_timeout", Status.QR_TIMEOUT)

    ws = await connect(f"/ws/bots/{bot.pk}/live?seq=0&lang=pt-br", alice)

    html = await next_html(ws)
    assert "O QR code expirou antes de ser lido." in html and "QR expirado" in html
    await ws.disconnect()


async def test_it_closes_when_the_bot_is_deleted(alice, fast):
    bot = await sync_to_async(make_bot)(alice)
    ws = await connect(f"/ws/bots/{bot.pk}/live?seq=0", alice)
    await sync_to_async(Bot.objects.filter(pk=bot.pk).update)(deleted_at="2026-01-01T00:00:00Z")

    assert await closed_with(ws) == 4404


async def test_it_keeps_the_bot_list_badges_current(alice, bob, fast):
    mine = await sync_to_async(make_bot)(alice, name="Mine")
    theirs = await sync_to_async(make_bot)(bob, name="Theirs")

    ws = await connect("/ws/bots/live", alice)
    everything = await next_html(ws)
    await record(theirs.pk, "connecting", Status.CONNECTING)
    await record(mine.pk, "connecting", Status.CONNECTING)
    changed = await next_html(ws)

    assert f'<span id="status-{mine.pk}" class="badge status-disconnected" data-seq="0"' in everything
    assert str(theirs.pk) not in everything + changed
    assert f'<span id="status-{mine.pk}" class="badge status-connecting" data-seq="1" hx-swap-oob="true">' in changed
    await ws.disconnect()


async def test_it_wakes_up_on_a_broadcast_frame_rather_than_waiting_for_its_poll(alice, settings, monkeypatch):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    monkeypatch.setattr(consumers, "POLL_SECONDS", 60)
    bot = await sync_to_async(make_bot)(alice)
    ws = await connect(f"/ws/bots/{bot.pk}/live?seq=0", alice)
    await asyncio.sleep(0.1)

    # The write path broadcasts after commit: the frame is only a hint, the panel is read from the database.
    session = await record(bot.pk, "connecting", Status.CONNECTING, publish=lambda *_: None)
    frame = state.frame_for("connecting", session)
    await get_channel_layer().group_send(state.group_name(bot.pk), {"type": "session.frame", "frame": frame})

    html = await next_html(ws, timeout=2)
    assert 'data-status="connecting"' in html
    await ws.disconnect()
