from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from django.utils.translation import gettext_lazy as _


def gemini_configured(app_configs, **kwargs) -> list[checks.CheckMessage]:
    if settings.GEMINI_API_KEY:
        return []
    return [
        checks.Warning(
            "GEMINI_API_KEY is not set: every reply will be the bot's fallback text.",
            hint="Set GEMINI_API_KEY to an API key of the Gemini API.",
            id="bots.W001",
        )
    ]


class BotsConfig(AppConfig):
    name = "bots"
    verbose_name = _("Bots")

    def ready(self) -> None:
        checks.register(gemini_configured, deploy=True)
