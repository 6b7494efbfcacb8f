"""Forms for bots: the limits of the JSON API (docs/api.md), shared by the pages and the admin."""

from __future__ import annotations

import re

from django import forms
from django.conf import settings
from django.utils.translation import gettext_lazy as _

from bots.models import MODEL_NAME_PATTERN, Bot, Provider
from whatsapp import jids


class BotForm(forms.ModelForm):
    """Validates a bot as the API does, so no page or staff member saves a bot that cannot reply.

    Name: 1-80 characters after trimming (Django strips and requires it); prompt,
    fallback text: their model lengths; NUL characters are refused by Django's
    CharField; model and temperature as below.
    """

    class Meta:
        model = Bot
        fields = [
            "name",
            "is_active",
            "system_prompt",
            "model",
            "temperature",
            "fallback_text",
            "non_text_reply",
            "reply_in_groups",
            "whatsapp_provider",
            "proxy",
        ]
        widgets = {
            "system_prompt": forms.Textarea(attrs={"rows": 6}),
            "fallback_text": forms.Textarea(attrs={"rows": 2}),
            "non_text_reply": forms.Textarea(attrs={"rows": 2}),
            # The owner's own setting, shown to them and to staff; a password in it is never logged.
            "proxy": forms.TextInput(
                attrs={"inputmode": "url", "autocomplete": "off", "spellcheck": "false", "placeholder": "socks5://"}
            ),
        }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if "temperature" in self.fields:
            self.fields["temperature"].widget.attrs.update(min="0", max="2", step="0.1")

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


# The create-bot wizard: one form per step over the same validation, then the whole form at the end.


class PersonaStep(BotForm):
    title = _("Name and persona")

    class Meta(BotForm.Meta):
        fields = ["name", "system_prompt"]
        help_texts = {
            "name": _("How you will recognise the bot, e.g. “Bakery front desk”."),
            "system_prompt": _("Who the bot is and how it answers: the instructions Gemini follows for every reply."),
        }


class AiStep(BotForm):
    title = _("AI settings")

    class Meta(BotForm.Meta):
        fields = ["model", "temperature", "fallback_text", "reply_in_groups"]
        help_texts = {
            "model": _("The Gemini model that writes the replies."),
            "temperature": _("0 answers the same way every time; 2 is the most inventive."),
            "fallback_text": _("Sent when the AI cannot answer in time."),
            "reply_in_groups": _("In groups the bot answers only when it is mentioned."),
        }


class ProviderStep(BotForm):
    title = _("WhatsApp provider")

    class Meta(BotForm.Meta):
        fields = ["whatsapp_provider", "proxy"]
        widgets = {**BotForm.Meta.widgets, "whatsapp_provider": forms.RadioSelect}
        help_texts = {
            "whatsapp_provider": _(
                "WhatsApp links a real phone number. The simulator stands in for WhatsApp and the phone, "
                "for trying things out."
            ),
        }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Offer the simulator only where it runs.
        if not settings.WHATSAPP_SIMULATOR:
            field = self.fields["whatsapp_provider"]
            field.choices = [choice for choice in field.choices if choice[0] != Provider.SIMULATOR]


WIZARD_STEPS: list[type[BotForm]] = [PersonaStep, AiStep, ProviderStep]


class NewBotForm(BotForm):
    """Every field of the wizard, validated together before the bot is created."""

    class Meta(BotForm.Meta):
        fields = [name for step in WIZARD_STEPS for name in step._meta.fields]


class SettingsForm(BotForm):
    class Meta(BotForm.Meta):
        # The provider is chosen once, in the wizard.
        fields = [name for name in BotForm.Meta.fields if name != "whatsapp_provider"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.whatsapp_provider == Provider.SIMULATOR:
            del self.fields["proxy"]  # the simulator dials nothing


def validate_phone(value: str) -> str:
    try:
        return jids.phone_digits(value)
    except ValueError:
        raise forms.ValidationError(
            _("Enter the number in digits with the country code, e.g. 5511987654321."), code="invalid"
        ) from None


class PairPhoneForm(forms.Form):
    phone = forms.CharField(
        label=_("Phone number"),
        max_length=32,
        help_text=_("With the country code, e.g. 5511987654321."),
        widget=forms.TextInput(attrs={"inputmode": "tel", "autocomplete": "tel"}),
    )

    def clean_phone(self) -> str:
        return validate_phone(self.cleaned_data["phone"])


class SendMessageForm(forms.Form):
    text = forms.CharField(label=_("Message"), max_length=4096, widget=forms.Textarea(attrs={"rows": 2}))


class NewChatForm(SendMessageForm):
    to = forms.CharField(
        label=_("To"),
        max_length=64,
        help_text=_("A phone number with the country code, e.g. 5511987654321."),
        widget=forms.TextInput(attrs={"inputmode": "tel"}),
    )
    field_order = ["to", "text"]

    def clean_to(self) -> str:
        return f"{validate_phone(self.cleaned_data['to'])}@{jids.USER_SERVER}"
