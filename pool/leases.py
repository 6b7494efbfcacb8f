"""Leases and placement: exactly one host per bot, each shard its fair share (docs/invariants.md, 3).

Plain sync ORM functions, run on a shard's DB threads and called directly by
tests. Times come from the database clock (``Now()``), never the host's.
"""

from __future__ import annotations

import datetime
import math
import time
import uuid

from django.db.models import Count, DateTimeField, ExpressionWrapper, F, Q
from django.db.models.functions import Now

from bots.models import Bot
from whatsapp.models import Session, ShardHeartbeat


def _expires(ttl: float) -> ExpressionWrapper:
    return ExpressionWrapper(Now() + datetime.timedelta(seconds=ttl), output_field=DateTimeField())


def _free() -> Q:
    return Q(lease_owner="") | Q(lease_expires_at__lt=Now())


def candidates(providers: list[str], limit: int) -> list[uuid.UUID]:
    """Bots that want a host and have none: connect wanted, or a logout/delete to carry out."""
    if limit <= 0:
        return []
    rows = (
        Session.objects.filter(_free())
        .filter(Q(desired_connected=True) | Q(logout_requested=True))
        .filter(Q(next_retry_at__isnull=True) | Q(next_retry_at__lte=Now()))
        .filter(bot__whatsapp_provider__in=providers)
        .order_by(F("next_retry_at").asc(nulls_first=True), "updated_at", "pk")
        .values_list("pk", flat=True)[:limit]
    )
    return list(rows)


def claim(bot_id: uuid.UUID, owner: str, ttl: float) -> int | None:
    """Take a free lease; returns the new epoch, or None when another shard holds it."""
    taken = (
        Session.objects.filter(_free(), pk=bot_id)
        .filter(Q(desired_connected=True) | Q(logout_requested=True))
        .update(lease_owner=owner, lease_expires_at=_expires(ttl), lease_epoch=F("lease_epoch") + 1)
    )
    if taken != 1:
        return None
    return Session.objects.filter(pk=bot_id, lease_owner=owner).values_list("lease_epoch", flat=True).first()


def renew(owner: str, ttl: float) -> dict[uuid.UUID, int]:
    """Extend all of a shard's leases in one UPDATE; returns the leases it still holds."""
    Session.objects.filter(lease_owner=owner).update(lease_expires_at=_expires(ttl))
    return dict(Session.objects.filter(lease_owner=owner).values_list("pk", "lease_epoch"))


def release(bot_id: uuid.UUID, owner: str, epoch: int) -> bool:
    return bool(
        Session.objects.filter(pk=bot_id, lease_owner=owner, lease_epoch=epoch).update(
            lease_owner="", lease_expires_at=None
        )
    )


def holder(bot_id: uuid.UUID) -> str:
    """The shard holding a bot's lease now ('' for none): a draining shard waits for its bot's next host."""
    return Session.objects.filter(pk=bot_id).values_list("lease_owner", flat=True).first() or ""


def release_all(owner: str) -> list[uuid.UUID]:
    """Free every lease of a shard (it stopped or died) and forget its heartbeat; returns the bots it held."""
    held = list(Session.objects.filter(lease_owner=owner).values_list("pk", flat=True))
    Session.objects.filter(lease_owner=owner).update(lease_owner="", lease_expires_at=None)
    forget_shard(owner)
    return held


def hosted_rows(bot_ids: list[uuid.UUID]) -> list[dict]:
    """What a shard reconciles its clients against, for the bots it hosts."""
    return list(
        Session.objects.filter(pk__in=bot_ids).values(
            "pk",
            "desired_connected",
            "logout_requested",
            "lease_owner",
            "lease_epoch",
            "status",
            "jid",
            "pairing_phone",
            "failures",
            "bot__whatsapp_provider",
            "bot__deleted_at",
        )
    )


def provider_and_phone(bot_id: uuid.UUID) -> tuple[str, str]:
    """The bot's provider, and the number it is linked to ('' before pairing)."""
    return Bot.objects.filter(pk=bot_id).values_list("whatsapp_provider", "session__phone").get()


def beat(owner: str, host: str, pid: int, capacity: int, hosted: int) -> None:
    """Say this shard is alive and how much it holds (database clock)."""
    ShardHeartbeat.objects.update_or_create(
        shard_id=owner, defaults={"host": host, "pid": pid, "capacity": capacity, "hosted": hosted, "seen_at": Now()}
    )


def forget_shard(owner: str) -> None:
    ShardHeartbeat.objects.filter(shard_id=owner).delete()


def shard_loads(ttl: float) -> dict[str, tuple[int, int]]:
    """Capacity and bots held now, of each shard seen within the lease TTL (placement's view of the pool).

    What a shard holds is counted from the leases themselves, not from its last heartbeat,
    so shards placing bots at the same moment see each other's claims at once.
    """
    live = dict(
        ShardHeartbeat.objects.filter(seen_at__gte=Now() - datetime.timedelta(seconds=ttl)).values_list(
            "shard_id", "capacity"
        )
    )
    held = dict(
        Session.objects.filter(lease_owner__in=list(live), lease_expires_at__gte=Now())
        .values("lease_owner")
        .annotate(n=Count("pk"))
        .values_list("lease_owner", "n")
    )
    return {shard: (capacity, held.get(shard, 0)) for shard, capacity in live.items()}


# --- Placement ------------------------------------------------------------------------


def fair_slice(loads: dict[str, tuple[int, int]], me: str, waiting: list[uuid.UUID]) -> list[uuid.UUID]:
    """Of the bots waiting, the part that brings shard ``me`` to its fair share.

    Each live shard's fair share of all bots (held and waiting) is in proportion to
    its capacity. Shards placing at the same moment compute the same shares over
    the same waiting list and take disjoint slices of it, in the order of their ids.
    A draining shard (pool/recycle.py) advertises a capacity of 0: no share.
    """
    capacity = sum(c for c, _ in loads.values())
    if len(loads) == 1 or not capacity:
        return waiting
    bots = sum(h for _, h in loads.values()) + len(waiting)
    fair = {shard: max(0, math.ceil(bots * c / capacity) - h) for shard, (c, h) in loads.items()}
    order = sorted(loads)
    start = sum(fair[shard] for shard in order[: order.index(me)])
    return waiting[start : start + fair[me]]


class Placement:
    """Which of the waiting bots a shard takes: its fair slice, and any bot left waiting a whole TTL.

    The shard whose share a bot is may have no room for its provider (neonize
    has a capacity of its own): after a lease TTL, whoever has room takes it.
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.waiting_since: dict[uuid.UUID, float] = {}

    def choose(self, loads: dict[str, tuple[int, int]], me: str, waiting: list[uuid.UUID]) -> list[uuid.UUID]:
        mine = fair_slice(loads, me, waiting)
        now = time.monotonic()
        self.waiting_since = {bot: self.waiting_since.get(bot, now) for bot in waiting}
        late = [bot for bot in waiting if now - self.waiting_since[bot] >= self.ttl and bot not in mine]
        return mine + late
