"""``WS /api/bots/{id}/connection-events``: the bot's connection, live, as JSON frames (docs/api.md).

The first frame is the current state; then every frame the write path
broadcasts (whatsapp/state.py), in order, none merged. Frames carry ``seq``
(the session version): stale ones are dropped and gaps are filled from the
event log, so no transition is lost, even across a Redis restart.
"""

from __future__ import annotations

import json

from bots.models import Bot
from bots.sockets import LiveSocket, on_any_thread
from whatsapp.models import Session, SessionEvent
from whatsapp.state import events_group, frame_for


@on_any_thread
def current_frame(bot_id) -> dict:
    return frame_for("status", Session.objects.get(pk=bot_id))


@on_any_thread
def logged_frames(bot_id, after: int, before: int) -> list[dict]:
    rows = SessionEvent.objects.filter(session_id=bot_id, version__gt=after, version__lt=before)
    return list(rows.order_by("version").values_list("frame", flat=True)[:500])


class ConnectionEventsConsumer(LiveSocket):
    accepts_bearer = True

    def authorize(self) -> bool:
        self.bot_id = self.scope["url_route"]["kwargs"]["bot_id"]
        self.last_seq = -1
        return Bot.objects.visible_to(self.listener.user).filter(pk=self.bot_id).exists()

    async def join_groups(self) -> None:
        await self.join(events_group(self.bot_id))

    async def start(self) -> None:
        await self.send_frame(await current_frame(self.bot_id))

    async def send_frame(self, frame: dict) -> None:
        if frame["seq"] <= self.last_seq:
            return
        self.last_seq = frame["seq"]
        await self.push(json.dumps(frame))

    async def session_frame(self, message: dict) -> None:
        """A frame of the write path; any frames missed before it are sent first, from the log."""
        frame = message["frame"]
        if self.last_seq >= 0 and frame["seq"] > self.last_seq + 1:
            for missed in await logged_frames(self.bot_id, self.last_seq, frame["seq"]):
                await self.send_frame(missed)
        await self.send_frame(frame)
