"""What every live socket shares: who may listen, the groups it joins, and a clean end however it ends.

A socket authenticates (a bearer token where the route takes one, else the
login session), is accepted, and then refused with a code if need be, so the
client learns why (docs/api.md, WebSockets): 4401 no login, 4404 no such bot or
not yours, 4429 over the per-user cap of open sockets in this process. An
accepted one joins its user's group and its own groups, and sends its first
frame. From then on it only reacts to what its groups hear; there is no
background task per socket and no periodic query.

Rights are re-checked on events, not by polling (bots/broadcasts.py): a
revocation closes the socket before it sends anything more, since a consumer
handles its messages one at a time, in the order they arrived.

Database work runs on any of the loop's threads (``thread_sensitive=False``):
a burst of handshakes never queues behind one thread. ``__call__`` ends every
socket the same way, whether it closed, was refused, or was killed by the
server (daphne cancels an instance that outlives its connection, and then
``disconnect()`` never runs).
"""

from __future__ import annotations

import collections
import logging
import weakref
from dataclasses import dataclass
from types import SimpleNamespace

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib import auth

from bots import broadcasts, follower
from bots.models import ApiToken

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_MANY = 4429

# Open sockets per user in this process (the cap of WEBSOCKETS_PER_USER).
open_sockets: collections.Counter[int] = collections.Counter()
# The socket consumers of this process that have not ended yet, open or not (for /metrics).
running: weakref.WeakSet[LiveSocket] = weakref.WeakSet()


def on_any_thread(fn):
    """A socket's ORM work, on any of the loop's threads, with Django's connection handling."""
    return database_sync_to_async(fn, thread_sensitive=False)


@dataclass(frozen=True)
class Listener:
    """Who a socket listens for, and by what right: an API token, or a login session (its mark)."""

    user: object
    token_id: int | None = None
    session: str = ""

    def revoked_by(self, message: dict) -> bool:
        if message.get("user"):
            return True
        if self.token_id is not None and message.get("token") == self.token_id:
            return True
        return bool(self.session) and message.get("session") == self.session


def bearer_token(scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def authenticate(scope, bearer: bool) -> Listener | None:
    """A bearer token first (the same order as the HTTP API), then the session cookie."""
    token = bearer_token(scope) if bearer else None
    if token:
        row = ApiToken.objects.find(token)
        if row is not None:
            return Listener(row.user, token_id=row.pk)
    session = scope.get("session")
    if session is None or not session.session_key:
        return None
    # What AuthMiddleware does, here on any thread: the session's user, if its hash still matches.
    user = auth.get_user(SimpleNamespace(session=session))
    if not user.is_authenticated:
        return None
    return Listener(user, session=broadcasts.session_mark(session.session_key))


class LiveSocket(AsyncWebsocketConsumer):
    """A live socket: subclasses say what it may see (``authorize``), hear (``join_groups``) and send first."""

    accepts_bearer = False

    async def __call__(self, scope, receive, send) -> None:
        self.listener: Listener | None = None
        self.joined: list[str] = []
        self.counted = False
        self.closed = False
        running.add(self)
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.end()
            running.discard(self)

    async def websocket_connect(self, message) -> None:
        # Accepted at once: whatever follows, the client learns it from a close code, and a burst of
        # handshakes never outlasts the server's connect timeout (daphne's: 5 s) waiting for the database.
        await self.accept()
        self.listener, allowed = await on_any_thread(self.admit)()
        if self.listener is None:
            await self.refuse(CLOSE_UNAUTHENTICATED)
            return
        user_id = self.listener.user.pk
        if open_sockets[user_id] >= settings.WEBSOCKETS_PER_USER:
            await self.refuse(CLOSE_TOO_MANY)
            return
        open_sockets[user_id] += 1
        self.counted = True
        if not allowed:
            await self.refuse(CLOSE_NOT_FOUND)
            return
        await self.join(broadcasts.user_group(user_id))
        await self.join_groups()
        await self.start()
        # Without Redis, this process's sockets hear what the shards write through one follower.
        follower.follow(while_needed=lambda: bool(open_sockets))

    def admit(self) -> tuple[Listener | None, bool]:
        """Who listens, and whether they may see what the path asks for: one trip to the database."""
        listener = authenticate(self.scope, self.accepts_bearer)
        if listener is None:
            return None, False
        self.listener = listener
        return listener, self.authorize()

    async def receive(self, text_data=None, bytes_data=None) -> None:
        """Clients only listen; anything they send is ignored."""

    async def join(self, group: str) -> None:
        await self.channel_layer.group_add(group, self.channel_name)
        self.joined.append(group)

    async def leave(self, group: str) -> None:
        if group in self.joined:
            self.joined.remove(group)
            await self.channel_layer.group_discard(group, self.channel_name)

    async def push(self, text: str) -> None:
        """Send a frame, unless the socket has lost its right or is closing."""
        if not self.closed:
            await self.send(text_data=text)

    async def refuse(self, code: int) -> None:
        if not self.closed:
            self.closed = True
            await self.close(code=code)

    async def end(self) -> None:
        if self.counted:
            self.counted = False
            user_id = self.listener.user.pk
            open_sockets[user_id] -= 1
            if open_sockets[user_id] <= 0:
                del open_sockets[user_id]
        for group in list(self.joined):
            try:
                await self.leave(group)
            except Exception:
                logger.warning("socket could not leave %s", group, exc_info=True)

    # --- what subclasses decide ---

    def authorize(self) -> bool:
        """Whether ``self.listener`` may see what the socket's path asks for (else 4404). On a DB thread."""
        raise NotImplementedError

    async def join_groups(self) -> None:
        """Join the groups whose hints this socket acts on."""

    async def start(self) -> None:
        """Send the first frame."""

    # --- what every socket hears (its groups' messages; what a socket does not act on, it ignores) ---

    async def list_changed(self, message: dict) -> None:
        """The user's bots changed (the bot list acts on it)."""

    async def page_changed(self, message: dict) -> None:
        """Something a bot's pages show changed (the pages act on it)."""

    async def access_revoked(self, message: dict) -> None:
        """A login session ended, a token was revoked or a user deactivated (bots/broadcasts.py)."""
        if self.listener is not None and self.listener.revoked_by(message):
            await self.refuse(CLOSE_UNAUTHENTICATED)

    async def bot_access(self, message: dict) -> None:
        """The bot this socket shows was deleted or given to someone else."""
        if self.listener is not None and message.get("owner") != self.listener.user.pk:
            await self.refuse(CLOSE_NOT_FOUND)
