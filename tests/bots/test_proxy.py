"""A bot's own proxy for its WhatsApp dials: set and read back through the API, the settings page and the admin.

That neonize dials through it is shown on the real library in tests/whatsapp/test_proxy.py.
"""

from __future__ import annotations

import pytest
from django.test import Client

from bots.models import Bot
from tests.helpers import assert_invalid, make_bot
from tests.test_settings import A_SECRET_KEY, error_of, start

PROXY = "socks5://maria:s3cret@proxy.example.com:1080"
BAD = [
    "ftp://proxy.example.com:21",  # a scheme whatsmeow does not dial through
    "socks5://proxy.example.com",  # no port
    "http://proxy.example.com:99999",
    "http://user:p%zz@proxy.example.com:8080",  # Go's url.Parse refuses a bad escape
    "proxy.example.com:1080",
    "http://proxy.example.com:8080/path?x=1",
]


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_api_sets_reads_and_clears_a_bots_proxy(alice_api):
    created = alice_api.post("/api/bots", {"name": "Loja", "whatsappProvider": "neonize", "proxy": f" {PROXY} "})
    assert created.status_code == 201, created.content
    bot_id = created.json()["id"]
    assert created.json()["proxy"] == PROXY, "stored trimmed, and shown to its owner"

    assert alice_api.get(f"/api/bots/{bot_id}").json()["proxy"] == PROXY
    http = alice_api.patch(f"/api/bots/{bot_id}", {"proxy": "http://10.0.0.5:3128"})
    assert http.json()["proxy"] == "http://10.0.0.5:3128"
    cleared = alice_api.patch(f"/api/bots/{bot_id}", {"proxy": ""})
    assert cleared.json()["proxy"] == "", "empty: the server's default"
    assert Bot.objects.get(pk=bot_id).proxy == ""


@pytest.mark.parametrize("value", BAD)
def test_the_api_refuses_a_proxy_neonize_cannot_dial_through(alice_api, alice, value):
    bot = make_bot(alice, whatsapp_provider="neonize", proxy=PROXY)

    error = assert_invalid(alice_api.patch(f"/api/bots/{bot.pk}", {"proxy": value}), "proxy")

    assert "socks5://" in error["fields"]["proxy"], error
    bot.refresh_from_db()
    assert bot.proxy == PROXY


def test_the_api_refuses_a_proxy_too_long_to_store(alice_api, alice):
    bot = make_bot(alice, whatsapp_provider="neonize")
    long_host = ".".join(["a" * 60] * 9)

    assert_invalid(alice_api.patch(f"/api/bots/{bot.pk}", {"proxy": f"http://{long_host}:8080"}), "proxy")


def test_the_settings_page_edits_a_whatsapp_bots_proxy(alice):
    bot = make_bot(alice, name="Loja", whatsapp_provider="neonize")
    client = logged_in(alice)
    fields = {"name": "Loja", "model": "gemini-2.5-flash", "temperature": "0.7", "is_active": "on"}

    refused = client.post(f"/bots/{bot.pk}/settings/", {**fields, "proxy": "socks5://proxy.example.com"})
    saved = client.post(f"/bots/{bot.pk}/settings/", {**fields, "proxy": PROXY})
    page = client.get(f"/bots/{bot.pk}/settings/").content.decode()

    assert refused.status_code == 422 and "socks5://user:password@proxy.example.com:1080" in refused.content.decode()
    assert saved.status_code == 302
    bot.refresh_from_db()
    assert bot.proxy == PROXY
    assert f'value="{PROXY}"' in page, "its owner sees what they set"


def test_the_settings_page_of_a_simulator_bot_has_no_proxy(alice):
    bot = make_bot(alice, whatsapp_provider="simulator")

    page = logged_in(alice).get(f"/bots/{bot.pk}/settings/").content.decode()

    assert 'name="name"' in page and 'name="proxy"' not in page


def test_the_wizard_asks_for_the_proxy_with_the_provider(alice):
    client = logged_in(alice)
    persona = {"name": "Loja", "system_prompt": ""}
    ai = {"model": "gemini-2.5-flash", "temperature": "0.7", "fallback_text": ""}

    step = client.post("/bots/new/", {"step": 1, **persona, **ai}).content.decode()
    created = client.post("/bots/new/", {"step": 2, **persona, **ai, "whatsapp_provider": "neonize", "proxy": PROXY})

    assert 'name="proxy"' in step
    assert created.status_code == 302
    assert Bot.objects.get(name="Loja").proxy == PROXY


def test_staff_set_and_see_a_bots_proxy_in_the_admin(staff, alice):
    client = logged_in(staff)
    form = {
        "owner": alice.pk,
        "name": "Loja",
        "is_active": "on",
        "model": "gemini-2.5-flash",
        "temperature": "0.7",
        "whatsapp_provider": "neonize",
    }

    refused = client.post("/admin/bots/bot/add/", {**form, "proxy": "ftp://proxy.example.com:21"})
    saved = client.post("/admin/bots/bot/add/", {**form, "proxy": PROXY})

    assert refused.status_code == 200 and "socks5://user:password@proxy.example.com:1080" in refused.content.decode()
    assert saved.status_code == 302, saved.content[:500]
    bot = Bot.objects.get(name="Loja")
    assert bot.proxy == PROXY
    assert f'value="{PROXY}"' in client.get(f"/admin/bots/bot/{bot.pk}/change/").content.decode()


@pytest.mark.parametrize(
    "value", ["ftp://maria:s3cret@proxy.example.com:21", "socks5://maria:s3cret@proxy.example.com"]
)
def test_a_bad_whatsapp_proxy_stops_start_up_without_showing_its_password(value):
    message = error_of(start("", SECRET_KEY=A_SECRET_KEY, WHATSAPP_PROXY=value))

    assert message.startswith("django.core.exceptions.ImproperlyConfigured: WHATSAPP_PROXY=")
    assert "maria:***@proxy.example.com" in message and "s3cret" not in message
