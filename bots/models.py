from __future__ import annotations

import hashlib
import secrets
import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from botplatform import outbound_proxy
from bots import broadcasts
from whatsapp.models import Session

DEFAULT_FALLBACK_TEXT = "Desculpe, não consegui responder agora. Por favor, tente novamente em instantes."
DEFAULT_NON_TEXT_REPLY = "Por enquanto só consigo ler mensagens de texto. Pode me escrever sua pergunta?"
MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9.-]{0,63}$"
# The longest text a bot sends in one WhatsApp message: longer replies are cut, never split.
TEXT_LIMIT = 4096


def default_gemini_model() -> str:
    return settings.GEMINI_MODEL


def default_provider() -> str:
    return settings.WHATSAPP_DEFAULT_PROVIDER


def validate_proxy(value: str) -> None:
    try:
        outbound_proxy.proxy_url(value)
    except ValueError:
        raise ValidationError(
            _(
                "Enter http://, https:// or socks5:// then host:port, e.g. socks5://user:password@proxy.example.com:1080."
            ),
            code="invalid",
        ) from None


class Provider(models.TextChoices):
    NEONIZE = "neonize", _("WhatsApp (neonize)")
    SIMULATOR = "simulator", _("Simulator")


class BotQuerySet(models.QuerySet["Bot"]):
    def alive(self) -> BotQuerySet:
        return self.filter(deleted_at__isnull=True)

    def visible_to(self, user) -> BotQuerySet:
        """The bots a user may see and change: their own, not deleted."""
        if not user.is_authenticated:
            return self.none()
        return self.alive().filter(owner=user)


class Bot(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="bots", verbose_name=_("owner"))
    name = models.CharField(_("name"), max_length=80)
    system_prompt = models.TextField(_("system prompt"), max_length=8000, blank=True)
    model = models.CharField(_("Gemini model"), max_length=64, default=default_gemini_model)
    temperature = models.FloatField(_("temperature"), default=0.7)
    whatsapp_provider = models.CharField(
        _("WhatsApp provider"), max_length=16, choices=Provider.choices, default=default_provider
    )
    is_active = models.BooleanField(
        _("active"), default=True, help_text=_("Inactive bots store messages but do not reply.")
    )
    fallback_text = models.TextField(
        _("fallback text"),
        max_length=1000,
        default=DEFAULT_FALLBACK_TEXT,
        blank=True,
        help_text=_("Sent when Gemini cannot answer. Empty: send nothing."),
    )
    non_text_reply = models.TextField(
        _("reply to non-text messages"),
        max_length=1000,
        default=DEFAULT_NON_TEXT_REPLY,
        blank=True,
        help_text=_("Sent for images, audio and stickers. Empty: do not answer them."),
    )
    reply_in_groups = models.BooleanField(_("reply in groups"), default=False)
    # neonize dials through it (whatsmeow's SetProxyAddress); empty: WHATSAPP_PROXY, if set. Simulator bots ignore it.
    proxy = models.CharField(
        _("proxy"),
        max_length=outbound_proxy.MAX_LENGTH,
        blank=True,
        validators=[validate_proxy],
        help_text=_(
            "WhatsApp bots only: the proxy their connection goes through, as http://, https:// or "
            "socks5://host:port, with user:password@ before the host if it asks for them. "
            "Empty: the server's default."
        ),
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)
    # DELETE hides the bot at once; the hosting shard logs it out and releases it.
    deleted_at = models.DateTimeField(_("deleted"), null=True, blank=True, db_index=True)

    objects = BotQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("bot")
        verbose_name_plural = _("bots")

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs) -> None:
        """The one write path of a bot's fields: its session row comes with it, and its lists hear of it."""
        adding = self._state.adding
        previous_owner = getattr(self, "_loaded_owner_id", None)
        with transaction.atomic():
            super().save(*args, **kwargs)
            if adding:
                Session.objects.create(bot=self)
            broadcasts.list_changed(self.owner_id)
            if previous_owner is not None and previous_owner != self.owner_id:
                # Given to someone else: the old owner's sockets of it close, and their list loses it.
                broadcasts.bot_access_changed(self.pk, self.owner_id)
                broadcasts.list_changed(previous_owner)
        self._loaded_owner_id = self.owner_id

    @classmethod
    def from_db(cls, db, field_names, values) -> Bot:
        bot = super().from_db(db, field_names, values)
        bot._loaded_owner_id = bot.__dict__.get("owner_id")
        return bot


class Direction(models.TextChoices):
    IN = "in", _("inbound")
    OUT = "out", _("outbound")


class MessageStatus(models.TextChoices):
    RECEIVED = "received", _("received")
    REPLYING = "replying", _("replying")
    REPLIED = "replied", _("replied")
    IGNORED = "ignored", _("ignored")
    QUEUED = "queued", _("queued")
    SENDING = "sending", _("sending")
    SENT = "sent", _("sent")
    FAILED = "failed", _("failed")


class MessageType(models.TextChoices):
    TEXT = "text", _("text")
    IMAGE = "image", _("image")
    AUDIO = "audio", _("audio")
    STICKER = "sticker", _("sticker")
    OTHER = "other", _("other")


class MessageQuerySet(models.QuerySet["Message"]):
    def queue(self, *, bot_id: uuid.UUID, chat: str, text: str, sender: str = "", **fields) -> Message:
        """An outbound text message for the outbox: the shard hosting the bot sends it."""
        message = self.create(
            bot_id=bot_id,
            chat=chat,
            sender=sender,
            direction=Direction.OUT,
            type=MessageType.TEXT,
            text=text,
            status=MessageStatus.QUEUED,
            **fields,
        )
        broadcasts.messages_changed(bot_id)
        return message


class Message(models.Model):
    """The inbox and the outbox of a bot (docs/architecture.md, data model)."""

    bot = models.ForeignKey(Bot, models.CASCADE, related_name="messages", verbose_name=_("bot"))
    chat = models.CharField(_("chat JID"), max_length=128)
    sender = models.CharField(_("sender JID"), max_length=128, blank=True)
    push_name = models.CharField(_("push name"), max_length=128, blank=True)
    direction = models.CharField(_("direction"), max_length=3, choices=Direction.choices)
    wa_id = models.CharField(_("WhatsApp id"), max_length=128, blank=True)
    type = models.CharField(_("type"), max_length=16, choices=MessageType.choices, default=MessageType.TEXT)
    text = models.TextField(_("text"), blank=True)
    from_me = models.BooleanField(_("sent by the bot's own phone"), default=False)
    # Who the message mentions (group messages are answered only when the bot is among them).
    mentions = models.JSONField(_("mentions"), default=list, blank=True)
    status = models.CharField(_("status"), max_length=16, choices=MessageStatus.choices)
    in_reply_to = models.OneToOneField(
        "self", models.SET_NULL, null=True, blank=True, related_name="reply", verbose_name=_("in reply to")
    )
    error = models.TextField(_("error"), blank=True)
    ai_latency_ms = models.PositiveIntegerField(_("AI latency (ms)"), null=True, blank=True)
    sent_at = models.DateTimeField(_("WhatsApp time"), null=True, blank=True)
    created_at = models.DateTimeField(_("created"), default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    objects = MessageQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "id"]
        verbose_name = _("message")
        verbose_name_plural = _("messages")
        constraints = [
            # Invariant 4: an inbound message is stored once, however often it is delivered.
            models.UniqueConstraint(
                fields=["bot", "chat", "wa_id", "direction"],
                condition=~models.Q(wa_id=""),
                name="message_unique_wa_id",
            ),
        ]
        indexes = [
            models.Index(fields=["bot", "chat", "created_at"], name="message_chat_time"),
            models.Index(fields=["bot", "status"], name="message_bot_status"),
            # What the web follows without Redis (bots/follower.py).
            models.Index(fields=["updated_at"], name="message_updated"),
        ]

    def __str__(self) -> str:
        return f"{self.direction} {self.chat}: {self.text[:40]}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ApiTokenQuerySet(models.QuerySet["ApiToken"]):
    def find(self, token: str) -> ApiToken | None:
        """The token of an active user that this secret is, or None."""
        row = self.select_related("user").filter(key_hash=hash_token(token), user__is_active=True).first()
        if row is None:
            return None
        now = timezone.now()
        # Touch at most once a minute: no write on every request.
        if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
            ApiToken.objects.filter(pk=row.pk).update(last_used_at=now)
        return row

    def user_for(self, token: str):
        """The active user a bearer token belongs to, or None."""
        row = self.find(token)
        return row.user if row is not None else None


class ApiToken(models.Model):
    """An API token. Only its SHA-256 is stored; the secret is shown once."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.CASCADE, related_name="api_tokens", verbose_name=_("user")
    )
    name = models.CharField(_("name"), max_length=100, blank=True)
    prefix = models.CharField(_("prefix"), max_length=8, editable=False)
    key_hash = models.CharField(_("SHA-256"), max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True, editable=False)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("API token")
        verbose_name_plural = _("API tokens")

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    def set_new_secret(self) -> str:
        """Give the token a fresh secret; returns it, the only time it is seen."""
        secret = "-"
        while secret[0] in "-_":  # never mistaken for an option on a command line (revoke_api_token PREFIX)
            secret = secrets.token_urlsafe(32)
        self.prefix = secret[:8]
        self.key_hash = hash_token(secret)
        return secret

    def revoke(self) -> None:
        """Delete the token; the sockets it opened close (4401)."""
        token_id = self.pk
        with transaction.atomic():
            self.delete()
            broadcasts.token_revoked(self.user_id, token_id)

    @classmethod
    def issue(cls, user, name: str = "") -> tuple[ApiToken, str]:
        token = cls(user=user, name=name)
        secret = token.set_new_secret()
        token.save()
        return token, secret


class Dial(models.Model):
    """One neonize dial of a hosted bot, kept for its owner's dial budget (WHATSAPP_DIAL_RATE_USER)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="+")
    bot = models.ForeignKey(Bot, models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["user", "created_at"], name="dial_user_time")]

    def __str__(self) -> str:
        return f"{self.bot_id} at {self.created_at}"
