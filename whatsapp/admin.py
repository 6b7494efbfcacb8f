from __future__ import annotations

from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from whatsapp.models import Session, SessionEvent


class SessionEventInline(admin.TabularInline):
    model = SessionEvent
    fields = ["version", "event", "status", "detail", "created_at"]
    readonly_fields = fields
    ordering = ["-version"]
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = False


@admin.register(Session)
class SessionAdmin(admin.ModelAdmin):
    list_display = ["bot", "status", "desired_connected", "phone", "lease_owner", "failures", "updated_at"]
    list_filter = ["status", "desired_connected", "bot__whatsapp_provider"]
    search_fields = ["bot__name", "bot__owner__username", "phone", "jid", "lid", "push_name"]
    list_select_related = ["bot"]
    # Connection internals are written by the pool through one path (invariant 2).
    readonly_fields = [f.name for f in Session._meta.fields]
    inlines = [SessionEventInline]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        # Every field is read-only: a Save button would save nothing.
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(SessionEvent)
class SessionEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "bot", "version", "event", "status", "detail"]
    list_filter = ["event", "status"]
    search_fields = ["session__bot__name", "detail"]
    list_select_related = ["session__bot"]
    readonly_fields = ["session", "version", "event", "status", "detail", "frame", "created_at"]

    # The bot's name, not the session's own string, which shows its current status
    # beside the status of the event.
    @admin.display(description=_("bot"), ordering="session__bot__name")
    def bot(self, event: SessionEvent) -> str:
        return event.session.bot.name

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


admin.site.site_header = _("WhatsApp AI bots")
admin.site.site_title = _("WhatsApp AI bots")
