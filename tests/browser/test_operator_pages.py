"""An operator in a real browser: log in, create a bot in the wizard, scan its live QR, watch it connect and talk.

Real daphne and pool processes on the simulator, against the test database; Chromium through Playwright.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re

import pytest
import zxingcpp
from axe_playwright_python.sync_playwright import Axe
from django.conf import settings
from PIL import Image

from bots.models import Bot, Message
from tests.whatsapp.live import QR_PAYLOAD, decode_qr
from whatsapp.models import Session

pytestmark = [pytest.mark.browser, pytest.mark.processes, pytest.mark.django_db(transaction=True)]

# Live updates come within a second; the first QR needs the pool to claim the bot.
LIVE = 15_000
REPLY = "Abrimos sim, das 8h às 12h."
# The AI reply pipeline (bots/replies.py) is built beside these pages; without it the test writes the reply itself.
HAS_REPLIES = importlib.util.find_spec("bots.replies") is not None and importlib.util.find_spec("tests.fake_gemini")


@pytest.fixture
def gemini():
    """A fake Gemini that answers REPLY, for the pool's reply pipeline, when this tree has one."""
    if not HAS_REPLIES:
        yield None
        return
    from tests.fake_gemini import FakeGemini, answer

    with FakeGemini(api_key=settings.GEMINI_API_KEY) as fake:
        fake.script(answer(REPLY))
        yield fake


def new_page(browser, web, locale: str = "en-US", init_script: str | None = None):
    context = browser.new_context(base_url=web.base, locale=locale, viewport={"width": 1200, "height": 900})
    context.set_default_timeout(LIVE)
    if init_script:
        context.add_init_script(init_script)
    return context.new_page()


def log_in(page, username: str) -> None:
    page.goto("/login/")
    page.locator("#id_username").fill(username)
    page.locator("#id_password").fill("password-" + username)
    page.locator("form[action='/login/'] button[type=submit]").click()
    page.wait_for_url("**/")


def api(page, path: str, body: dict | None = None):
    """The JSON API with the page's own session and CSRF token, as the page's scripts would call it."""
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    response = page.request.post(
        path,
        data=json.dumps(body or {}),
        headers={"Content-Type": "application/json", "X-CSRFToken": csrf},
    )
    assert response.status < 300, (response.status, response.text())
    return response.json() if response.text() else None


def shown_qr(page) -> str:
    """The QR code the page shows, read twice as a phone would: from the image data and from the pixels."""
    image = page.locator("#qr")
    from_data = decode_qr(image.get_attribute("src"))
    results = zxingcpp.read_barcodes(Image.open(io.BytesIO(image.screenshot())))
    assert [r.text for r in results] == [from_data], "the rendered image decodes to the same payload"
    return from_data


def test_it_creates_a_bot_pairs_it_live_and_shows_its_conversation(browser, web, pool, gemini, alice, shot):
    pool(**({"GEMINI_BASE_URL": gemini.url} if gemini else {}))
    page = new_page(browser, web)
    log_in(page, "alice")
    page.get_by_role("heading", name="Your bots").wait_for()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    shot(page, "bot-list-empty")

    # The wizard: name and persona, AI settings, provider.
    page.get_by_role("link", name="Create your first bot").click()
    page.get_by_role("heading", name="Step 1 of 3: Name and persona").wait_for()
    page.get_by_role("textbox", name="Name").click()
    page.get_by_role("button", name="Next").click()
    page.get_by_text("This field is required.").wait_for()
    page.get_by_role("textbox", name="Name").fill("Padaria Pão Quente")
    page.get_by_role("textbox", name="System prompt").fill("Você é a atendente da Padaria Pão Quente.")
    shot(page, "wizard-persona")
    page.get_by_role("button", name="Next").click()
    page.get_by_role("heading", name="Step 2 of 3: AI settings").wait_for()
    assert page.get_by_role("textbox", name="Gemini model").input_value() == "gemini-2.5-flash"
    page.get_by_role("spinbutton", name="Temperature").fill("0.4")
    shot(page, "wizard-ai")
    page.keyboard.press("Enter")  # the keyboard goes on as well as the mouse
    page.get_by_role("heading", name="Step 3 of 3: WhatsApp provider").wait_for()
    page.get_by_label("Simulator").check()
    shot(page, "wizard-provider")
    page.get_by_role("button", name="Create and link to WhatsApp").click()

    # Straight to pairing: the QR appears by itself, and refreshes in place.
    page.wait_for_url(re.compile(r"/bots/[0-9a-f-]{36}/$"))
    bot = Bot.objects.get(owner=alice)
    assert (bot.name, bot.whatsapp_provider, bot.temperature) == ("Padaria Pão Quente", "simulator", 0.4)
    assert bot.system_prompt.startswith("Você é a atendente")
    page.locator("#qr").wait_for()
    page.locator("#live-mode[data-mode=live]").wait_for()
    page.evaluate("window.notReloaded = true")
    payload = shown_qr(page)
    assert QR_PAYLOAD.match(payload), payload
    assert re.search(r"The code changes in \d+ s\.", page.locator(".countdown").inner_text())
    assert page.locator(f"#status-{bot.pk}").inner_text() == "waiting for QR scan"
    shot(page, "pairing", full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth"), "no sideways scrolling on a phone"
    assert page.locator("#qr").bounding_box()["width"] <= 390
    shot(page, "pairing-on-a-phone")
    page.set_viewport_size({"width": 1200, "height": 900})

    # The phone scans what the page shows; the page turns "connected" without a reload.
    api(page, f"/api/bots/{bot.pk}/simulator/scan", {"qr": payload, "phone": "5511987654321", "pushName": "Pão Quente"})
    page.get_by_text("Connected. The bot answers messages sent to this number.").wait_for()
    assert page.locator(f"#status-{bot.pk}").inner_text() == "connected"
    assert page.locator("#pairing-panel").inner_text().count("+5511987654321") == 1
    assert page.evaluate("window.notReloaded") is True
    assert page.locator("#history .event").first.inner_text().startswith("connected")
    assert page.locator("#connection-announce").inner_text() == "WhatsApp: connected"
    shot(page, "connected")

    # Someone writes: the conversation appears in the list, live.
    hello = {"from": "5511955554444", "text": "Oi! Vocês abrem domingo?", "pushName": "Maria"}
    api(page, f"/api/bots/{bot.pk}/simulator/inbound", hello)
    page.locator("#chat-list").get_by_text("Maria").wait_for()
    shot(page, "conversation-list")
    page.locator("#chat-list a").first.click()
    page.locator("#messages .msg-in").get_by_text("Oi! Vocês abrem domingo?").wait_for()
    page.evaluate("window.notReloaded = true")
    inbound = Message.objects.get(bot=bot, direction="in")

    if not HAS_REPLIES:
        # No reply pipeline in this tree: the bot's reply is written as the pipeline would write it.
        Message.objects.create(
            bot=bot, chat=inbound.chat, direction="out", text=REPLY, status="sent", in_reply_to=inbound
        )
    # The reply appears by itself, and once sent, so does its status.
    page.locator("#messages .msg-out[data-status=sent]").get_by_text(REPLY).wait_for()
    assert Message.objects.get(bot=bot, direction="out", text=REPLY).in_reply_to == inbound
    shot(page, "conversation-reply")

    # The operator writes too: the message is queued for the outbox at once.
    page.get_by_role("textbox", name="Message").fill("Obrigada pela visita!")
    page.get_by_role("button", name="Send").click()
    page.locator("#messages .msg-out").get_by_text("Obrigada pela visita!").wait_for()
    assert page.evaluate("window.notReloaded") is True
    sent = Message.objects.get(bot=bot, direction="out", text="Obrigada pela visita!")
    assert (sent.chat, sent.in_reply_to) == (inbound.chat, None)
    if HAS_REPLIES:
        # The outbox sends it, and the page shows that too.
        page.locator(f"#msg-{sent.pk}[data-status=sent]").wait_for()
    ids = page.locator("#messages li").evaluate_all("items => items.map(item => item.id)")
    assert len(ids) == len(set(ids)) == 3, "each message once, however it reached the page"
    shot(page, "conversation-sent")

    # The bot list's badges are live too: the phone unlinks the device, the badge says so.
    page.get_by_role("link", name="Your bots").click()
    badge = page.locator(f"#status-{bot.pk}")
    assert badge.inner_text() == "connected"
    page.locator("#live-mode[data-mode=live]").wait_for()
    api(page, f"/api/bots/{bot.pk}/simulator/unlink")
    page.locator(f"#status-{bot.pk}.status-logged_out").wait_for()
    assert badge.inner_text() == "logged out"
    shot(page, "bot-list-live-badge")


# Fails every WebSocket as an unreachable server would (error, then close 1006).
NO_WEBSOCKETS = """
window.WebSocket = class {
  constructor(url) {
    this.url = url;
    this.readyState = 3;
    setTimeout(() => {
      if (this.onerror) this.onerror(new Event("error"));
      if (this.onclose) this.onclose({code: 1006});
    }, 10);
  }
  send() {} close() {} addEventListener() {}
};
"""


def test_it_expires_an_unscanned_qr_and_retries_with_polling_when_websockets_fail(browser, web, pool, alice, shot):
    pool(WHATSAPP_QR_TIMEOUT="10")
    bot = Bot.objects.create(owner=alice, name="Loja", whatsapp_provider="simulator")
    page = new_page(browser, web, init_script=NO_WEBSOCKETS)
    log_in(page, "alice")
    page.get_by_role("link", name="Loja").click()
    page.locator("#live-mode[data-mode=polling]").wait_for()
    page.evaluate("window.notReloaded = true")
    page.get_by_role("button", name="Link to WhatsApp").click()
    page.locator("#qr").wait_for()
    first = shown_qr(page)
    shot(page, "polling-qr")

    page.get_by_text("The QR code expired before it was scanned.").wait_for(timeout=25_000)
    assert page.locator(f"#status-{bot.pk}").inner_text() == "QR expired"
    shot(page, "qr-expired")
    page.get_by_role("button", name="Show a new QR code").click()
    page.locator("#qr").wait_for()
    retried = shown_qr(page)
    assert retried != first and QR_PAYLOAD.match(retried)
    assert page.evaluate("window.notReloaded") is True
    assert Session.objects.get(pk=bot.pk).status == "qr_required"
    shot(page, "qr-retried")


def test_it_speaks_the_browsers_language_and_switches_on_request(browser, web, alice, shot):
    page = new_page(browser, web, locale="pt-BR")
    page.goto("/login/")
    page.get_by_role("heading", name="Entrar").wait_for()
    shot(page, "login-pt-br")
    log_in(page, "alice")
    page.get_by_role("heading", name="Seus bots").wait_for()
    page.get_by_role("link", name="Crie seu primeiro bot").click()
    page.get_by_role("heading", name="Passo 1 de 3: Nome e persona").wait_for()
    assert page.locator("html").get_attribute("lang") == "pt-br"
    shot(page, "wizard-pt-br")

    page.get_by_label("Idioma").select_option("en")
    page.get_by_role("button", name="Mudar idioma").click()
    page.get_by_role("heading", name="Step 1 of 3: Name and persona").wait_for()
    shot(page, "wizard-switched-to-english")


def test_the_bot_list_follows_bots_created_elsewhere_without_a_reload(browser, web, pool, alice, shot):
    """A list open in one tab shows the bot another tab (here, a script) created, its status moving live."""
    pool()
    page = new_page(browser, web)
    log_in(page, "alice")
    page.get_by_text("You have no bots yet").wait_for()
    page.locator("#live-mode[data-mode=live]").wait_for()
    page.evaluate("window.notReloaded = true")
    errors = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)

    created = api(page, "/api/bots", {"name": "Sorveteria", "whatsappProvider": "simulator"})

    row = page.get_by_role("row", name=re.compile("Sorveteria"))
    row.wait_for()
    page.locator(f"#status-{created['id']}").filter(has_text="waiting for QR scan").wait_for()
    shot(page, "bot-list-follows")
    api(page, f"/api/bots/{created['id']}/simulator/scan", {"phone": "5511912345678"})
    page.locator(f"#status-{created['id']}").filter(has_text="connected").wait_for()
    row.get_by_role("link", name="Sorveteria").wait_for()
    assert page.evaluate("window.notReloaded") is True
    assert not [e for e in errors if "oobErrorNoTarget" in e], errors


def test_the_pages_work_under_their_content_security_policy_and_it_stops_injected_scripts(
    browser, web, pool, alice, shot
):
    """No violation while an operator works (htmx, the live socket, the QR image); an injected script never runs."""
    pool()
    page = new_page(browser, web)
    violations = []
    page.on(
        "console",
        lambda message: violations.append(message.text) if "Content Security Policy" in message.text else None,
    )
    log_in(page, "alice")
    page.get_by_role("link", name="Create your first bot").click()
    page.get_by_role("textbox", name="Name").fill("Floricultura")
    page.get_by_role("button", name="Next").click()
    # Each step loaded before the next click: a click during the load was lost (seen once in CI).
    page.get_by_role("heading", name="Step 2 of 3: AI settings").wait_for()
    page.get_by_role("button", name="Next").click()
    page.get_by_role("heading", name="Step 3 of 3: WhatsApp provider").wait_for()
    page.get_by_label("Simulator").check()
    page.get_by_role("button", name="Create and link to WhatsApp").click()
    page.locator("#qr").wait_for()
    page.locator("#live-mode[data-mode=live]").wait_for()
    assert violations == [], violations

    page.evaluate(
        """() => {
            const script = document.createElement("script");
            script.textContent = "window.injected = true";
            document.body.appendChild(script);
            document.body.insertAdjacentHTML("beforeend", '<img src="data:," onerror="window.injected = true">');
        }"""
    )
    page.wait_for_timeout(300)
    assert page.evaluate("window.injected") is None, "the policy refused the inline script and the handler"
    assert any("script-src" in v for v in violations), violations

    before_docs = len(violations)
    page.goto("/api/docs")
    page.locator(".swagger-ui .title").first.wait_for()
    page.get_by_role("link", name="Your bots").wait_for()
    shot(page, "api-docs")
    assert violations[before_docs:] == [], "Swagger UI runs under its page's policy"


def serious_violations(page, outside: str | None = None) -> list[str]:
    """axe-core's serious and critical findings on the page (those of our markup, when ``outside`` is a
    selector of markup a vendored library makes)."""
    found = []
    for violation in Axe().run(page).response["violations"]:
        if violation["impact"] not in ("serious", "critical"):
            continue
        nodes = [
            n
            for n in violation["nodes"]
            if not (outside and page.locator(n["target"][0]).evaluate(f"el => !!el.closest({json.dumps(outside)})"))
        ]
        if nodes:
            found.append(f"{violation['id']}: {[n['target'] for n in nodes]}")
    return found


def test_the_pages_and_the_api_docs_have_no_serious_accessibility_faults(browser, web, alice):
    page = new_page(browser, web)
    page.goto("/login/")
    assert serious_violations(page) == []
    log_in(page, "alice")
    page.get_by_text("You have no bots yet").wait_for()
    assert serious_violations(page) == []

    page.goto("/api/docs")
    page.locator(".swagger-ui .title").first.wait_for()
    assert page.evaluate("document.documentElement.lang") == "en"
    # Swagger UI's own markup (vendored by django-ninja) is not ours to fix; the page around it is.
    assert serious_violations(page, outside=".swagger-ui") == []
