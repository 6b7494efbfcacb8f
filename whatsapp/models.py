from __future__ import annotations

import datetime

from django.db import models
from django.utils.translation import gettext_lazy as _


class Status(models.TextChoices):
    DISCONNECTED = "disconnected", _("disconnected")
    CONNECTING = "connecting", _("connecting")
    QR_REQUIRED = "qr_required", _("waiting for QR scan")
    CONNECTED = "connected", _("connected")
    QR_TIMEOUT = "qr_timeout", _("QR expired")
    LOGGED_OUT = "logged_out", _("logged out")
    FAILED = "failed", _("failed")


def rfc3339(value: datetime.datetime | None) -> str | None:
    """UTC time as RFC 3339 with a Z, to the millisecond."""
    if value is None:
        return None
    return value.astimezone(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Session(models.Model):
    """The WhatsApp connection of one bot: what is wanted, what is, who hosts it."""

    bot = models.OneToOneField("bots.Bot", models.CASCADE, primary_key=True, related_name="session")
    desired_connected = models.BooleanField(_("should be connected"), default=False)
    logout_requested = models.BooleanField(_("logout requested"), default=False)

    status = models.CharField(_("status"), max_length=16, choices=Status.choices, default=Status.DISCONNECTED)
    # Incremented by every status write: the `seq` of WebSocket frames.
    version = models.PositiveBigIntegerField(_("version"), default=0)
    qr_code = models.TextField(_("QR code (PNG data URL)"), blank=True)
    qr_expires_at = models.DateTimeField(_("QR expires"), null=True, blank=True)
    pairing_phone = models.CharField(_("pairing phone"), max_length=20, blank=True)
    pairing_code = models.CharField(_("pairing code"), max_length=9, blank=True)
    jid = models.CharField(_("device JID"), max_length=128, blank=True)
    # The account's LID (``<lid>@lid``), as whatsmeow knows it once connected: mentions in
    # LID-addressed groups name the bot by it.
    lid = models.CharField(_("LID"), max_length=128, blank=True)
    phone = models.CharField(_("phone"), max_length=20, blank=True)
    push_name = models.CharField(_("push name"), max_length=128, blank=True)
    last_error = models.CharField(_("last error"), max_length=500, blank=True)
    failures = models.PositiveIntegerField(_("consecutive failures"), default=0)
    next_retry_at = models.DateTimeField(_("next retry"), null=True, blank=True)
    updated_at = models.DateTimeField(_("status changed"), auto_now_add=True)

    lease_owner = models.CharField(_("hosting shard"), max_length=64, blank=True, db_index=True)
    lease_expires_at = models.DateTimeField(_("lease expires"), null=True, blank=True)
    lease_epoch = models.PositiveBigIntegerField(_("lease epoch"), default=0)

    class Meta:
        verbose_name = _("WhatsApp session")
        verbose_name_plural = _("WhatsApp sessions")

    def __str__(self) -> str:
        return f"{self.bot_id}: {self.status}"

    def status_payload(self) -> dict:
        """The status object of the JSON API (docs/api.md)."""
        payload: dict = {"status": self.status}
        if self.status == Status.QR_REQUIRED:
            if self.qr_code:
                payload["qrCode"] = self.qr_code
            if self.qr_expires_at:
                payload["qrExpiresAt"] = rfc3339(self.qr_expires_at)
            if self.pairing_code:
                payload["pairingCode"] = self.pairing_code
        for key, value in (("jid", self.jid), ("phone", self.phone), ("pushName", self.push_name)):
            if value:
                payload[key] = value
        if self.last_error:
            payload["lastError"] = self.last_error
        payload["seq"] = self.version
        payload["updatedAt"] = rfc3339(self.updated_at)
        return payload


class SessionEvent(models.Model):
    """Append-only, bounded log of status changes: history and the live feed without Redis."""

    session = models.ForeignKey(Session, models.CASCADE, related_name="events")
    version = models.PositiveBigIntegerField(_("version"))
    event = models.CharField(_("event"), max_length=16)
    status = models.CharField(_("status"), max_length=16, choices=Status.choices)
    detail = models.CharField(_("detail"), max_length=500, blank=True)
    # The WebSocket frame as it was broadcast, replayed by consumers without Redis.
    frame = models.JSONField(_("frame"), default=dict)
    created_at = models.DateTimeField(_("time"), auto_now_add=True)

    class Meta:
        ordering = ["session", "version"]
        verbose_name = _("session event")
        verbose_name_plural = _("session events")
        constraints = [models.UniqueConstraint(fields=["session", "version"], name="session_event_version")]

    def __str__(self) -> str:
        return f"#{self.version} {self.event}"


class ConnectRequest(models.Model):
    """One connect request, kept for the rate limits (docs/invariants.md, connection lifecycle)."""

    bot = models.ForeignKey("bots.Bot", models.CASCADE, related_name="connect_requests")
    user = models.ForeignKey("auth.User", models.CASCADE, related_name="connect_requests")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        indexes = [
            models.Index(fields=["bot", "created_at"], name="connect_request_bot"),
            models.Index(fields=["user", "created_at"], name="connect_request_user"),
        ]

    def __str__(self) -> str:
        return f"{self.bot_id} at {self.created_at}"


# --- The simulator (docs/simulator.md): WhatsApp's servers and the phone, in a store of their own ---
# (the "simulator" database, whatsapp/routers.py). They name their bot by id only: no constraint,
# no cascade across databases; WhatsApp too keeps what it holds when a bot is deleted.

SIMULATED_BOT = {"on_delete": models.DO_NOTHING, "db_constraint": False, "related_name": "+"}


class SimulatorDevice(models.Model):
    """A simulated linked device: its auth state, as whatsmeow keeps a real one."""

    bot = models.OneToOneField("bots.Bot", primary_key=True, **SIMULATED_BOT)
    jid = models.CharField(max_length=128)
    phone = models.CharField(max_length=20)
    push_name = models.CharField(max_length=128, blank=True)
    paired_at = models.DateTimeField(auto_now_add=True)
    # The live connection of this device, if any: WhatsApp allows one per device.
    connection_id = models.CharField(max_length=64, blank=True)
    last_seen = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.jid


class SimulatorCommand(models.Model):
    """Something the phone or the network does to a bot (scan, unlink, drop), acted on by its shard."""

    class Kind(models.TextChoices):
        SCAN = "scan"
        UNLINK = "unlink"
        DROP = "drop"
        # The server answers the connection with <failure reason="code"> (tests write it directly).
        REFUSE = "refuse"
        # Keepalives go unanswered for a while, the socket still up: no Disconnected (tests write it).
        STALL = "stall"

    bot = models.ForeignKey("bots.Bot", **SIMULATED_BOT)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)
    done_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["bot", "done_at"], name="sim_command_pending")]

    def __str__(self) -> str:
        return f"{self.kind} {self.bot_id}"


class SimulatorInbound(models.Model):
    """A message waiting on WhatsApp's servers for the bot, like its offline queue."""

    bot = models.ForeignKey("bots.Bot", **SIMULATED_BOT)
    wa_id = models.CharField(max_length=128)
    chat = models.CharField(max_length=128)
    sender = models.CharField(max_length=128)
    # The phone JID of a sender (with from_me, of the customer) addressed by LID: whatsmeow's
    # SenderAlt (RecipientAlt), when WhatsApp gives it.
    sender_alt = models.CharField(max_length=128, blank=True)
    push_name = models.CharField(max_length=128, blank=True)
    from_me = models.BooleanField(default=False)
    type = models.CharField(max_length=16, default="text")
    text = models.TextField(blank=True)
    mentions = models.JSONField(default=list)
    timestamp = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["bot", "delivered_at"], name="sim_inbound_pending")]

    def __str__(self) -> str:
        return f"{self.wa_id} from {self.sender}"


class SimulatorSent(models.Model):
    """What the simulated network received from a bot; kept across restarts."""

    bot = models.ForeignKey("bots.Bot", **SIMULATED_BOT)
    wa_id = models.CharField(max_length=128, unique=True)
    to = models.CharField(max_length=128)
    text = models.TextField()
    # The sender's own id for the message (the platform's outbox row): the same ref twice is one message.
    ref = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["bot", "ref"], condition=~models.Q(ref=""), name="sim_sent_once_per_ref")
        ]

    def __str__(self) -> str:
        return f"{self.wa_id} to {self.to}"


class ShardHeartbeat(models.Model):
    """A live shard and what it can hold: for placement, health checks and metrics."""

    shard_id = models.CharField(max_length=64, primary_key=True)
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    capacity = models.PositiveIntegerField()
    hosted = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(auto_now_add=True)
    seen_at = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name = _("shard")
        verbose_name_plural = _("shards")

    def __str__(self) -> str:
        return self.shard_id
