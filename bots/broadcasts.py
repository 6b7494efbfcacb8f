"""What the live sockets hear about bots, sent after commit by the one write path of each change.

- ``page.changed`` to a bot's group: its messages (or its connection) changed;
  its pages render again what moved past their cursor (bots/live.py).
- ``list.changed`` to a user's group: a bot of theirs was created, renamed,
  deleted or given away; their bot list renders its rows again.
- ``access.revoked`` to a user's group: a login session ended, an API token
  was revoked, or the user was deactivated; the sockets that used it close (4401).
- ``bot.access`` to a bot's groups: it was deleted or has a new owner; the
  sockets of anyone else close (4404).

Hints on top of the database (docs/invariants.md, 1): a lost one costs a page
an update, never the truth. Group names carry ids, never secrets.
"""

from __future__ import annotations

import hashlib
import uuid

from django.contrib.auth.signals import user_logged_out

from whatsapp import state


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


def session_mark(session_key: str) -> str:
    """What a broadcast says of a login session: a hash, since a session key is a secret."""
    return hashlib.sha256(session_key.encode()).hexdigest()[:32]


def messages_changed(bot_id: uuid.UUID) -> None:
    state.publish_after_commit(state.group_name(bot_id), {"type": "page.changed", "messages": True})


def list_changed(user_id: int) -> None:
    state.publish_after_commit(user_group(user_id), {"type": "list.changed"})


def session_ended(user_id: int, session_key: str) -> None:
    state.publish_after_commit(user_group(user_id), {"type": "access.revoked", "session": session_mark(session_key)})


def token_revoked(user_id: int, token_id: int) -> None:
    state.publish_after_commit(user_group(user_id), {"type": "access.revoked", "token": token_id})


def user_revoked(user_id: int) -> None:
    state.publish_after_commit(user_group(user_id), {"type": "access.revoked", "user": True})


def bot_access_changed(bot_id: uuid.UUID, owner_id: int | None) -> None:
    """The bot was given to ``owner_id``, or deleted (None): its other viewers lose it."""
    message = {"type": "bot.access", "bot": str(bot_id), "owner": owner_id}
    for group in (state.group_name(bot_id), state.events_group(bot_id)):
        state.publish_after_commit(group, message)


def _logged_out(sender, request, user, **kwargs) -> None:
    # Django owns logout: this signal is the one place every logout passes (the site's, the admin's,
    # any other), so the broadcast of a login session's end starts here.
    if user is not None and request.session.session_key:
        session_ended(user.pk, request.session.session_key)


user_logged_out.connect(_logged_out, dispatch_uid="bots.broadcasts.logged_out")
