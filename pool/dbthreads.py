"""A fixed pool of database threads: where a shard's ORM work runs, its connections bounded.

The event loop never blocks on the database: async code hands plain sync
functions (the ones tests call directly) to :meth:`DbThreads.run`. A thread
whose connection broke is given a new one on its next call, instead of failing
forever; one that sat idle while the database restarted checks its connection
first, instead of failing the work it was given.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import threading
from collections.abc import Callable
from typing import Any

from django.db import DatabaseError, connection

from whatsapp import state

# Database errors seen by this process's DB threads. A thread that finds the count changed since its
# last call checks its connection before its next statement.
_errors = 0
_thread = threading.local()


def _call(fn: Callable, *args, **kwargs) -> Any:
    global _errors
    if getattr(_thread, "errors_seen", 0) != _errors:
        _thread.errors_seen = _errors
        connection.health_check_done = False  # Django checks it (CONN_HEALTH_CHECKS) before the next statement
    try:
        return fn(*args, **kwargs)
    except DatabaseError:
        _errors += 1
        connection.close()
        raise


class DbThreads:
    """``size`` threads, each with its own database connection; broadcasts go through ``publisher``."""

    def __init__(self, size: int, name: str, publisher: state.Publish | None = None) -> None:
        initializer = functools.partial(state.publish_from_this_thread, publisher) if publisher else None
        self.executor = concurrent.futures.ThreadPoolExecutor(size, thread_name_prefix=name, initializer=initializer)

    async def run(self, fn: Callable, *args, **kwargs) -> Any:
        """Run ``fn`` on one of the threads, in the caller's context (the bot its log lines name)."""
        context = contextvars.copy_context()
        call = functools.partial(_call, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self.executor, context.run, call)

    @property
    def closed(self) -> bool:
        return self.executor._shutdown

    async def close(self, timeout: float) -> bool:
        """Wait for the statements already running (milliseconds), off the loop and not forever."""
        waiting = asyncio.get_running_loop().run_in_executor(None, self.executor.shutdown)
        try:
            await asyncio.wait_for(waiting, timeout)
            return True
        except TimeoutError:
            return False
