"""The supervisor of the pool process: N shard processes, restarted when they die, stopped on a signal.

Shards are child processes started with subprocess as ``manage.py run_whatsapp
--shard K`` (never forked after neonize is imported: docs/architecture.md,
processes). A shard that dies has its leases freed at once, so its bots move
without waiting for the leases to expire.

A shard that must recycle (pool/recycle.py) says ``draining`` on its control
pipe first: the supervisor starts its replacement in the same slot at once and
lets the old process run until it has handed its bots over and exited (make
before break). SIGUSR2 asks every shard to recycle so (fresh code, no outage).
"""

from __future__ import annotations

import logging
import os
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
from pool.recycle import DRAINING
from pool.shard import RECYCLE_EXIT_CODE, new_shard_id

logger = logging.getLogger(__name__)

# A shard started this recently is fresh already: SIGUSR2 does not ask it to recycle.
FRESH_SECONDS = 10.0


@dataclass
class Child:
    index: int
    process: subprocess.Popen | None = None
    shard_id: str = ""
    started_at: float = 0.0
    crashes: int = 0
    restart_at: float = 0.0
    control: int | None = None  # the read end of its control pipe (pool/recycle.py)


class Supervisor:
    """Starts N shard processes, restarts the ones that die, stops them all on a signal."""

    def __init__(self, shards: int, *, grace: float = 30.0, extra_args: list[str] | None = None) -> None:
        self.children = [Child(index) for index in range(shards)]
        self.grace = grace
        self.extra_args = extra_args or []
        self.shutdown = False
        # Old shards handing their bots to their replacements: reaped, never restarted.
        self.retiring: list[Child] = []

    def command(self, child: Child, control_fd: int) -> list[str]:
        manage = Path(settings.BASE_DIR) / "manage.py"
        return [
            sys.executable,
            str(manage),
            "run_whatsapp",
            "--shard",
            str(child.index),
            "--shard-id",
            child.shard_id,
            "--control-fd",
            str(control_fd),
            *self.extra_args,
        ]

    def start(self, child: Child, *, announce: bool = True) -> None:
        child.shard_id = new_shard_id(child.index)
        read, write = os.pipe()
        os.set_blocking(read, False)
        try:
            child.process = subprocess.Popen(self.command(child, write), pass_fds=(write,))
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        child.control = read
        child.started_at = time.monotonic()
        logger.info(
            "supervisor: shard %d started as pid %d (%s)",
            child.index,
            child.process.pid,
            child.shard_id,
            extra={"shard": child.shard_id},
        )
        # Not a replacement: its old shard waits for the replacement's own first beat, which says it is
        # ready to claim; an announcement would have it hand bots to a process still starting.
        if announce:
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

    def reap(self, child: Child, *, retired: bool = False) -> None:
        """A shard died, or a retired one exited: free its bots at once, not at lease expiry."""
        code = child.process.returncode
        (logger.info if retired else logger.error)(
            "supervisor: shard %d (pid %d) exited with %s%s",
            child.index,
            child.process.pid,
            code,
            " after handing its bots to its replacement" if retired else "",
            extra={"shard": child.shard_id},
        )
        self.close_control(child)
        self.free(child)
        if retired:
            return
        lived = time.monotonic() - child.started_at
        if code == RECYCLE_EXIT_CODE:
            child.crashes, child.restart_at, child.process = 0, 0.0, None
            return
        child.crashes = 0 if lived > 60 else child.crashes + 1
        child.restart_at = time.monotonic() + min(30.0, 0.5 * 2**child.crashes) if child.crashes else 0.0
        child.process = None

    def draining(self, child: Child) -> bool:
        """Whether the shard said ``draining`` on its control pipe (it closes the pipe right after)."""
        if child.control is None:
            return False
        try:
            data = os.read(child.control, 64)
        except BlockingIOError:
            return False
        if not data:
            self.close_control(child)  # it exited, or said all it had to say
        return DRAINING.strip() in data

    def retire(self, child: Child) -> None:
        """Make before break: its replacement starts now, in its slot, while it hands its bots over."""
        old = Child(child.index, child.process, child.shard_id, child.started_at, control=child.control)
        self.retiring.append(old)
        logger.info(
            "supervisor: shard %d (pid %d) is draining; starting its replacement",
            child.index,
            child.process.pid,
            extra={"shard": child.shard_id},
        )
        child.process, child.control, child.crashes, child.restart_at = None, None, 0, 0.0
        self.start(child, announce=False)

    def close_control(self, child: Child) -> None:
        if child.control is not None:
            os.close(child.control)
            child.control = None

    def step(self) -> None:
        for old in [old for old in self.retiring if old.process.poll() is not None]:
            self.retiring.remove(old)
            self.reap(old, retired=True)
        for child in self.children:
            alive = child.process is not None and child.process.poll() is None
            if alive and self.draining(child) and not self.shutdown:
                self.retire(child)
            elif child.process is not None and not alive:
                self.reap(child)
            if child.process is None and not self.shutdown and time.monotonic() >= child.restart_at:
                self.start(child)

    def run(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.request_shutdown)
        signal.signal(signal.SIGUSR2, self.request_recycle)
        while not self.shutdown:
            self.step()
            time.sleep(0.2)
        self.stop_children()

    def request_recycle(self, _signum: int, _frame: Any) -> None:
        """SIGUSR2: every shard hands its bots to a fresh replacement (new code, no outage), one bot at a time.

        Not a shard started in the last FRESH_SECONDS: it is fresh already, and may not handle the signal yet.
        """
        for child in self.children:
            if child.process is not None and time.monotonic() - child.started_at > FRESH_SECONDS:
                child.process.send_signal(signal.SIGUSR2)

    def request_shutdown(self, signum: int, _frame: Any) -> None:
        self.shutdown = True
        self.signal = signum

    def stop_children(self) -> None:
        every = self.children + self.retiring
        running = [c for c in every if c.process is not None and c.process.poll() is None]
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
        for child in every:
            self.close_control(child)
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
