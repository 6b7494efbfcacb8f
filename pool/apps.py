from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class PoolConfig(AppConfig):
    """The pool process (``run_whatsapp``): it hosts the WhatsApp clients. No models of its own."""

    name = "pool"
    verbose_name = _("WhatsApp pool")
