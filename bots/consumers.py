"""The operator's pages, live: HTML partials swapped out of band by htmx's WebSocket extension.

``ws/bots/{id}/live`` keeps a bot page (or one of its conversations) current;
``ws/bots/live`` keeps the status badges of the bot list current. They
authenticate by the browser session only and refuse as the JSON consumer does
(accepted, then closed with 4401 or 4404).

Each follows the database: every ``POLL_SECONDS`` it asks :mod:`bots.live`
what changed since the page's cursor and sends those partials. With Redis it
also joins the bots' groups (``whatsapp.state.group_name``), and a
``session.frame`` wakes it at once; the frame's content is not needed, since
the partials are rendered from the rows. Messages have no broadcast, so they
are always found by polling (by id, past the newest one shown).
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import parse_qsl

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.http import Http404
from django.utils import translation

from bots import live
from bots.models import Bot
from bots.views import get_bot_for_user
from whatsapp.consumers import CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED
from whatsapp.models import Session
from whatsapp.state import group_name

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5


@database_sync_to_async
def session_user(scope):
    user = scope.get("user")
    return user if user is not None and user.is_authenticated else None


@database_sync_to_async
def find_bot(user, bot_id) -> Bot | None:
    try:
        return get_bot_for_user(user, bot_id)
    except Http404:
        return None


@database_sync_to_async
def visible_bot_ids(user) -> list:
    return list(Bot.objects.visible_to(user).values_list("pk", flat=True))


def page_language(code: str | None) -> str:
    """The language the page was rendered in (its ``lang`` parameter), if this site speaks it."""
    try:
        return translation.get_supported_language_variant(code or "")
    except LookupError:
        return settings.LANGUAGE_CODE


class Gone(Exception):
    """The bot the page shows was deleted: the consumer closes with 4404."""


class LivePageConsumer(AsyncWebsocketConsumer):
    """Authorize, join groups, then send what changed until the page goes away."""

    groups: list[str] = []

    async def connect(self) -> None:
        self.joined: list[str] = []
        self.follower: asyncio.Task | None = None
        self.wake = asyncio.Event()
        self.query = dict(parse_qsl(self.scope.get("query_string", b"").decode("latin-1")))
        self.language = page_language(self.query.get("lang"))
        user = await session_user(self.scope)
        # Accept, then close with a code, so the page learns why it was refused.
        await self.accept()
        if user is None:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.user = user
        if not await self.authorize():
            await self.close(code=CLOSE_NOT_FOUND)
            return
        if self.channel_layer is not None:
            for bot_id in await self.bot_ids():
                self.joined.append(group_name(bot_id))
                await self.channel_layer.group_add(self.joined[-1], self.channel_name)
        self.follower = asyncio.create_task(self.follow())

    async def disconnect(self, code: int) -> None:
        for group in self.joined:
            await self.channel_layer.group_discard(group, self.channel_name)
        if self.follower is not None:
            self.follower.cancel()

    async def receive(self, text_data=None, bytes_data=None) -> None:
        """Pages only listen; anything they send is ignored."""

    async def session_frame(self, message: dict) -> None:
        """A bot's connection changed (a broadcast of whatsapp/state.py): look now rather than at the next poll."""
        self.wake.set()

    async def follow(self) -> None:
        try:
            while True:
                html = await database_sync_to_async(self._render)()
                if html:
                    await self.send(text_data=html)
                try:
                    await asyncio.wait_for(self.wake.wait(), POLL_SECONDS)
                except TimeoutError:
                    pass
                self.wake.clear()
        except asyncio.CancelledError:
            pass
        except Gone:
            await self.close(code=CLOSE_NOT_FOUND)
        except Exception:
            logger.exception("live page %s failed", self.scope.get("path"))
            await self.close(code=1011)

    def _render(self) -> str:
        with translation.override(self.language):
            return self.render()

    async def authorize(self) -> bool:
        raise NotImplementedError

    async def bot_ids(self) -> list:
        raise NotImplementedError

    def render(self) -> str:
        """What changed since the last call, as out-of-band partials ("" for nothing). Runs on a DB thread."""
        raise NotImplementedError


class BotPageConsumer(LivePageConsumer):
    """``ws/bots/{id}/live[?chat=JID]``: the pairing panel, history and conversations of one bot."""

    async def authorize(self) -> bool:
        self.bot = await find_bot(self.user, self.scope["url_route"]["kwargs"]["bot_id"])
        if self.bot is None:
            return False
        self.chat = self.query.get("chat") or None
        self.cursor = live.Cursor.from_query(self.query)
        # Forms in the partials post with the page's CSRF cookie (Django accepts the unmasked secret).
        self.csrf_token = self.scope.get("cookies", {}).get(settings.CSRF_COOKIE_NAME, "")
        return True

    async def bot_ids(self) -> list:
        return [self.bot.pk]

    def render(self) -> str:
        try:
            html, self.cursor = live.bot_updates(self.bot, self.cursor, chat=self.chat, csrf_token=self.csrf_token)
        except Session.DoesNotExist:
            raise Gone from None
        return html


class BotListConsumer(LivePageConsumer):
    """``ws/bots/live``: the status badges of the user's bots; the first message has all of them."""

    async def authorize(self) -> bool:
        self.versions = None
        return True

    async def bot_ids(self) -> list:
        return await visible_bot_ids(self.user)

    def render(self) -> str:
        html, self.versions = live.list_updates(self.user, self.versions)
        return html
