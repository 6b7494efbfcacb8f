"""A shard's replies: in order within a chat, concurrently across chats, Gemini calls bounded.

The steps are bots/replies.py's plain sync functions; this is the async driver
that runs them for the bots a shard hosts. Each chat with work has one task
draining its line of messages; Gemini calls take a slot of
WHATSAPP_AI_CONCURRENCY (docs/invariants.md, 5). Messages come from
:meth:`ReplyPipeline.received` (stored just now), :meth:`recover` (a bot just
taken) and :meth:`scan` (outbound messages queued by the API, replies that
waited for a connection, and now and then every unanswered inbound message:
the database is the truth).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
import uuid
from collections.abc import Callable

from django.conf import settings

from botplatform import logs
from bots import gemini, replies
from bots.models import Direction, Message
from bots.replies import Prompt, Work
from pool.connection import HostedBot, Phase
from pool.dbthreads import DbThreads
from whatsapp.providers.base import NotConnected
from whatsapp.state import Publish

logger = logging.getLogger(__name__)

# How often a shard looks for inbound messages that no reply task holds (a safety net).
SWEEP_SECONDS = 30.0
# How long a stopping shard waits for the statements its reply threads are running.
STOP_SECONDS = 10.0

Chat = tuple[uuid.UUID, str]


class ReplyPipeline:
    def __init__(
        self, hosted: dict[uuid.UUID, HostedBot], publisher: Publish | None = None, db_threads: int = 4
    ) -> None:
        self.hosted = hosted
        # Threads of its own: a burst of replies never holds up the shard's storing of new
        # messages or its connection writes, which queue on the shard's threads.
        self.db_threads = DbThreads(db_threads, "reply-db", publisher)
        self.ai_slots = asyncio.Semaphore(settings.WHATSAPP_AI_CONCURRENCY)
        self.lines: dict[Chat, collections.deque[Work]] = {}
        self.lined: set[int] = set()
        # Chats with a reply that could not be sent (not connected): later ones wait for it.
        self.held: set[Chat] = set()
        self.tasks: set[asyncio.Task] = set()
        self.last_sweep = time.monotonic()

    async def start(self) -> None:
        try:
            # Built off the loop: it takes tens of milliseconds.
            await asyncio.to_thread(gemini.client)
        except Exception as exc:
            logger.error("Gemini client unavailable: %s; replies will use the fallback text", exc)

    async def stop(self) -> None:
        """Cancel every reply in progress; the next host of each bot picks them up from the database."""
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.lines.clear()
        self.lined.clear()
        if not await self.db_threads.close(STOP_SECONDS):
            logger.warning("reply database threads still busy after %.0f s; leaving them", STOP_SECONDS)

    async def db(self, fn: Callable, *args, **kwargs):
        return await self.db_threads.run(fn, *args, **kwargs)

    # --- where work comes from ---

    def received(self, message: Message) -> None:
        if message.status in replies.ACTIVE:
            self.submit(Work.of(message))

    async def recover(self, hosted: HostedBot) -> None:
        for work in await self.db(replies.recover, hosted.bot_id, hosted.fence, hosted.provider.idempotent_send):
            self.submit(work)

    async def scan(self) -> None:
        connected = [bot_id for bot_id, hosted in self.hosted.items() if hosted.phase is Phase.CONNECTED]
        inbound: list[uuid.UUID] = []
        if time.monotonic() - self.last_sweep >= SWEEP_SECONDS:
            inbound = list(self.hosted)
        if connected or inbound:
            found = await self.db(replies.pending, inbound, connected)
            if inbound:
                self.last_sweep = time.monotonic()  # only once it ran: a failed sweep is tried on the next pass
            for work in found:
                self.submit(work)

    def submit(self, work: Work) -> None:
        if work.id in self.lined or work.bot_id not in self.hosted:
            return
        self.lined.add(work.id)
        key = (work.bot_id, work.chat)
        line = self.lines.get(key)
        if line is None:
            line = self.lines[key] = collections.deque()
            task = asyncio.create_task(self._drain(key, line), name=f"chat {work.chat}")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        line.append(work)

    # --- one chat, in order ---

    async def _drain(self, key: Chat, line: collections.deque[Work]) -> None:
        logs.set_bot(key[0])  # this task's lines name its bot
        try:
            while line:
                work = line[0]
                try:
                    if work.direction == Direction.IN:
                        await self._answer(work)
                    else:
                        await self._send(work)
                except Exception:
                    # Left as it is in the database: the next sweep or host tries again.
                    logger.exception("message %s: reply step failed", work.id)
                finally:
                    line.popleft()
                    self.lined.discard(work.id)
        finally:
            if self.lines.get(key) is line:
                del self.lines[key]

    async def _answer(self, work: Work) -> None:
        hosted = self.hosted.get(work.bot_id)
        if hosted is None:
            return
        fence = hosted.fence
        step = await self.db(replies.begin, work.id, fence)
        if isinstance(step, Prompt):
            async with self.ai_slots:
                answer = await gemini.generate(
                    model=step.model, system_prompt=step.system_prompt, temperature=step.temperature, turns=step.turns
                )
            step = await self.db(replies.finish, step, answer, fence)
        if step is not None:
            await self._send(step)

    async def _send(self, work: Work) -> None:
        key = (work.bot_id, work.chat)
        if key in self.held:
            # Earlier replies of this chat are waiting: they go first.
            self.held.discard(key)
            for earlier in await self.db(replies.queued_in_chat, work.bot_id, work.chat, work.id):
                if not await self._send_one(earlier):
                    self.held.add(key)
                    return
        if not await self._send_one(work):
            self.held.add(key)

    async def _send_one(self, work: Work) -> bool:
        """Claim and send one outbound message; False when it must wait for a connection."""
        hosted = self.hosted.get(work.bot_id)
        if hosted is None:
            return True  # not ours anymore: its next host sends it
        client = hosted.client
        if client is None or hosted.phase is not Phase.CONNECTED:
            return False
        fence = hosted.fence
        if not await self.db(replies.claim, work.id, fence):
            return True  # sent or claimed already
        commit = functools.partial(replies.mark_sent, work.id)
        try:
            await client.send_text(work.chat, work.text, commit, ref=str(work.id))
        except NotConnected:
            await self.db(replies.requeue, work.id, fence)
            return False
        except Exception as exc:
            logger.warning("message %s: send failed: %r", work.id, exc)
            await self.db(replies.send_failed, work.id, fence, f"{type(exc).__name__}: {exc}")
        return True
