"""Structured logs: every line a shard writes says which shard, and which bot when there is one.

The shard id is the process's (set once when a shard starts); the bot id comes
from a context variable that the pool sets around the work it does for one bot
(an event, a chat's replies, a client start). asyncio tasks inherit it, and the
shard hands it to its database threads. A call can also name the bot itself:
``logger.info(..., extra={"bot": bot_id})``.

``LOG_FORMAT=json`` writes one JSON object per line (python-json-logger) for a
log collector; the default text format puts ``[shard=… bot=…]`` before the message.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator

_bot: contextvars.ContextVar[str] = contextvars.ContextVar("log_bot", default="")
_shard = ""


def set_shard(shard_id: str) -> None:
    """Name this process's shard in every line it logs from now on."""
    global _shard
    _shard = shard_id


@contextlib.contextmanager
def bot(bot_id) -> Iterator[None]:
    """Name ``bot_id`` in the lines logged inside this block (and in tasks started from it)."""
    token = _bot.set(str(bot_id))
    try:
        yield
    finally:
        _bot.reset(token)


def set_bot(bot_id) -> None:
    """Name ``bot_id`` for the rest of the current task (a task of its own, like one chat's replies)."""
    _bot.set(str(bot_id))


class ContextFilter(logging.Filter):
    """Adds ``shard``, ``bot`` and, for the text format, ``context`` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.shard = getattr(record, "shard", "") or _shard
        record.bot = str(getattr(record, "bot", "") or _bot.get())
        parts = [f"{name}={value}" for name, value in (("shard", record.shard), ("bot", record.bot)) if value]
        record.context = f"[{' '.join(parts)}] " if parts else ""
        return True
