"""The interface between a shard and a WhatsApp implementation (simulator or neonize).

A provider makes clients; a client connects one bot. Clients report what
happens through an ``Events`` object that only enqueues (invariant 5): the
shard does the database work on its own workers.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


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
    extra: dict = field(default_factory=dict)


class Events(Protocol):
    """Callbacks a client calls from any thread; implementations only enqueue."""

    def qr(self, bot_id: uuid.UUID, payload: str, expires_in: float, pairing_code: str = "") -> None: ...

    def paired(self, bot_id: uuid.UUID, jid: str, phone: str, push_name: str) -> None: ...

    def connected(self, bot_id: uuid.UUID) -> None: ...

    def disconnected(self, bot_id: uuid.UUID, reason: str) -> None: ...

    def logged_out(self, bot_id: uuid.UUID, reason: str) -> None: ...

    def failed(self, bot_id: uuid.UUID, reason: str) -> None: ...

    def message(self, bot_id: uuid.UUID, message: Inbound, ack: object = None) -> None: ...


class Client(Protocol):
    bot_id: uuid.UUID

    async def start(self) -> None:
        """Begin connecting: resume the stored device, or show QR codes for a new one."""

    async def stop(self) -> None:
        """Close the connection and forget the client; the stored device stays."""

    async def logout(self) -> None:
        """Unlink the device on the server and delete its stored state."""

    async def send_text(self, to: str, text: str, commit: Callable[[str], None] | None = None) -> str:
        """Send a text message; returns its WhatsApp id.

        ``commit(wa_id)`` records the send: a provider with ``atomic_send`` runs it in
        the same transaction as the send itself (an exception undoes both); others run
        it right after. Raises ``NotConnected`` when nothing was sent.
        """


class Provider(Protocol):
    name: str
    # Whether a send and its commit callback are one transaction (the simulator's are).
    atomic_send: bool

    async def open(self) -> None:
        """Prepare shared resources (store schema, polling task) before any client starts."""

    async def close(self) -> None: ...

    def client(self, device: Device, events: Events) -> Client: ...
