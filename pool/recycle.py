"""Make-before-break recycling: a shard that must be replaced hands its bots over one at a time.

A shard recycles when a provider asks for a fresh process (neonize leaks a store
connection and goroutines per connect attempt: ``recycle_reason()``) or when an
operator sends it SIGUSR2. Stopping every bot and exiting, as it once did, took
every tenant's bots offline together for the restart (measured: 8 s) because of
one tenant's failing dials. Instead (docs/architecture.md, recycling):

1. The shard stops claiming: its capacity becomes 0, in its heartbeat at once, so
   placement gives it no share of what waits.
2. It writes ``draining`` to its control pipe, and the supervisor starts the
   replacement for its slot at once, while this process still hosts every bot.
3. Bots without a session to keep (dialling, showing a QR, waiting out a
   backoff) go at once: each dial here would leak more. Then it waits for a
   shard that was not live before to beat (the replacement has set up and is
   about to claim), at most REPLACEMENT_WAIT.
4. Bot by bot, under the shard's event lock: the client stops, then the bot is
   recorded ``connecting`` ("worker stopped") and its lease released, then a
   nudge; the next host claims it with the next epoch (docs/invariants.md, 3),
   so there are never two live clients of one device. It waits until another
   shard holds the bot, at most MOVE_WAIT, before the next: each bot is offline
   for its own move only, and the replacement is never handed all at once.
5. Empty, it shuts down as before and exits with RECYCLE_EXIT_CODE.

How the shard tells the supervisor: a pipe per child (``--control-fd``). An exit
code comes too late (the bots would be stopped already); a signal to the parent
cannot say which child sent it; a ``draining`` flag in the heartbeat row would
need a column and the supervisor polling the database, which may be the very
thing that is down. A pipe is immediate, says who, needs no database, and reads
as end-of-file when the child dies. A shard without one (started by hand) hands
its bots to the shards already running.

A SIGTERM while draining: the move in progress finishes (bounded by a client's
stop), no other starts, and the shard's stop stops the rest as any shutdown does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid

from django.db import DatabaseError

from botplatform import logs
from bots.control import wake_shards
from pool import leases
from pool.connection import HostedBot, Phase
from whatsapp.models import Status

logger = logging.getLogger(__name__)

# What a draining shard writes to its control pipe: start my replacement now.
DRAINING = b"draining\n"
# How long a draining shard waits for its replacement to beat before it hands its bots to whoever is live.
REPLACEMENT_WAIT = 30.0
# How long it waits for another shard to claim a bot it released before it moves the next one.
MOVE_WAIT = 5.0
# At a shutdown, how long the move in progress may take to end (a client's stop is bounded by 10 s).
FINISH_SECONDS = 15.0
POLL = 0.05


def tell_supervisor(fd: int | None) -> bool:
    """Ask for a replacement through the control pipe; False without a pipe or a supervisor to read it."""
    if fd is None:
        return False
    try:
        os.write(fd, DRAINING)
        return True
    except OSError:
        logger.warning("could not tell the supervisor to start a replacement", exc_info=True)
        return False
    finally:
        os.close(fd)


# Bots with a session to keep: moved one at a time once the replacement is up, each waited for.
LIVE = (Phase.CONNECTED, Phase.RECONNECTING)


def order(hosted: dict[uuid.UUID, HostedBot]) -> list[HostedBot]:
    """Bots without a session first (nothing to wait for), then those with one."""
    return sorted(hosted.values(), key=lambda h: h.phase in LIVE)


class Drain:
    """One shard's recycle: the steps of the module docstring, run as a task beside the shard's loop."""

    def __init__(self, shard, reason: str) -> None:
        self.shard = shard
        self.reason = reason
        self.moved = 0
        self.task = asyncio.create_task(self.run(), name="drain")

    async def finish(self) -> None:
        """At a shutdown (a SIGTERM while draining): the move in progress ends, and no other starts."""
        if self.task.done() or self.task is asyncio.current_task():
            return
        _, pending = await asyncio.wait({self.task}, timeout=FINISH_SECONDS)
        for task in pending:
            task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def run(self) -> None:
        shard = self.shard
        try:
            before = set(await shard.db(leases.shard_loads, shard.ttl))
            # It claims nothing more, and says so in its heartbeat at its next pass (due at once), so
            # placement leaves it out; the loop renews, so renewals never run twice at a time.
            shard.capacity, shard.last_renewal = 0, 0.0
            shard.wake()
            told, shard.control_fd = tell_supervisor(shard.control_fd), None
            # Bots that are dialling, showing a QR or waiting out a backoff go now, before the replacement
            # is up: here each new dial would leak more, and they have no session to keep.
            await self.move_all(lambda hosted: hosted.phase not in LIVE)
            if told:
                await self.wait_for_replacement(before | {shard.shard_id})
            await self.move_all(lambda hosted: True)
        except Exception:
            logger.exception("shard %s: draining failed; stopping the rest", shard.shard_id)
        if not shard.shutdown:
            logger.info("shard %s: drained, %d bots moved", shard.shard_id, self.moved)
        shard.request_shutdown()

    async def move_all(self, which) -> None:
        shard = self.shard
        while not shard.shutdown and (left := [hosted for hosted in order(shard.hosted) if which(hosted)]):
            try:
                await self.move(left[0])
            except DatabaseError:
                logger.warning("shard %s: a move failed; retrying", shard.shard_id, exc_info=True)
                await asyncio.sleep(1.0)

    async def wait_for_replacement(self, known: set[str]) -> None:
        shard = self.shard
        deadline = time.monotonic() + REPLACEMENT_WAIT
        while not shard.shutdown and time.monotonic() < deadline:
            loads = await shard.db(leases.shard_loads, shard.ttl)
            fresh = [owner for owner, (capacity, _) in loads.items() if owner not in known and capacity > 0]
            if fresh:
                logger.info("shard %s: replacement %s is up; moving bots", shard.shard_id, fresh[0])
                return
            await asyncio.sleep(POLL * 4)
        if not shard.shutdown:
            logger.warning("shard %s: no replacement in %.0f s; moving bots anyway", shard.shard_id, REPLACEMENT_WAIT)

    async def move(self, hosted: HostedBot) -> None:
        shard, bot_id = self.shard, hosted.bot_id
        with logs.bot(bot_id):
            # Not while an event is handled: nothing of this bot is written between its stop and its release.
            async with shard.handling:
                if shard.hosted.get(bot_id) is not hosted:
                    return  # ended by an event meanwhile
                live = hosted.phase in LIVE
                hosted.phase = Phase.STOPPING  # no retry, reply or start for it from here on
                await hosted.stop_client()  # stopped before the lease goes: never two live clients
                if await hosted.record(
                    "connecting",
                    Status.CONNECTING,
                    detail=f"moving to a fresh shard ({self.reason})",
                    last_error="worker stopped",
                ):
                    await hosted.release()
            self.moved += 1
            await wake_shards()
            if live:
                await self.wait_for_claim(bot_id)

    async def wait_for_claim(self, bot_id: uuid.UUID) -> None:
        shard = self.shard
        deadline = time.monotonic() + MOVE_WAIT
        while time.monotonic() < deadline:
            if shard.shutdown or await shard.db(leases.holder, bot_id) not in ("", shard.shard_id):
                return
            await asyncio.sleep(POLL)
        logger.info("shard %s: bot %s not claimed within %.0f s; moving the next", shard.shard_id, bot_id, MOVE_WAIT)
