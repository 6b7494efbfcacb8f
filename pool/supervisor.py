"""The supervisor of the pool process: N shard processes, restarted when they die, stopped on a signal.

Shards are child processes started with subprocess as ``manage.py run_whatsapp
--shard K`` (never forked after neonize is imported: docs/architecture.md,
processes). A shard that dies has its leases freed at once, so its bots move
without waiting for the leases to expire.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection

from bots.control import nudge_shards
from pool import leases
from pool.shard import RECYCLE_EXIT_CODE, new_shard_id

logger = logging.getLogger(__name__)


@dataclass
class Child:
    index: int
    process: subprocess.Popen | None = None
    shard_id: str = ""
    started_at: float = 0.0
    crashes: int = 0
    restart_at: float = 0.0


class Supervisor:
    """Starts N shard processes, restarts the ones that die, stops them all on a signal."""

    def __init__(self, shards: int, *, grace: float = 30.0, extra_args: list[str] | None = None) -> None:
        self.children = [Child(index) for index in range(shards)]
        self.grace = grace
        self.extra_args = extra_args or []
        self.shutdown = False

    def command(self, child: Child) -> list[str]:
        manage = Path(settings.BASE_DIR) / "manage.py"
        return [
            sys.executable,
            str(manage),
            "run_whatsapp",
            "--shard",
            str(child.index),
            "--shard-id",
            child.shard_id,
            *self.extra_args,
        ]

    def start(self, child: Child) -> None:
        child.shard_id = new_shard_id(child.index)
        child.process = subprocess.Popen(self.command(child))
        child.started_at = time.monotonic()
        logger.info(
            "supervisor: shard %d started as pid %d (%s)",
            child.index,
            child.process.pid,
            child.shard_id,
            extra={"shard": child.shard_id},
        )
        self.announce(child)

    def announce(self, child: Child) -> None:
        """Advertise a starting shard's room before it runs, so shards started together share the bots.

        Placement counts the room of the shards it sees beating; without this the
        first of N shards started at once saw none of its siblings and took every bot.
        """
        close_old_connections()
        try:
            leases.beat(
                child.shard_id, socket.gethostname(), child.process.pid, settings.WHATSAPP_SHARD_CAPACITY, hosted=0
            )
        except DatabaseError:
            logger.warning(
                "supervisor: could not announce %s; it announces itself",
                child.shard_id,
                exc_info=True,
                extra={"shard": child.shard_id},
            )
            connection.close()

    def reap(self, child: Child) -> None:
        """A shard died: free its bots at once so they move without waiting for lease expiry."""
        code = child.process.returncode
        logger.error(
            "supervisor: shard %d (pid %d) exited with %s",
            child.index,
            child.process.pid,
            code,
            extra={"shard": child.shard_id},
        )
        self.free(child)
        lived = time.monotonic() - child.started_at
        if code == RECYCLE_EXIT_CODE:
            child.crashes, child.restart_at, child.process = 0, 0.0, None
            return
        child.crashes = 0 if lived > 60 else child.crashes + 1
        child.restart_at = time.monotonic() + min(30.0, 0.5 * 2**child.crashes) if child.crashes else 0.0
        child.process = None

    def step(self) -> None:
        for child in self.children:
            if child.process is not None and child.process.poll() is not None:
                self.reap(child)
            if child.process is None and not self.shutdown and time.monotonic() >= child.restart_at:
                self.start(child)

    def run(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.request_shutdown)
        while not self.shutdown:
            self.step()
            time.sleep(0.2)
        self.stop_children()

    def request_shutdown(self, signum: int, _frame: Any) -> None:
        self.shutdown = True
        self.signal = signum

    def stop_children(self) -> None:
        running = [c for c in self.children if c.process is not None and c.process.poll() is None]
        for child in running:
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for child in running:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error(
                    "supervisor: shard %d did not stop in %.0f s; killing it",
                    child.index,
                    self.grace,
                    extra={"shard": child.shard_id},
                )
                child.process.kill()
                child.process.wait()
        for child in self.children:
            if child.shard_id:
                self.free(child)
        logger.info("supervisor: stopped")

    def free(self, child: Child) -> None:
        """Release a stopped or dead shard's leases at once, so its bots move without waiting for expiry."""
        close_old_connections()
        try:
            held = leases.release_all(child.shard_id)
            if held:
                nudge_shards()  # the others take them now rather than at their next poll
                logger.info(
                    "supervisor: released %d bots of %s", len(held), child.shard_id, extra={"shard": child.shard_id}
                )
        except DatabaseError:
            logger.exception(
                "supervisor: could not release the leases of %s", child.shard_id, extra={"shard": child.shard_id}
            )
            connection.close()
