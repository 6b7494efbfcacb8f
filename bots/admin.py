from __future__ import annotations

import re

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.utils.translation import gettext_lazy as _

from bots.models import MODEL_NAME_PATTERN, ApiToken, Bot, Message, Provider


class BotAdminForm(forms.ModelForm):
    """The limits the JSON API enforces (DESIGN.md section 6), so staff cannot save a bot that cannot reply."""

    class Meta:
        model = Bot
        fields = [
            "owner",
            "name",
            "is_active",
            "system_prompt",
            "model",
            "temperature",
            "fallback_text",
            "reply_in_groups",
            "whatsapp_provider",
        ]

    def clean_model(self) -> str:
        model = self.cleaned_data["model"]
        if not re.fullmatch(MODEL_NAME_PATTERN, model):
            raise forms.ValidationError(_("Use lower-case letters, digits, dots and hyphens, e.g. gemini-2.5-flash."))
        return model

    def clean_temperature(self) -> float:
        temperature = self.cleaned_data["temperature"]
        if not 0 <= temperature <= 2:
            raise forms.ValidationError(_("The temperature goes from 0 to 2."))
        return temperature

    def clean_whatsapp_provider(self) -> str:
        provider = self.cleaned_data["whatsapp_provider"]
        # Existing simulator bots stay editable after the simulator is switched off.
        changed = "whatsapp_provider" in self.changed_data
        if changed and provider == Provider.SIMULATOR and not settings.WHATSAPP_SIMULATOR:
            raise forms.ValidationError(_("The simulator is not enabled on this server."))
        return provider


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
        (_("AI"), {"fields": ["system_prompt", "model", "temperature", "fallback_text", "reply_in_groups"]}),
        (_("WhatsApp"), {"fields": ["whatsapp_provider"]}),
        (_("Times"), {"fields": ["created_at", "updated_at", "deleted_at"]}),
    ]

    @admin.display(description=_("WhatsApp"), ordering="session__status")
    def connection_status(self, bot: Bot) -> str:
        return bot.session.get_status_display()


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["created_at", "bot", "direction", "chat", "short_text", "type", "status", "ai_latency_ms"]
    list_filter = ["direction", "status", "type"]
    search_fields = ["chat", "sender", "wa_id", "text", "bot__name"]
    list_select_related = ["bot"]
    date_hierarchy = "created_at"
    # Messages are the record of what happened: staff read them, the pipeline writes them.
    readonly_fields = [f.name for f in Message._meta.fields]

    @admin.display(description=_("text"))
    def short_text(self, message: Message) -> str:
        return message.text[:80]

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

    def save_model(self, request, obj: ApiToken, form, change) -> None:
        secret = obj.set_new_secret()
        super().save_model(request, obj, form, change)
        messages.warning(
            request,
            _("The new token is %(secret)s — copy it now: it will not be shown again.") % {"secret": secret},
        )
