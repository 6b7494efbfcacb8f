from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.auth import admin as auth_admin
from django.contrib.auth import get_user_model
from django.template.loader import render_to_string
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from bots import broadcasts, control
from bots.forms import BotForm
from bots.models import ApiToken, Bot, Message
from whatsapp.models import Session


class BotAdminForm(BotForm):
    """The API's limits (bots/forms.py), plus the owner that staff choose."""

    class Meta(BotForm.Meta):
        fields = ["owner", *BotForm.Meta.fields]


class DeletedFilter(admin.SimpleListFilter):
    title = _("deleted")
    parameter_name = "deleted"

    def lookups(self, request, model_admin):
        return [("no", _("Live")), ("yes", _("Deleted"))]

    def queryset(self, request, queryset):
        if self.value() == "no":
            return queryset.filter(deleted_at__isnull=True)
        if self.value() == "yes":
            return queryset.filter(deleted_at__isnull=False)
        return queryset


class SessionInline(admin.StackedInline):
    """The bot's WhatsApp session, read-only, with its history from the event log."""

    model = Session
    verbose_name_plural = _("WhatsApp session")
    fields = ["status", "phone", "push_name", "last_error", "failures", "lease_owner", "updated_at", "history"]
    readonly_fields = fields
    can_delete = False

    @admin.display(description=_("history"))
    def history(self, session: Session) -> str:
        events = session.events.order_by("-version")[:50]
        return render_to_string("admin/bots/session_history.html", {"events": events})

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        # Written by the pool through one path (invariant 2); staff use the actions.
        return False


@admin.register(Bot)
class BotAdmin(admin.ModelAdmin):
    form = BotAdminForm
    list_display = ["name", "owner", "whatsapp_provider", "connection_status", "is_active", "model", "created_at"]
    list_filter = ["whatsapp_provider", "is_active", "session__status", DeletedFilter]
    search_fields = ["name", "owner__username", "session__phone", "id"]
    list_select_related = ["owner", "session"]
    readonly_fields = ["id", "created_at", "updated_at", "deleted_at"]
    autocomplete_fields = ["owner"]
    fieldsets = [
        (None, {"fields": ["id", "owner", "name", "is_active"]}),
        (
            _("AI"),
            {
                "fields": [
                    "system_prompt",
                    "model",
                    "temperature",
                    "fallback_text",
                    "non_text_reply",
                    "reply_in_groups",
                ]
            },
        ),
        (_("WhatsApp"), {"fields": ["whatsapp_provider", "proxy"]}),
        (_("Times"), {"fields": ["created_at", "updated_at", "deleted_at"]}),
    ]
    inlines = [SessionInline]
    actions = ["connect_whatsapp", "disconnect_whatsapp", "logout_whatsapp"]

    def delete_model(self, request, obj: Bot) -> None:
        # As the API's DELETE: hidden at once, the device logged out by its shard, its sockets closed.
        control.delete_bot(obj)

    def delete_queryset(self, request, queryset) -> None:
        for bot in queryset.filter(deleted_at__isnull=True):
            control.delete_bot(bot)

    def get_inline_instances(self, request, obj=None):
        # A new bot's session is created with it (Bot.save): there is nothing to show before.
        return super().get_inline_instances(request, obj) if obj is not None else []

    @admin.display(description=_("WhatsApp"), ordering="session__status")
    def connection_status(self, bot: Bot) -> str:
        return bot.session.get_status_display()

    @admin.action(description=_("Connect to WhatsApp"))
    def connect_whatsapp(self, request, queryset) -> None:
        """A connect request per bot, as the operator's; the rate limits count the staff member's requests."""
        connected, limited = 0, []
        for bot in queryset.filter(deleted_at__isnull=True):
            try:
                control.request_connect(bot, request.user)
            except control.RateLimited as exc:
                limited.append(f"{bot.name} ({exc.retry_after} s)")
            else:
                connected += 1
        if connected:
            self.message_user(
                request,
                ngettext(
                    "Asked %(count)d bot to connect: its QR code shows on its page.",
                    "Asked %(count)d bots to connect: their QR codes show on their pages.",
                    connected,
                )
                % {"count": connected},
                messages.SUCCESS,
            )
        if limited:
            self.message_user(
                request,
                _("Too many connect requests; try again later for: %(bots)s.") % {"bots": ", ".join(limited)},
                messages.ERROR,
            )

    @admin.action(description=_("Disconnect from WhatsApp (the phone stays linked)"))
    def disconnect_whatsapp(self, request, queryset) -> None:
        count = len([control.request_disconnect(bot) for bot in queryset])
        message = ngettext("Asked %(count)d bot to disconnect.", "Asked %(count)d bots to disconnect.", count)
        self.message_user(request, message % {"count": count}, messages.SUCCESS)

    @admin.action(description=_("Log out of WhatsApp (unlink the device)"))
    def logout_whatsapp(self, request, queryset) -> None:
        count = len([control.request_logout(bot) for bot in queryset])
        message = ngettext("Asked %(count)d bot to log out.", "Asked %(count)d bots to log out.", count)
        self.message_user(request, message % {"count": count}, messages.SUCCESS)


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "bot",
        "direction",
        "chat",
        "short_text",
        "type",
        "status",
        "ai_latency_ms",
        "short_error",
    ]
    list_filter = ["direction", "status", "type"]
    search_fields = ["chat", "sender", "wa_id", "text", "bot__name"]
    list_select_related = ["bot"]
    date_hierarchy = "created_at"
    # Messages are the record of what happened: staff read them, the pipeline writes them.
    readonly_fields = [f.name for f in Message._meta.fields]

    @admin.display(description=_("text"))
    def short_text(self, message: Message) -> str:
        return message.text[:80]

    @admin.display(description=_("reason"))
    def short_error(self, message: Message) -> str:
        # Why it was ignored or failed, or what Gemini did when the fallback text went.
        return message.error[:80]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["prefix", "name", "user", "created_at", "last_used_at"]
    search_fields = ["name", "prefix", "user__username"]
    list_select_related = ["user"]
    autocomplete_fields = ["user"]
    fields = ["user", "name", "prefix", "created_at", "last_used_at"]
    readonly_fields = ["prefix", "created_at", "last_used_at"]

    def has_change_permission(self, request, obj=None) -> bool:
        # A token is created or revoked, never edited.
        return obj is None

    def delete_model(self, request, obj: ApiToken) -> None:
        obj.revoke()

    def delete_queryset(self, request, queryset) -> None:
        for token in queryset:
            token.revoke()

    def save_model(self, request, obj: ApiToken, form, change) -> None:
        secret = obj.set_new_secret()
        super().save_model(request, obj, form, change)
        messages.warning(
            request,
            _("The new token is %(secret)s — copy it now: it will not be shown again.") % {"secret": secret},
        )


class UserAdmin(auth_admin.UserAdmin):
    """Django's, and a user who is deactivated or deleted loses their open sockets at once."""

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        if change and not obj.is_active:
            broadcasts.user_revoked(obj.pk)

    def delete_model(self, request, obj) -> None:
        user_id = obj.pk
        super().delete_model(request, obj)
        broadcasts.user_revoked(user_id)

    def delete_queryset(self, request, queryset) -> None:
        user_ids = list(queryset.values_list("pk", flat=True))
        super().delete_queryset(request, queryset)
        for user_id in user_ids:
            broadcasts.user_revoked(user_id)


admin.site.unregister(get_user_model())
admin.site.register(get_user_model(), UserAdmin)
