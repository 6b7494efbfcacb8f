"""``WS /api/bots/{id}/connection-events``: the bot's connection, live, as JSON frames.

The consumer authorizes first, joins the bot's group, then sends the current
state as its first frame (invariant 2). Frames carry ``seq`` (the session
version): stale ones are dropped and gaps are filled from the event log, so
no transition is lost or merged. Without Redis it follows the event log by
polling it (DESIGN.md section 2).
"""

from __future__ import annotations

import asyncio
import json
import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from bots.models import ApiToken, Bot
from whatsapp.models import Session, SessionEvent
from whatsapp.state import frame_for, group_name

logger = logging.getLogger(__name__)

LOG_POLL_SECONDS = 0.25
CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404


def bearer_token(scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


@database_sync_to_async
def authenticate(scope):
    """Bearer first, then the session cookie (the same order as the HTTP API)."""
    token = bearer_token(scope)
    if token:
        user = ApiToken.objects.user_for(token)
        if user is not None:
            return user
    user = scope.get("user")
    if user is not None and user.is_authenticated:
        return user
    return None


@database_sync_to_async
def can_see(user, bot_id) -> bool:
    return Bot.objects.visible_to(user).filter(pk=bot_id).exists()


@database_sync_to_async
def current_frame(bot_id) -> dict:
    return frame_for("status", Session.objects.get(pk=bot_id))


@database_sync_to_async
def logged_frames(bot_id, after: int, before: int | None = None) -> list[dict]:
    rows = SessionEvent.objects.filter(session_id=bot_id, version__gt=after)
    if before is not None:
        rows = rows.filter(version__lt=before)
    return list(rows.order_by("version").values_list("frame", flat=True)[:500])


class ConnectionEventsConsumer(AsyncWebsocketConsumer):
    groups: list[str] = []

    async def connect(self) -> None:
        self.last_seq = -1
        self.group = None
        self.follower: asyncio.Task | None = None
        self.lock = asyncio.Lock()
        user = await authenticate(self.scope)
        # Accept, then close with a code, so the client learns why it was refused.
        await self.accept()
        if user is None:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        bot_id = self.scope["url_route"]["kwargs"]["bot_id"]
        if not await can_see(user, bot_id):
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.bot_id = bot_id
        if self.channel_layer is not None:
            self.group = group_name(bot_id)
            await self.channel_layer.group_add(self.group, self.channel_name)
        await self.send_frame(await current_frame(bot_id))
        if self.channel_layer is None:
            self.follower = asyncio.create_task(self.follow_log())

    async def disconnect(self, code: int) -> None:
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)
        if self.follower is not None:
            self.follower.cancel()

    async def receive(self, text_data=None, bytes_data=None) -> None:
        """Clients only listen; anything they send is ignored."""

    async def send_frame(self, frame: dict) -> None:
        if frame["seq"] <= self.last_seq:
            return
        self.last_seq = frame["seq"]
        await self.send(text_data=json.dumps(frame))

    async def session_frame(self, message: dict) -> None:
        """A frame broadcast by the write path; fills any gap from the log first."""
        frame = message["frame"]
        async with self.lock:
            if self.last_seq >= 0 and frame["seq"] > self.last_seq + 1:
                for missed in await logged_frames(self.bot_id, self.last_seq, frame["seq"]):
                    await self.send_frame(missed)
            await self.send_frame(frame)

    async def follow_log(self) -> None:
        """Without a channel layer: poll the event log and send what is new, in order."""
        try:
            while True:
                await asyncio.sleep(LOG_POLL_SECONDS)
                for frame in await logged_frames(self.bot_id, self.last_seq):
                    await self.send_frame(frame)
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("following the event log of %s failed", self.bot_id)
            await self.close(code=1011)
