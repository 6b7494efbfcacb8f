"""The contract between a shard and a WhatsApp implementation (the simulator, neonize).

A :class:`Provider` makes a :class:`Client` per bot; a client connects one bot.
Clients report what happens through an :class:`Events` object that only
enqueues (docs/invariants.md, 5): the shard does the database work on its own
threads. Everything the pool uses of a provider is declared here, with a
default where one makes sense, so a new provider knows what to implement.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

# How a provider reaches the database: the shard's DB threads (``await db(fn, *args)``).
Db = Callable[..., Awaitable[Any]]
# What a send runs as its record of having sent: ``commit(wa_id)``.
Commit = Callable[[str], None]


class NotConnected(ConnectionError):
    """A send refused before anything left: the message can be sent again later."""


@dataclass(frozen=True)
class Inbound:
    """A message that reached the bot."""

    wa_id: str
    chat: str
    sender: str
    text: str
    type: str = "text"
    push_name: str = ""
    from_me: bool = False
    is_group: bool = False
    mentions: tuple[str, ...] = ()
    timestamp: datetime.datetime | None = None


@dataclass(frozen=True)
class Device:
    """What a shard knows of a bot's stored device when it starts its client."""

    bot_id: uuid.UUID
    jid: str = ""
    pairing_phone: str = ""
    # The bot's own proxy for the dial ("": the provider's default). It may carry a password: never in a repr.
    proxy: str = field(default="", repr=False)


class Events(Protocol):
    """Callbacks a client calls from any thread; the shard's implementation only enqueues."""

    def qr(self, bot_id: uuid.UUID, payload: str, expires_in: float, pairing_code: str = "") -> None: ...

    def paired(self, bot_id: uuid.UUID, jid: str, phone: str, push_name: str) -> None: ...

    def connected(self, bot_id: uuid.UUID, lid: str = "") -> None:
        """Connected; ``lid`` is the account's own LID (``<lid>@lid``) when the library knows it."""

    def disconnected(self, bot_id: uuid.UUID, reason: str) -> None: ...

    def reconnecting(self, bot_id: uuid.UUID, reason: str) -> None:
        """The connection dropped and the library is reconnecting by itself: the client stays."""

    def logged_out(self, bot_id: uuid.UUID, reason: str) -> None: ...

    def failed(self, bot_id: uuid.UUID, reason: str) -> None: ...

    def message(self, bot_id: uuid.UUID, message: Inbound) -> None:
        """A message reached the bot. Once this returns, WhatsApp counts it delivered and will not deliver
        it again: the shard's implementation has it on disk (its journal) by then."""


class Client:
    """One bot's connection. Made by its provider; started, stopped and used by the shard hosting the bot."""

    def __init__(self, device: Device, events: Events) -> None:
        self.bot_id = device.bot_id
        self.device = device
        self.events = events

    async def start(self) -> None:
        """Begin connecting: resume the stored device, or show QR codes for a new one.

        Returns once the attempt is under way; what follows arrives through ``events``.
        An exception means the attempt failed at once (the shard backs off and retries).
        """
        raise NotImplementedError

    async def stop(self) -> None:
        """Close the connection and forget the client; the stored device stays."""
        raise NotImplementedError

    async def logout(self) -> None:
        """Unlink the device on the server and delete its stored state."""
        raise NotImplementedError

    async def send_text(self, to: str, text: str, commit: Commit | None = None, ref: str = "") -> str:
        """Send a text message; returns its WhatsApp id.

        ``commit(wa_id)`` records the send, run right after the message left (a crash in
        between leaves it ``sending``). ``ref`` is the platform's own id for the message: a
        provider with ``idempotent_send`` delivers the same ref once, however often it is sent.
        Raises :class:`NotConnected` when nothing was sent.
        """
        raise NotImplementedError


class Provider:
    """A WhatsApp implementation: one per shard process, making the clients of its bots."""

    name = ""
    # Whether sending a message again under the same ``ref`` delivers it once: then a send that a
    # crash cut short is sent again (never twice); otherwise it is marked failed, not risked twice.
    idempotent_send = False
    # Whether the implementation keys its clients by phone number, so that two bots
    # linked to one number must never be hosted by one process (neonize does).
    one_client_per_number = False

    def capacity(self) -> int | None:
        """How many bots of this provider one shard hosts at most; None: the shard's own capacity."""
        return None

    async def open(self) -> None:
        """Prepare shared resources (store schema, polling task) before any client starts."""

    async def close(self) -> None:
        """Release them, after every client stopped."""

    def client(self, device: Device, events: Events) -> Client:
        raise NotImplementedError

    def wake(self) -> None:
        """Work may be waiting for this provider's clients now (a nudge): look before the next poll."""

    def recycle_reason(self) -> str:
        """Why the shard should hand its bots over and be replaced by a fresh process ("" for no reason)."""
        return ""
