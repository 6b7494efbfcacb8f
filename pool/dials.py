"""What a hosted bot needs before its neonize client dials: its owner's dial budget, and its proxy.

Every neonize dial leaks a store connection (docs/neonize.md), and a shard recycles past a
number of them: ``WHATSAPP_DIAL_RATE_USER`` dials per owner in a sliding window, counted in
the database as connect requests are (bots/control.py), so that every shard and process
shares one count. A dial over it is not made: the bot waits until the oldest dial in the
window leaves it (pool/connection.py records ``lastError: "dial_budget"``). Simulator bots
are not counted.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from bots.control import window_wait
from bots.models import Bot, Dial

OVER_BUDGET = "dial_budget"
# The providers whose dials count: neonize's (a simulator dial costs nothing).
COUNTED = {"neonize"}


@dataclass(frozen=True)
class Dialling:
    """The answer for one dial: wait this many seconds first (0: dial now), through this proxy ("" for the default)."""

    wait: float
    proxy: str


def take_dial(bot_id: uuid.UUID) -> Dialling:
    """Count a dial of this bot against its owner's budget, or say how long until the budget has room."""
    limit, seconds = settings.WHATSAPP_DIAL_RATE_USER
    with transaction.atomic():
        owner_id, proxy = Bot.objects.filter(pk=bot_id).values_list("owner_id", "proxy").get()
        # Concurrent dials of one owner (other shards) count each other: the owner's row is the lock.
        list(get_user_model().objects.select_for_update().filter(pk=owner_id).values_list("pk", flat=True))
        now = timezone.now()
        dials = Dial.objects.filter(user_id=owner_id)
        if wait := window_wait(dials, limit, seconds, now):
            return Dialling(max(0.1, wait), proxy)
        dials.filter(created_at__lte=now - datetime.timedelta(seconds=seconds)).delete()
        Dial.objects.create(user_id=owner_id, bot_id=bot_id)
    return Dialling(0.0, proxy)
