"""The WhatsApp part of the JSON API and the simulator's endpoints (DESIGN.md sections 5, 6 and 7).

No pool runs here, so nothing acts on what the web writes: these tests check what a
client is answered and the rows left for the shards, through Django's whole request
stack as in tests/bots/test_api.py. Where a test needs a shard to answer while the web
waits, another thread writes what the shard would, through the same write path.

connect-whatsapp and pair-phone close their database connection before they wait (they
hold none while waiting), which would end the transaction a plain `db` test runs in:
their tests use a transactional database (`@transactional`).
"""

from __future__ import annotations

import datetime
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.utils import timezone

from bots.models import Bot
from tests.helpers import ApiClient, assert_error, assert_invalid, make_bot
from whatsapp import jids, state
from whatsapp.models import (
    ConnectRequest,
    Session,
    SessionEvent,
    SimulatorCommand,
    SimulatorDevice,
    SimulatorInbound,
    SimulatorSent,
    Status,
)
from whatsapp.state import qr_image as png_data_url

transactional = pytest.mark.django_db(transaction=True)

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
PHONE = "5511987654321"
USER_JID = f"{PHONE}@s.whatsapp.net"
DEVICE_JID = f"{PHONE}:12@s.whatsapp.net"
GROUP = "120363025246125888@g.us"
MIB = 1024 * 1024
# Valid JSON, just over the limit: only the size is wrong with it.
TOO_LARGE = json.dumps({"phone": PHONE, "pushName": "x" * MIB}).encode()
QR_CODE = png_data_url("2@Zm9v,YmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYg==,a2V5,a2V5")
QR_EXPIRES_AT = datetime.datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.UTC)
PAIRING_CODE = "ABCD-EFGH"
# The same number in other scripts' digits, which a \d would match: no WhatsApp number.
ARABIC_INDIC_PHONE = "".join(chr(0x0660 + int(digit)) for digit in PHONE)
FULLWIDTH_PHONE = "".join(chr(0xFF10 + int(digit)) for digit in PHONE)
BASE_KEYS = {"status", "seq", "updatedAt"}

WHATSAPP_ROUTES = [
    pytest.param("POST", "connect-whatsapp", None, id="connect"),
    pytest.param("POST", "pair-phone", {"phone": PHONE}, id="pair-phone"),
    pytest.param("GET", "whatsapp-status", None, id="status"),
    pytest.param("POST", "disconnect-whatsapp", None, id="disconnect"),
    pytest.param("POST", "logout-whatsapp", None, id="logout"),
]
SIMULATOR_ROUTES = [
    pytest.param("POST", "simulator/scan", {"phone": PHONE}, id="scan"),
    pytest.param("POST", "simulator/inbound", {"from": PHONE, "text": "Oi"}, id="inbound"),
    pytest.param("POST", "simulator/unlink", None, id="unlink"),
    pytest.param("POST", "simulator/drop", None, id="drop"),
    pytest.param("GET", "simulator/sent", None, id="sent"),
]


def url(bot_or_id, route: str) -> str:
    return f"/api/bots/{getattr(bot_or_id, 'id', bot_or_id)}/{route}"


def send(api: ApiClient, path: str, raw: bytes, content_type: str):
    """POSTs these bytes with this Content-Type ("": none), as they are."""
    extra = {"CONTENT_TYPE": content_type} if content_type or raw else {}
    return api.client.generic("POST", path, raw, headers=api.headers, **extra)


def session_of(bot: Bot) -> Session:
    return Session.objects.get(pk=bot.pk)


def recorded(bot: Bot) -> dict:
    """Everything the web may write for a bot, to check that a refused request wrote nothing."""
    session = session_of(bot)
    return {
        "status": session.status,
        "version": session.version,
        "desired_connected": session.desired_connected,
        "logout_requested": session.logout_requested,
        "pairing_phone": session.pairing_phone,
        "failures": session.failures,
        "events": SessionEvent.objects.filter(session=session).count(),
        "connect_requests": ConnectRequest.objects.filter(bot=bot).count(),
        "commands": SimulatorCommand.objects.filter(bot=bot).count(),
        "inbound": SimulatorInbound.objects.filter(bot=bot).count(),
    }


def show_qr(bot: Bot, **changes) -> Session:
    """What a shard records when WhatsApp gives the bot a QR code."""
    changes.setdefault("qr_code", QR_CODE)
    changes.setdefault("qr_expires_at", QR_EXPIRES_AT)
    return state.record(bot.pk, "qr", Status.QR_REQUIRED, **changes)


def connect(bot: Bot) -> Session:
    """What a shard records when the phone paired the bot."""
    return state.record(
        bot.pk, "connected", Status.CONNECTED, jid=DEVICE_JID, phone=PHONE, push_name="Padaria Pão Quente"
    )


def deleted_bot(owner: User) -> Bot:
    bot = make_bot(owner, name="Gone")
    Bot.objects.filter(pk=bot.pk).update(deleted_at=timezone.now())
    return bot


@pytest.fixture
def wait(monkeypatch) -> Callable[[float], None]:
    """Sets how long connect-whatsapp and pair-phone wait for a QR or a code."""

    def set_wait(seconds: float) -> None:
        monkeypatch.setattr("bots.api.whatsapp.CONNECT_WAIT_SECONDS", seconds)

    set_wait(0.3)
    return set_wait


@contextmanager
def shard_answers(bot: Bot, write: Callable[[], object]) -> Iterator[None]:
    """Runs `write` in another thread as soon as the web has recorded a connect request.

    It waits for the request rather than for a fixed time, so the write always lands
    while the web is waiting, never before.
    """
    before = session_of(bot).version

    def run() -> None:
        try:
            deadline = time.monotonic() + 10
            while not Session.objects.filter(pk=bot.pk, version__gt=before, status=Status.CONNECTING).exists():
                assert time.monotonic() < deadline, "the web never recorded a connect request"
                time.sleep(0.02)
            write()
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(run)
        yield
        future.result(timeout=15)


def csrf_client(user: User) -> tuple[Client, str]:
    client = Client(enforce_csrf_checks=True)
    client.get("/login/")
    client.force_login(user)
    return client, client.cookies["csrftoken"].value


# --- Who may call what ---------------------------------------------------------------


@pytest.mark.parametrize(("method", "route", "body"), WHATSAPP_ROUTES + SIMULATOR_ROUTES)
def test_it_answers_401_without_credentials(anonymous_api, alice, method, route, body):
    bot = make_bot(alice)
    before = recorded(bot)

    for path in (url(bot, route), url(uuid.uuid4(), route)):
        response = anonymous_api.request(method, path, body)
        assert_error(response, 401, "unauthorized")
        assert response["WWW-Authenticate"] == "Bearer"
    assert recorded(bot) == before


@transactional
@pytest.mark.parametrize(("method", "route", "body"), WHATSAPP_ROUTES + SIMULATOR_ROUTES)
def test_it_answers_404_for_a_bot_that_is_not_the_callers(alice_api, bob_api, alice, method, route, body, wait):
    bot = make_bot(alice)
    show_qr(bot)
    SimulatorDevice.objects.create(bot=bot, jid=DEVICE_JID, phone=PHONE)
    gone = deleted_bot(alice)
    before = recorded(bot), recorded(gone)

    responses = {
        "bobs-request": bob_api.request(method, url(bot, route), body),
        "missing": alice_api.request(method, url(uuid.uuid4(), route), body),
        "deleted": alice_api.request(method, url(gone, route), body),
    }
    if method == "POST":
        # Whatever the body, bob learns nothing about alice's bot: 404 comes first.
        responses |= {
            "bobs-invalid-body": bob_api.post(url(bot, route), {"colour": "red"}),
            "bobs-body-too-large": bob_api.post(url(bot, route), raw=TOO_LARGE),
            "bobs-body-not-json": bob_api.post(url(bot, route), raw=b"phone=1", content_type="text/plain"),
        }

    for case, response in responses.items():
        assert response.status_code == 404, (case, response.content[:300])
        assert_error(response, 404, "not_found")
    assert (recorded(bot), recorded(gone)) == before


BODILESS_ROUTES = [param for param in WHATSAPP_ROUTES + SIMULATOR_ROUTES if param.values[::2] == ("POST", None)]


@transactional
@pytest.mark.parametrize(("method", "route", "body"), BODILESS_ROUTES)
def test_it_refuses_a_body_over_1_mib_where_it_takes_none(alice_api, alice, method, route, body):
    bot = make_bot(alice)
    show_qr(bot)
    SimulatorDevice.objects.create(bot=bot, jid=DEVICE_JID, phone=PHONE)
    before = recorded(bot)

    for raw in (TOO_LARGE, b"x" * (MIB + 1)):
        assert_error(alice_api.post(url(bot, route), raw=raw), 413, "payload_too_large")
    assert recorded(bot) == before


@transactional
def test_it_refuses_a_browser_connect_without_a_csrf_token(alice, wait):
    bot = make_bot(alice)
    before = recorded(bot)
    client, token = csrf_client(alice)

    refused = client.post(url(bot, "connect-whatsapp"))
    assert_error(refused, 403, "csrf_failed")
    assert recorded(bot) == before

    accepted = client.post(url(bot, "connect-whatsapp"), headers={"X-CSRFToken": token})
    assert accepted.status_code == 202, accepted.content
    assert session_of(bot).status == Status.CONNECTING


# --- connect-whatsapp ----------------------------------------------------------------


@transactional
def test_it_requests_a_connection(alice_api, alice, wait):
    bot = make_bot(alice)
    # Left over from an earlier attempt: a connect request starts afresh.
    Session.objects.filter(pk=bot.pk).update(
        failures=5, next_retry_at=timezone.now(), last_error="dial tcp: i/o timeout", pairing_phone=PHONE
    )
    before = session_of(bot).version

    response = alice_api.post(url(bot, "connect-whatsapp"))

    # No shard shows a QR here, so after waiting it answers that the bot is connecting.
    assert response.status_code == 202, response.content
    body = response.json()
    assert set(body) == BASE_KEYS
    assert body["status"] == "connecting"
    assert RFC3339_UTC.match(body["updatedAt"])
    session = session_of(bot)
    assert body["seq"] == session.version == before + 1
    assert session.status == Status.CONNECTING
    assert session.desired_connected is True
    assert session.logout_requested is False
    assert (session.failures, session.next_retry_at, session.last_error) == (0, None, "")
    # A QR connection: the shard must not ask for a pairing code.
    assert session.pairing_phone == ""
    event = SessionEvent.objects.filter(session=session).latest("version")
    assert (event.version, event.event, event.status) == (before + 1, "connecting", "connecting")
    assert list(ConnectRequest.objects.values_list("bot", "user")) == [(bot.pk, alice.pk)]


@transactional
@pytest.mark.parametrize("status", ["disconnected", "connecting", "qr_timeout", "logged_out", "failed"])
def test_it_requests_a_connection_from_any_state_but_a_qr_or_connected(alice_api, alice, wait, status):
    bot = make_bot(alice)
    state.record(bot.pk, "test", status, last_error="" if status == "disconnected" else "earlier")
    before = session_of(bot).version

    response = alice_api.post(url(bot, "connect-whatsapp"))

    assert response.status_code == 202, response.content
    assert response.json()["status"] == "connecting"
    assert "lastError" not in response.json()
    session = session_of(bot)
    assert (session.status, session.version, session.desired_connected) == ("connecting", before + 1, True)
    assert ConnectRequest.objects.filter(bot=bot).count() == 1


@transactional
def test_it_answers_at_once_with_the_qr_already_showing(alice_api, alice, wait):
    bot = make_bot(alice)
    show_qr(bot)
    before = recorded(bot)
    wait(30)

    response = alice_api.post(url(bot, "connect-whatsapp"))

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == BASE_KEYS | {"qrCode", "qrExpiresAt"}
    assert body["status"] == "qr_required"
    assert body["qrCode"] == QR_CODE
    assert body["qrExpiresAt"] == "2030-01-02T03:04:05.678Z"
    assert body["seq"] == before["version"]
    # Not a new connect request: nothing written, nothing counted against the rate.
    assert recorded(bot) == before


@transactional
def test_it_answers_at_once_when_connected(alice_api, alice, wait):
    bot = make_bot(alice)
    connect(bot)
    before = recorded(bot)

    response = alice_api.post(url(bot, "connect-whatsapp"))

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == BASE_KEYS | {"jid", "phone", "pushName"}
    assert (body["status"], body["jid"], body["phone"]) == ("connected", DEVICE_JID, PHONE)
    assert body["pushName"] == "Padaria Pão Quente"
    assert recorded(bot) == before


@transactional
def test_it_answers_with_the_qr_that_appears_while_it_waits(alice_api, alice, wait):
    bot = make_bot(alice)
    # Long enough never to run out: the answer comes when the QR does.
    wait(10)

    with shard_answers(bot, lambda: show_qr(bot)):
        response = alice_api.post(url(bot, "connect-whatsapp"))

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["status"], body["qrCode"], body["qrExpiresAt"]) == ("qr_required", QR_CODE, "2030-01-02T03:04:05.678Z")
    assert body["seq"] == session_of(bot).version
    events = SessionEvent.objects.filter(session_id=bot.pk).order_by("version")
    assert [(e.event, e.status) for e in events] == [("connecting", "connecting"), ("qr", "qr_required")]


@transactional
def test_it_stops_waiting_when_the_connection_fails(alice_api, alice, wait):
    bot = make_bot(alice)
    wait(30)
    started = time.monotonic()

    with shard_answers(bot, lambda: state.record(bot.pk, "failed", Status.FAILED, last_error="client_outdated")):
        response = alice_api.post(url(bot, "connect-whatsapp"))

    # No QR is coming: it answers with the failure rather than waiting out its deadline.
    assert time.monotonic() - started < 30
    assert response.status_code == 202, response.content
    body = response.json()
    assert (body["status"], body["lastError"]) == ("failed", "client_outdated")


# --- Rate limits ---------------------------------------------------------------------


def assert_rate_limited(response, window: int) -> int:
    assert_error(response, 429, "rate_limited")
    retry_after = response["Retry-After"]
    assert retry_after.isdigit(), retry_after
    assert 1 <= int(retry_after) <= window
    return int(retry_after)


@transactional
def test_it_limits_connect_requests_per_bot(alice_api, alice, wait, settings):
    settings.WHATSAPP_CONNECT_RATE_BOT = (2, 60)
    wait(0)
    bot = make_bot(alice)

    first = alice_api.post(url(bot, "connect-whatsapp"))
    second = alice_api.post(url(bot, "connect-whatsapp"))
    before = recorded(bot)
    third = alice_api.post(url(bot, "connect-whatsapp"))

    assert (first.status_code, second.status_code) == (202, 202)
    assert_rate_limited(third, 60)
    assert recorded(bot) == before
    assert before["connect_requests"] == 2
    # Another bot of hers has its own count.
    assert alice_api.post(url(make_bot(alice), "connect-whatsapp")).status_code == 202


@transactional
def test_it_limits_connect_requests_per_user_across_bots(alice_api, alice, wait, settings):
    settings.WHATSAPP_CONNECT_RATE_USER = (2, 600)
    wait(0)
    bots = [make_bot(alice, name=f"Bot {n}") for n in range(3)]

    accepted = [alice_api.post(url(bot, "connect-whatsapp")) for bot in bots[:2]]
    before = recorded(bots[2])
    limited = alice_api.post(url(bots[2], "connect-whatsapp"))
    pairing = alice_api.post(url(bots[0], "pair-phone"), {"phone": PHONE})

    assert [r.status_code for r in accepted] == [202, 202]
    assert_rate_limited(limited, 600)
    assert_rate_limited(pairing, 600)
    assert recorded(bots[2]) == before
    assert session_of(bots[0]).pairing_phone == ""
    assert ConnectRequest.objects.filter(user=alice).count() == 2


@transactional
def test_it_counts_pair_phone_as_a_connect_request(alice_api, alice, wait, settings):
    settings.WHATSAPP_CONNECT_RATE_BOT = (2, 60)
    wait(0)
    bot = make_bot(alice)

    paired = alice_api.post(url(bot, "pair-phone"), {"phone": PHONE})
    connected = alice_api.post(url(bot, "connect-whatsapp"))
    before = recorded(bot)
    limited_pair = alice_api.post(url(bot, "pair-phone"), {"phone": PHONE})
    limited_connect = alice_api.post(url(bot, "connect-whatsapp"))

    assert (paired.status_code, connected.status_code) == (202, 202)
    assert_rate_limited(limited_pair, 60)
    assert_rate_limited(limited_connect, 60)
    assert recorded(bot) == before


@transactional
def test_it_does_not_limit_bob_for_alices_requests(alice_api, bob_api, alice, bob, wait, settings):
    settings.WHATSAPP_CONNECT_RATE_USER = (1, 600)
    wait(0)
    alices, bobs = make_bot(alice), make_bot(bob)

    assert alice_api.post(url(alices, "connect-whatsapp")).status_code == 202
    assert_rate_limited(alice_api.post(url(make_bot(alice), "connect-whatsapp")), 600)

    assert bob_api.post(url(bobs, "connect-whatsapp")).status_code == 202
    assert session_of(bobs).status == Status.CONNECTING


@transactional
def test_it_forgets_requests_that_left_the_window(alice_api, alice, wait, settings):
    settings.WHATSAPP_CONNECT_RATE_BOT = (2, 60)
    wait(0)
    bot = make_bot(alice)
    now = timezone.now()
    for age in (50, 30):
        request = ConnectRequest.objects.create(bot=bot, user=alice)
        ConnectRequest.objects.filter(pk=request.pk).update(created_at=now - datetime.timedelta(seconds=age))

    limited = alice_api.post(url(bot, "connect-whatsapp"))
    # Retry-After says when the oldest request leaves the window: in 10 s.
    assert 9 <= assert_rate_limited(limited, 60) <= 10

    ConnectRequest.objects.filter(bot=bot).update(created_at=now - datetime.timedelta(seconds=61))
    assert alice_api.post(url(bot, "connect-whatsapp")).status_code == 202


def concurrently(api: ApiClient, paths: list[str]) -> list[int]:
    """POSTs to every path at the same moment, each from its own thread and client, like a burst of scripts."""
    start = threading.Barrier(len(paths))

    def post(path: str) -> int:
        try:
            start.wait(timeout=10)
            return Client().post(path, headers=api.headers).status_code
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        return list(pool.map(post, paths))


@transactional
def test_it_counts_concurrent_requests_for_a_bot(alice_api, alice, wait, settings):
    settings.WHATSAPP_CONNECT_RATE_BOT = (2, 60)
    wait(0)
    bot = make_bot(alice)

    codes = concurrently(alice_api, [url(bot, "connect-whatsapp")] * 8)

    # Each request sees the ones before it, as if they had come one by one.
    assert sorted(codes) == [202] * 2 + [429] * 6
    assert ConnectRequest.objects.filter(bot=bot).count() == 2


@transactional
def test_it_counts_concurrent_requests_of_a_user(alice_api, alice, wait, settings):
    settings.WHATSAPP_CONNECT_RATE_USER = (2, 600)
    wait(0)
    bots = [make_bot(alice, name=f"Bot {n}") for n in range(8)]

    codes = concurrently(alice_api, [url(bot, "connect-whatsapp") for bot in bots])

    assert sorted(codes) == [202] * 2 + [429] * 6
    assert ConnectRequest.objects.filter(user=alice).count() == 2
    assert Session.objects.filter(status=Status.CONNECTING).count() == 2


@transactional
def test_it_does_not_count_an_answer_given_at_once(alice_api, alice, wait, settings):
    settings.WHATSAPP_CONNECT_RATE_BOT = (1, 60)
    bot = make_bot(alice)
    show_qr(bot)

    for _ in range(3):
        assert alice_api.post(url(bot, "connect-whatsapp")).status_code == 200
    assert not ConnectRequest.objects.exists()


# --- pair-phone ----------------------------------------------------------------------


@transactional
@pytest.mark.parametrize(
    "phone",
    [
        PHONE,
        f"+{PHONE}",
        f"  {PHONE} ",
        USER_JID,
        DEVICE_JID,
    ],
)
def test_it_requests_a_pairing_code_for_a_phone(alice_api, alice, wait, phone):
    bot = make_bot(alice)
    before = session_of(bot).version

    response = alice_api.post(url(bot, "pair-phone"), {"phone": phone})

    # No shard asks WhatsApp for a code here: after waiting, the bot is connecting.
    assert response.status_code == 202, response.content
    assert set(response.json()) == BASE_KEYS
    assert response.json()["status"] == "connecting"
    session = session_of(bot)
    assert session.pairing_phone == PHONE
    assert (session.status, session.version, session.desired_connected) == ("connecting", before + 1, True)
    assert ConnectRequest.objects.filter(bot=bot, user=alice).count() == 1


@transactional
def test_it_keeps_every_digit_of_the_phone(alice_api, alice, wait):
    bot = make_bot(alice)

    # No country code is guessed and no leading zero dropped.
    response = alice_api.post(url(bot, "pair-phone"), {"phone": "+0011987654321"})

    assert response.status_code == 202, response.content
    assert session_of(bot).pairing_phone == "0011987654321"


@transactional
def test_it_answers_with_the_pairing_code_that_arrives_while_it_waits(alice_api, alice, wait):
    bot = make_bot(alice)
    wait(10)

    with shard_answers(bot, lambda: show_qr(bot, qr_code="", pairing_code=PAIRING_CODE)):
        response = alice_api.post(url(bot, "pair-phone"), {"phone": f"+{PHONE}"})

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == BASE_KEYS | {"pairingCode", "qrExpiresAt"}
    assert (body["status"], body["pairingCode"]) == ("qr_required", PAIRING_CODE)
    assert body["qrExpiresAt"] == "2030-01-02T03:04:05.678Z"
    assert session_of(bot).pairing_phone == PHONE


@transactional
def test_it_stops_waiting_for_a_code_when_the_linked_device_reconnects(alice_api, alice, wait):
    bot = make_bot(alice)
    wait(30)
    started = time.monotonic()

    # The bot's device was still linked: the shard resumes it, no code is coming.
    with shard_answers(bot, lambda: connect(bot)):
        response = alice_api.post(url(bot, "pair-phone"), {"phone": PHONE})

    assert time.monotonic() - started < 30
    assert response.status_code == 202, response.content
    body = response.json()
    assert (body["status"], body["jid"]) == ("connected", DEVICE_JID)
    assert "pairingCode" not in body


@transactional
def test_it_requests_a_pairing_code_even_while_a_qr_is_showing(alice_api, alice, wait):
    bot = make_bot(alice)
    version = show_qr(bot).version

    response = alice_api.post(url(bot, "pair-phone"), {"phone": PHONE})

    # Unlike connect-whatsapp, the QR is not the answer: the phone asked for a code.
    assert response.status_code == 202, response.content
    assert set(response.json()) == BASE_KEYS
    session = session_of(bot)
    assert (session.status, session.version, session.qr_code) == ("connecting", version + 1, "")
    assert session.pairing_phone == PHONE


INVALID_PHONES = [
    pytest.param({"phone": "5511abc654321"}, "phone", id="letters"),
    pytest.param({"phone": "1234"}, "phone", id="too-short"),
    pytest.param({"phone": "1" * 21}, "phone", id="too-long"),
    pytest.param({"phone": ""}, "phone", id="empty"),
    pytest.param({"phone": "+"}, "phone", id="plus-alone"),
    pytest.param({"phone": "++5511987654321"}, "phone", id="two-pluses"),
    pytest.param({"phone": "+55 11 98765-4321"}, "phone", id="formatted"),
    pytest.param({"phone": "(11) 98765-4321"}, "phone", id="local-format"),
    pytest.param({"phone": ARABIC_INDIC_PHONE}, "phone", id="arabic-indic-digits"),
    pytest.param({"phone": FULLWIDTH_PHONE}, "phone", id="fullwidth-digits"),
    pytest.param({"phone": GROUP}, "phone", id="group-jid"),
    pytest.param({"phone": f"{PHONE}@c.us"}, "phone", id="other-server"),
    pytest.param({"phone": 5511987654321}, "phone", id="number"),
    pytest.param({"phone": None}, "phone", id="null"),
    pytest.param({"phone": [PHONE]}, "phone", id="list"),
    pytest.param({}, "phone", id="missing"),
    pytest.param({"phone": PHONE, "name": "Ana"}, "name", id="unknown-key"),
    pytest.param({"phone": PHONE, "pairingCode": PAIRING_CODE}, "pairingCode", id="code-as-key"),
    pytest.param({"phone": "55119876\x0054321"}, "phone", id="nul"),
]


@transactional
@pytest.mark.parametrize(("body", "field"), INVALID_PHONES)
def test_it_refuses_an_invalid_pair_phone_body(alice_api, alice, wait, body, field):
    bot = make_bot(alice)
    before = recorded(bot)

    error = assert_invalid(alice_api.post(url(bot, "pair-phone"), body), field)

    if field != "phone":
        assert error["fields"][field] == "Unknown field."
    assert recorded(bot) == before


@transactional
@pytest.mark.parametrize(
    ("raw", "content_type", "status", "code"),
    [
        pytest.param(json.dumps({"phone": PHONE}).encode(), "text/plain", 415, "unsupported_media_type", id="text"),
        pytest.param(b"phone=5511987654321", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        pytest.param(json.dumps({"phone": PHONE}).encode(), "", 415, "unsupported_media_type", id="no-type"),
        pytest.param(TOO_LARGE, "application/json", 413, "payload_too_large", id="too-large"),
        pytest.param(TOO_LARGE, "text/plain", 413, "payload_too_large", id="too-large-text"),
        pytest.param(b'{"phone": ', "application/json", 400, "invalid_json", id="truncated"),
        pytest.param(b"", "application/json", 400, "invalid_json", id="empty"),
        pytest.param(b'["5511987654321"]', "application/json", 400, "validation_error", id="array"),
    ],
)
def test_it_refuses_a_pair_phone_body_it_cannot_read(alice_api, alice, wait, raw, content_type, status, code):
    bot = make_bot(alice)
    before = recorded(bot)

    assert_error(send(alice_api, url(bot, "pair-phone"), raw, content_type), status, code)

    assert recorded(bot) == before


@transactional
def test_it_refuses_to_pair_a_connected_bot(alice_api, alice, wait, settings):
    bot = make_bot(alice)
    connect(bot)
    before = recorded(bot)

    assert_error(alice_api.post(url(bot, "pair-phone"), {"phone": PHONE}), 409, "already_connected")
    # An invalid body is a 400 first; a 409 comes before a 429.
    assert_invalid(alice_api.post(url(bot, "pair-phone"), {"phone": "x"}), "phone")
    settings.WHATSAPP_CONNECT_RATE_BOT = (0, 60)
    assert_error(alice_api.post(url(bot, "pair-phone"), {"phone": PHONE}), 409, "already_connected")
    assert recorded(bot) == before


# --- whatsapp-status -----------------------------------------------------------------


def test_it_reads_a_new_bots_status(alice_api, alice):
    bot = make_bot(alice)

    response = alice_api.get(url(bot, "whatsapp-status"))

    assert response.status_code == 200
    body = response.json()
    assert set(body) == BASE_KEYS
    assert (body["status"], body["seq"]) == ("disconnected", 0)
    assert RFC3339_UTC.match(body["updatedAt"]), body


def test_it_shows_the_qr_and_the_pairing_code_while_they_are_wanted(alice_api, alice):
    bot = make_bot(alice)
    session = show_qr(bot, pairing_code=PAIRING_CODE)

    body = alice_api.get(url(bot, "whatsapp-status")).json()

    assert set(body) == BASE_KEYS | {"qrCode", "qrExpiresAt", "pairingCode"}
    assert body["status"] == "qr_required"
    assert (body["qrCode"], body["pairingCode"]) == (QR_CODE, PAIRING_CODE)
    assert body["qrExpiresAt"] == "2030-01-02T03:04:05.678Z"
    assert RFC3339_UTC.match(body["qrExpiresAt"])
    assert body["seq"] == session.version


def test_it_shows_no_qr_once_the_bot_is_connected(alice_api, alice):
    bot = make_bot(alice)
    connect(bot)
    # Even a QR left in the row is not shown outside qr_required.
    Session.objects.filter(pk=bot.pk).update(
        qr_code=QR_CODE, qr_expires_at=QR_EXPIRES_AT, pairing_code=PAIRING_CODE, last_error="replaced earlier"
    )

    body = alice_api.get(url(bot, "whatsapp-status")).json()

    assert set(body) == BASE_KEYS | {"jid", "phone", "pushName", "lastError"}
    assert (body["status"], body["jid"], body["phone"], body["pushName"]) == (
        "connected",
        DEVICE_JID,
        PHONE,
        "Padaria Pão Quente",
    )
    assert body["lastError"] == "replaced earlier"


def test_it_shows_the_last_error(alice_api, alice):
    bot = make_bot(alice)
    state.record(bot.pk, "connecting", Status.CONNECTING, last_error="dial tcp: i/o timeout")

    body = alice_api.get(url(bot, "whatsapp-status")).json()

    assert set(body) == BASE_KEYS | {"lastError"}
    assert (body["status"], body["lastError"]) == ("connecting", "dial tcp: i/o timeout")


def test_it_counts_every_status_change_in_seq(alice_api, alice):
    bot = make_bot(alice)
    seqs = [alice_api.get(url(bot, "whatsapp-status")).json()["seq"]]
    for record in (
        lambda: state.record(bot.pk, "connecting", Status.CONNECTING),
        lambda: show_qr(bot),
        lambda: connect(bot),
    ):
        record()
        seqs.append(alice_api.get(url(bot, "whatsapp-status")).json()["seq"])

    assert seqs == [0, 1, 2, 3]
    # Reading changes nothing.
    assert alice_api.get(url(bot, "whatsapp-status")).json()["seq"] == 3


def test_it_shows_the_same_status_as_the_bot_object(alice_api, alice):
    bot = make_bot(alice)
    show_qr(bot, pairing_code=PAIRING_CODE)

    status = alice_api.get(url(bot, "whatsapp-status")).json()

    assert alice_api.get(f"/api/bots/{bot.id}").json()["whatsapp"] == status


# --- disconnect-whatsapp and logout-whatsapp -------------------------------------------


@pytest.mark.parametrize(("route", "logout"), [("disconnect-whatsapp", False), ("logout-whatsapp", True)])
def test_it_asks_the_shard_to_disconnect_or_log_out(alice_api, alice, route, logout):
    bot = make_bot(alice)
    Session.objects.filter(pk=bot.pk).update(desired_connected=True)
    connect(bot)
    before = recorded(bot)

    response = alice_api.post(url(bot, route))

    assert response.status_code == 202, response.content
    body = response.json()
    # The shard stops the client and records the new status; until then it is still connected.
    assert body == alice_api.get(url(bot, "whatsapp-status")).json()
    assert (body["status"], body["jid"], body["seq"]) == ("connected", DEVICE_JID, before["version"])
    session = session_of(bot)
    assert session.desired_connected is False
    assert session.logout_requested is logout
    assert recorded(bot) == {**before, "desired_connected": False, "logout_requested": logout}


@pytest.mark.parametrize("route", ["disconnect-whatsapp", "logout-whatsapp"])
def test_it_accepts_a_disconnect_or_logout_of_a_disconnected_bot(alice_api, alice, route):
    bot = make_bot(alice)

    response = alice_api.post(url(bot, route))

    assert response.status_code == 202
    assert set(response.json()) == BASE_KEYS
    assert response.json()["status"] == "disconnected"
    assert session_of(bot).desired_connected is False


@transactional
def test_it_connects_again_after_a_logout_request(alice_api, alice, wait):
    bot = make_bot(alice)
    alice_api.post(url(bot, "logout-whatsapp"))
    assert session_of(bot).logout_requested is True

    assert alice_api.post(url(bot, "connect-whatsapp")).status_code == 202

    session = session_of(bot)
    assert (session.desired_connected, session.logout_requested) == (True, False)


# --- Simulator: where it exists --------------------------------------------------------


@pytest.mark.parametrize(("method", "route", "body"), SIMULATOR_ROUTES)
def test_it_hides_the_simulator_when_it_is_disabled(alice_api, alice, settings, method, route, body):
    settings.WHATSAPP_SIMULATOR = False
    bot = make_bot(alice)
    show_qr(bot)
    before = recorded(bot)

    assert_error(alice_api.request(method, url(bot, route), body), 404, "not_found")
    if method == "POST":
        assert_error(alice_api.post(url(bot, route), raw=TOO_LARGE), 404, "not_found")
    assert recorded(bot) == before


@pytest.mark.parametrize(("method", "route", "body"), SIMULATOR_ROUTES)
def test_it_has_no_simulator_for_a_neonize_bot(alice_api, alice, method, route, body):
    bot = make_bot(alice, whatsapp_provider="neonize")
    show_qr(bot)
    before = recorded(bot)

    assert_error(alice_api.request(method, url(bot, route), body), 404, "not_found")
    assert recorded(bot) == before


# --- Simulator: scan -------------------------------------------------------------------


def scans(bot: Bot) -> list[dict]:
    return list(SimulatorCommand.objects.filter(bot=bot, kind="scan", done_at=None).values_list("data", flat=True))


@pytest.mark.parametrize(
    "setup",
    [
        pytest.param(lambda bot: None, id="disconnected"),
        pytest.param(lambda bot: state.record(bot.pk, "connecting", Status.CONNECTING), id="connecting"),
        pytest.param(lambda bot: show_qr(bot, qr_code="", qr_expires_at=None), id="qr-required-without-qr"),
        pytest.param(lambda bot: state.record(bot.pk, "qr_timeout", Status.QR_TIMEOUT), id="qr-timeout"),
        pytest.param(connect, id="connected"),
        pytest.param(
            # A QR left in the row after the status moved on is not showing.
            lambda bot: Session.objects.filter(pk=bot.pk).update(status=Status.CONNECTING, qr_code=QR_CODE),
            id="stale-qr",
        ),
    ],
)
def test_it_refuses_a_scan_when_no_qr_is_showing(alice_api, alice, setup):
    bot = make_bot(alice)
    setup(bot)

    assert_error(alice_api.post(url(bot, "simulator/scan"), {"phone": PHONE}), 409, "no_qr")
    assert_error(send(alice_api, url(bot, "simulator/scan"), b"", ""), 409, "no_qr")
    assert scans(bot) == []


def test_it_scans_the_qr(alice_api, alice):
    bot = make_bot(alice)
    show_qr(bot)
    before = recorded(bot)
    payload = "2@Zm9v,YmFy,YmF6,cXV4"

    response = alice_api.post(url(bot, "simulator/scan"), {"phone": f"+{PHONE}", "pushName": "Ana", "qr": payload})

    assert response.status_code == 202, response.content
    assert response.json() == {}
    assert scans(bot) == [{"phone": PHONE, "pushName": "Ana", "qr": payload}]
    # The web writes the command only; the shard pairs the bot.
    assert recorded(bot) == {**before, "commands": 1}


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        pytest.param(b"", "", id="no-content-type"),
        pytest.param(b"", "application/json", id="json"),
        pytest.param(b"", "text/plain", id="text"),
        pytest.param(b"", "application/x-www-form-urlencoded", id="form"),
        pytest.param(b"{}", "application/json", id="empty-object"),
    ],
)
def test_it_scans_without_a_body(alice_api, alice, raw, content_type):
    bot = make_bot(alice)
    show_qr(bot)

    response = send(alice_api, url(bot, "simulator/scan"), raw, content_type)

    assert response.status_code == 202, response.content
    assert scans(bot) == [{}]


def test_it_enters_the_pairing_code(alice_api, alice):
    bot = make_bot(alice)
    show_qr(bot, qr_code="", pairing_code=PAIRING_CODE)

    # As typed on a phone: any case, stray spaces.
    response = alice_api.post(url(bot, "simulator/scan"), {"code": " abcd-efgh ", "phone": PHONE})

    assert response.status_code == 202, response.content
    assert scans(bot) == [{"code": PAIRING_CODE, "phone": PHONE}]


@pytest.mark.parametrize(
    ("qr_code", "pairing_code", "code"),
    [
        pytest.param("", PAIRING_CODE, "WXYZ-1234", id="another-code"),
        pytest.param("", PAIRING_CODE, "ABCDEFGH", id="without-dash"),
        pytest.param(QR_CODE, "", PAIRING_CODE, id="qr-only"),
    ],
)
def test_it_refuses_a_wrong_pairing_code(alice_api, alice, qr_code, pairing_code, code):
    bot = make_bot(alice)
    show_qr(bot, qr_code=qr_code, pairing_code=pairing_code)

    assert_error(alice_api.post(url(bot, "simulator/scan"), {"code": code}), 409, "wrong_code")
    assert scans(bot) == []


@pytest.mark.parametrize(
    ("raw", "content_type", "status", "code"),
    [
        pytest.param(TOO_LARGE, "application/json", 413, "payload_too_large", id="too-large"),
        pytest.param(TOO_LARGE, "text/plain", 413, "payload_too_large", id="too-large-text"),
        pytest.param(b"x" * (MIB + 1), "", 413, "payload_too_large", id="too-large-untyped"),
        pytest.param(b'{"phone": "5511987654321"}', "text/plain", 415, "unsupported_media_type", id="text"),
        pytest.param(b"phone=5511987654321", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        pytest.param(b"{", "application/json", 400, "invalid_json", id="truncated"),
        pytest.param(b"[]", "application/json", 400, "validation_error", id="array"),
        pytest.param(b"null", "application/json", 400, "validation_error", id="null"),
    ],
)
def test_it_refuses_a_scan_body_it_cannot_read(alice_api, alice, raw, content_type, status, code):
    bot = make_bot(alice)
    show_qr(bot)

    assert_error(send(alice_api, url(bot, "simulator/scan"), raw, content_type), status, code)
    assert scans(bot) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"phone": "abc"}, "phone", id="phone-letters"),
        pytest.param({"phone": 5511987654321}, "phone", id="phone-number"),
        pytest.param({"pushName": "x" * 129}, "pushName", id="push-name-too-long"),
        pytest.param({"code": "ABCD-EFGH-IJ"}, "code", id="code-too-long"),
        pytest.param({"code": 12345678}, "code", id="code-number"),
        pytest.param({"qr": "x" * 513}, "qr", id="qr-too-long"),
        pytest.param({"jid": USER_JID}, "jid", id="unknown-key"),
    ],
)
def test_it_refuses_an_invalid_scan(alice_api, alice, body, field):
    qr_bot, idle_bot = make_bot(alice), make_bot(alice)
    show_qr(qr_bot)

    assert_invalid(alice_api.post(url(qr_bot, "simulator/scan"), body), field)
    # 400 comes before 409.
    assert_invalid(alice_api.post(url(idle_bot, "simulator/scan"), body), field)
    assert scans(qr_bot) == scans(idle_bot) == []


# --- Simulator: inbound ---------------------------------------------------------------


def test_it_stores_an_inbound_message(alice_api, alice):
    bot = make_bot(alice)

    response = alice_api.post(url(bot, "simulator/inbound"), {"from": f"+{PHONE}", "text": "Oi, tudo bem?"})

    assert response.status_code == 202, response.content
    body = response.json()
    assert set(body) == {"id"}
    assert re.fullmatch(r"3EB0[0-9A-F]{16}", body["id"]), body
    row = SimulatorInbound.objects.get()
    assert (row.bot_id, row.wa_id, row.chat, row.sender) == (bot.pk, body["id"], USER_JID, USER_JID)
    assert (row.text, row.type, row.push_name, row.from_me, row.mentions) == ("Oi, tudo bem?", "text", "", False, [])
    assert row.delivered_at is None
    assert abs((timezone.now() - row.timestamp).total_seconds()) < 60
    # Stored for the shard to deliver, whatever the session's state.
    assert session_of(bot).status == Status.DISCONNECTED


def test_it_stores_a_group_message_with_every_field(alice_api, alice):
    bot = make_bot(alice)

    response = alice_api.post(
        url(bot, "simulator/inbound"),
        {
            "from": DEVICE_JID,
            "chat": GROUP,
            "text": "@bot qual o horário?",
            "id": "ABC.123:x-y_z",
            "pushName": "Ana",
            "fromMe": True,
            "mentions": ["+5511911112222", "5521933334444@s.whatsapp.net"],
            "type": "text",
            "timestamp": 1700000000123,
        },
    )

    assert response.status_code == 202, response.content
    assert response.json() == {"id": "ABC.123:x-y_z"}
    row = SimulatorInbound.objects.get()
    assert (row.wa_id, row.chat, row.sender, row.push_name, row.from_me) == (
        "ABC.123:x-y_z",
        GROUP,
        USER_JID,
        "Ana",
        True,
    )
    assert row.mentions == ["5511911112222@s.whatsapp.net", "5521933334444@s.whatsapp.net"]
    assert row.timestamp == datetime.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=datetime.UTC)


@pytest.mark.parametrize("kind", ["image", "audio", "sticker"])
def test_it_stores_media_without_a_text(alice_api, alice, kind):
    bot = make_bot(alice)

    response = alice_api.post(url(bot, "simulator/inbound"), {"from": PHONE, "type": kind})

    assert response.status_code == 202, response.content
    assert SimulatorInbound.objects.values_list("type", "text").get() == (kind, "")


def test_it_stores_the_same_id_twice_as_a_redelivery(alice_api, alice):
    bot = make_bot(alice)
    message = {"from": PHONE, "text": "Oi", "id": "3EB0REDELIVERED"}

    first = alice_api.post(url(bot, "simulator/inbound"), message)
    second = alice_api.post(url(bot, "simulator/inbound"), message)

    assert first.json() == second.json() == {"id": "3EB0REDELIVERED"}
    pending = SimulatorInbound.objects.filter(bot=bot, delivered_at=None).order_by("id")
    assert [(row.wa_id, row.chat, row.text) for row in pending] == [("3EB0REDELIVERED", USER_JID, "Oi")] * 2


def test_it_generates_a_new_id_for_each_message(alice_api, alice):
    bot = make_bot(alice)

    ids = {alice_api.post(url(bot, "simulator/inbound"), {"from": PHONE, "text": "Oi"}).json()["id"] for _ in range(3)}

    assert len(ids) == 3
    assert set(SimulatorInbound.objects.values_list("wa_id", flat=True)) == ids


INVALID_INBOUND = [
    pytest.param({"text": "Oi"}, "from", id="from-missing"),
    pytest.param({"from": "", "text": "Oi"}, "from", id="from-empty"),
    pytest.param({"from": "ana", "text": "Oi"}, "from", id="from-letters"),
    pytest.param({"from": 5511987654321, "text": "Oi"}, "from", id="from-number"),
    pytest.param({"from": GROUP, "text": "Oi"}, "from", id="from-group"),
    pytest.param({"from": "+55 11 98765-4321", "text": "Oi"}, "from", id="from-formatted"),
    pytest.param({"from_": PHONE, "text": "Oi"}, "from_", id="from-underscore"),
    pytest.param({"from": PHONE}, "text", id="text-missing"),
    pytest.param({"from": PHONE, "text": ""}, "text", id="text-empty"),
    pytest.param({"from": PHONE, "type": "text"}, "text", id="text-missing-for-type-text"),
    pytest.param({"from": PHONE, "text": 42}, "text", id="text-number"),
    pytest.param({"from": PHONE, "text": "x" * 65537}, "text", id="text-too-long"),
    pytest.param({"from": PHONE, "text": "a\x00b"}, "text", id="text-nul"),
    pytest.param({"from": PHONE, "text": "Oi", "type": "gif"}, "type", id="type-gif"),
    pytest.param({"from": PHONE, "text": "Oi", "type": "TEXT"}, "type", id="type-uppercase"),
    pytest.param({"from": PHONE, "text": "Oi", "chat": USER_JID}, "chat", id="chat-user-jid"),
    pytest.param({"from": PHONE, "text": "Oi", "chat": "120363025246125888"}, "chat", id="chat-without-server"),
    pytest.param({"from": PHONE, "text": "Oi", "chat": "-----@g.us"}, "chat", id="chat-dashes"),
    pytest.param({"from": PHONE, "text": "Oi", "mentions": PHONE}, "mentions", id="mentions-string"),
    pytest.param({"from": PHONE, "text": "Oi", "mentions": ["ana"]}, "mentions.0", id="mentions-invalid"),
    pytest.param({"from": PHONE, "text": "Oi", "mentions": [GROUP]}, "mentions.0", id="mentions-group"),
    pytest.param({"from": PHONE, "text": "Oi", "timestamp": "1700000000000"}, "timestamp", id="timestamp-string"),
    pytest.param({"from": PHONE, "text": "Oi", "timestamp": 1700000000000.5}, "timestamp", id="timestamp-float"),
    pytest.param({"from": PHONE, "text": "Oi", "timestamp": -1}, "timestamp", id="timestamp-negative"),
    pytest.param({"from": PHONE, "text": "Oi", "timestamp": True}, "timestamp", id="timestamp-boolean"),
    pytest.param({"from": PHONE, "text": "Oi", "timestamp": 10**15}, "timestamp", id="timestamp-huge"),
    pytest.param({"from": PHONE, "text": "Oi", "fromMe": "true"}, "fromMe", id="from-me-string"),
    pytest.param({"from": PHONE, "text": "Oi", "id": ""}, "id", id="id-empty"),
    pytest.param({"from": PHONE, "text": "Oi", "id": "a b"}, "id", id="id-space"),
    pytest.param({"from": PHONE, "text": "Oi", "id": "x" * 129}, "id", id="id-too-long"),
    pytest.param({"from": PHONE, "text": "Oi", "id": 7}, "id", id="id-number"),
    pytest.param({"from": PHONE, "text": "Oi", "pushName": "x" * 129}, "pushName", id="push-name-too-long"),
    pytest.param({"from": PHONE, "text": "Oi", "to": USER_JID}, "to", id="unknown-key"),
]


@pytest.mark.parametrize(("body", "field"), INVALID_INBOUND)
def test_it_refuses_an_invalid_inbound_message(alice_api, alice, body, field):
    bot = make_bot(alice)

    response = alice_api.post(url(bot, "simulator/inbound"), body)

    error = assert_invalid(response, field)
    if field in ("from_", "to"):
        assert error["fields"][field] == "Unknown field."
    assert not SimulatorInbound.objects.exists()


def test_it_names_every_invalid_inbound_field(alice_api, alice):
    bot = make_bot(alice)

    response = alice_api.post(url(bot, "simulator/inbound"), {"from": "ana", "chat": "x", "timestamp": -1})

    assert set(assert_invalid(response, "from")["fields"]) == {"from", "text", "chat", "timestamp"}


def test_it_does_not_ask_for_a_text_when_the_type_is_invalid(alice_api, alice):
    bot = make_bot(alice)

    response = alice_api.post(url(bot, "simulator/inbound"), {"from": PHONE, "type": "gif"})

    assert set(assert_invalid(response, "type")["fields"]) == {"type"}


@pytest.mark.parametrize(
    ("raw", "content_type", "status", "code"),
    [
        pytest.param(TOO_LARGE, "application/json", 413, "payload_too_large", id="too-large"),
        pytest.param(b'{"from": "5511987654321", "text": "Oi"}', "text/plain", 415, "unsupported_media_type"),
        pytest.param(b"", "", 415, "unsupported_media_type", id="no-body"),
        pytest.param(b"", "application/json", 400, "invalid_json", id="empty-json"),
        pytest.param(b"[]", "application/json", 400, "validation_error", id="array"),
    ],
)
def test_it_refuses_an_inbound_body_it_cannot_read(alice_api, alice, raw, content_type, status, code):
    bot = make_bot(alice)

    assert_error(send(alice_api, url(bot, "simulator/inbound"), raw, content_type), status, code)
    assert not SimulatorInbound.objects.exists()


# --- Simulator: unlink, drop, sent ------------------------------------------------------


def commands(bot: Bot) -> list[str]:
    return list(SimulatorCommand.objects.filter(bot=bot, done_at=None).order_by("id").values_list("kind", flat=True))


def test_it_unlinks_only_a_paired_device(alice_api, alice):
    bot = make_bot(alice)
    connect(bot)

    assert_error(alice_api.post(url(bot, "simulator/unlink")), 409, "not_paired")
    assert commands(bot) == []

    SimulatorDevice.objects.create(bot=bot, jid=DEVICE_JID, phone=PHONE, push_name="Padaria Pão Quente")
    response = alice_api.post(url(bot, "simulator/unlink"))

    assert response.status_code == 202, response.content
    assert response.json() == {}
    assert commands(bot) == ["unlink"]
    # The shard logs the bot out; the web changes nothing else.
    assert session_of(bot).status == Status.CONNECTED


def test_it_unlinks_a_paired_device_even_while_disconnected(alice_api, alice):
    bot = make_bot(alice)
    SimulatorDevice.objects.create(bot=bot, jid=DEVICE_JID, phone=PHONE)

    assert alice_api.post(url(bot, "simulator/unlink")).status_code == 202
    assert commands(bot) == ["unlink"]


@pytest.mark.parametrize(
    "setup",
    [
        pytest.param(lambda bot: None, id="disconnected"),
        pytest.param(lambda bot: state.record(bot.pk, "connecting", Status.CONNECTING), id="connecting"),
        pytest.param(show_qr, id="qr-required"),
        pytest.param(lambda bot: state.record(bot.pk, "logged_out", Status.LOGGED_OUT), id="logged-out"),
    ],
)
def test_it_drops_only_a_connected_bot(alice_api, alice, setup):
    bot = make_bot(alice)
    SimulatorDevice.objects.create(bot=bot, jid=DEVICE_JID, phone=PHONE)
    setup(bot)

    assert_error(alice_api.post(url(bot, "simulator/drop")), 409, "not_connected")
    assert commands(bot) == []


def test_it_drops_a_connected_bot(alice_api, alice):
    bot = make_bot(alice)
    connect(bot)

    response = alice_api.post(url(bot, "simulator/drop"))

    assert response.status_code == 202, response.content
    assert response.json() == {}
    assert commands(bot) == ["drop"]
    assert session_of(bot).status == Status.CONNECTED


def test_it_lists_what_the_bot_sent(alice_api, alice):
    bot, other = make_bot(alice), make_bot(alice)
    for n, to in enumerate((USER_JID, GROUP, USER_JID)):
        SimulatorSent.objects.create(bot=bot, wa_id=f"3EB0SENT{n}", to=to, text=f"Resposta {n}")
    SimulatorSent.objects.create(bot=other, wa_id="3EB0OTHER", to=USER_JID, text="De outro bot")

    response = alice_api.get(url(bot, "simulator/sent"))

    assert response.status_code == 200
    sent = response.json()["sent"]
    assert set(response.json()) == {"sent"}
    assert [(item["id"], item["to"], item["text"]) for item in sent] == [
        ("3EB0SENT0", USER_JID, "Resposta 0"),
        ("3EB0SENT1", GROUP, "Resposta 1"),
        ("3EB0SENT2", USER_JID, "Resposta 2"),
    ]
    for item in sent:
        assert set(item) == {"id", "to", "text", "at"}
        assert RFC3339_UTC.match(item["at"]), item
    assert [item["at"] for item in sent] == sorted(item["at"] for item in sent)


def test_it_lists_nothing_sent_for_a_new_bot(alice_api, alice):
    assert alice_api.get(url(make_bot(alice), "simulator/sent")).json() == {"sent": []}


# --- OpenAPI -----------------------------------------------------------------------------


def test_it_documents_the_whatsapp_and_simulator_routes(anonymous_api):
    document = anonymous_api.get("/api/openapi.json").json()
    paths = document["paths"]

    for method, route, tag in [
        ("post", "connect-whatsapp", "whatsapp"),
        ("post", "pair-phone", "whatsapp"),
        ("get", "whatsapp-status", "whatsapp"),
        ("post", "disconnect-whatsapp", "whatsapp"),
        ("post", "logout-whatsapp", "whatsapp"),
        ("post", "simulator/scan", "simulator"),
        ("post", "simulator/inbound", "simulator"),
        ("post", "simulator/unlink", "simulator"),
        ("post", "simulator/drop", "simulator"),
        ("get", "simulator/sent", "simulator"),
    ]:
        operation = paths[f"/api/bots/{{bot_id}}/{route}"][method]
        assert operation["tags"] == [tag], (route, operation["tags"])

    connect_responses = paths["/api/bots/{bot_id}/connect-whatsapp"]["post"]["responses"]
    assert {"200", "202", "429"} <= set(connect_responses)
    pair = paths["/api/bots/{bot_id}/pair-phone"]["post"]["requestBody"]
    assert pair["required"] is True
    assert "phone" in pair["content"]["application/json"]["schema"]["properties"]
    # A scan may come without a body.
    scan = paths["/api/bots/{bot_id}/simulator/scan"]["post"]["requestBody"]
    assert scan["required"] is False
    assert {"phone", "pushName", "code", "qr"} <= set(scan["content"]["application/json"]["schema"]["properties"])
    inbound = paths["/api/bots/{bot_id}/simulator/inbound"]["post"]["requestBody"]["content"]["application/json"]
    assert {"from", "text", "chat", "mentions", "type", "timestamp"} <= set(inbound["schema"]["properties"])


def non_null(schema: dict) -> dict:
    """The schema of a value that may also be null (anyOf [..., null]), without the null."""
    (branch,) = [item for item in schema.get("anyOf", [schema]) if item != {"type": "null"}]
    return branch


def test_it_gives_every_phone_and_jid_field_its_pattern_and_examples(anonymous_api):
    paths = anonymous_api.get("/api/openapi.json").json()["paths"]

    def body(route: str) -> dict:
        operation = paths[f"/api/bots/{{bot_id}}/{route}"]["post"]
        return operation["requestBody"]["content"]["application/json"]["schema"]["properties"]

    (chat_query,) = [p for p in paths["/api/bots/{bot_id}/messages"]["get"]["parameters"] if p["name"] == "chat"]
    inbound = body("simulator/inbound")
    scan_phone = non_null(body("simulator/scan")["phone"])
    fields = [
        ("to", body("messages")["to"], jids.CHAT_PATTERN, jids.CHAT_EXAMPLES, jids.chat_jid),
        ("chat (query)", chat_query["schema"], jids.CHAT_PATTERN, jids.CHAT_EXAMPLES, jids.chat_jid),
        ("phone (pair-phone)", body("pair-phone")["phone"], jids.PHONE_PATTERN, jids.PHONE_EXAMPLES, jids.phone_digits),
        ("phone (scan)", scan_phone, jids.PHONE_PATTERN, jids.PHONE_EXAMPLES, jids.phone_digits),
        ("from", inbound["from"], jids.USER_PATTERN, jids.USER_EXAMPLES, jids.user_jid),
        ("senderAlt", non_null(inbound["senderAlt"]), jids.PHONE_PATTERN, jids.PHONE_EXAMPLES, jids.phone_jid),
        (
            "chat (inbound)",
            non_null(inbound["chat"]),
            jids.GROUP_OR_FEED_PATTERN,
            jids.GROUP_OR_FEED_EXAMPLES,
            jids.group_or_feed_jid,
        ),
        ("mentions", inbound["mentions"]["items"], jids.USER_PATTERN, jids.USER_EXAMPLES, jids.user_jid),
    ]
    for name, schema, pattern, examples, parse in fields:
        assert schema["type"] == "string", name
        assert schema["pattern"] == pattern, name
        assert schema["examples"] == examples, name
        for example in examples:
            parse(example)
    # A query string has no null, and a parameter left out needs no null default.
    assert "anyOf" not in chat_query["schema"] and "default" not in chat_query["schema"]


# --- whatsapp.jids -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "digits"),
    [
        (PHONE, PHONE),
        (f"+{PHONE}", PHONE),
        (f" {PHONE}\n", PHONE),
        (USER_JID, PHONE),
        (DEVICE_JID, PHONE),
        (f"{PHONE}:0@s.whatsapp.net", PHONE),
        ("12345", "12345"),
        ("9" * 20, "9" * 20),
        # Never rewritten: no country code added, no leading zero or trunk prefix dropped.
        ("011987654321", "011987654321"),
        ("+0055011987654321", "0055011987654321"),
    ],
)
def test_phone_digits_keeps_the_number_as_given(value, digits):
    assert jids.phone_digits(value) == digits
    assert jids.user_jid(value) == f"{digits}@s.whatsapp.net"
    assert jids.chat_jid(value) == f"{digits}@s.whatsapp.net"


INVALID_PHONE_VALUES = [
    "",
    "   ",
    "+",
    "1234",
    "1" * 21,
    "++5511987654321",
    "5511987654321+",
    "+55 11 98765-4321",
    "55.11.98765.4321",
    "(11) 98765-4321",
    "5511abc654321",
    ARABIC_INDIC_PHONE,
    FULLWIDTH_PHONE,
    "@s.whatsapp.net",
    f"+{PHONE}@s.whatsapp.net",
    f"{PHONE}@c.us",
    f"{PHONE}@s.whatsapp.net.example.com",
    f"{PHONE}:1234@s.whatsapp.net",
    f"{PHONE}:@s.whatsapp.net",
    f"{PHONE}@S.WHATSAPP.NET",
    f"{PHONE}\n@s.whatsapp.net",
    f"{PHONE}\x00",
]


@pytest.mark.parametrize("value", INVALID_PHONE_VALUES)
def test_phone_digits_refuses_what_is_not_a_number(value):
    for parse in (jids.phone_digits, jids.user_jid):
        with pytest.raises(ValueError):
            parse(value)


@pytest.mark.parametrize("value", [GROUP, "5511987654321-1600000000@g.us", "12345@g.us"])
def test_group_jid_accepts_group_ids(value):
    assert jids.group_jid(value) == value
    assert jids.group_jid(f" {value} ") == value
    assert jids.chat_jid(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        USER_JID,
        PHONE,
        "-----@g.us",
        "1234@g.us",
        "120363025246125888@G.US",
        "120363025246125888@g.us.example.com",
        "120363025246125888-@g.us",
        "abc@g.us",
        f"{ARABIC_INDIC_PHONE}@g.us",
    ],
)
def test_group_jid_refuses_what_is_not_a_group(value):
    with pytest.raises(ValueError):
        jids.group_jid(value)


@pytest.mark.parametrize("value", ["", "ana", "-----@g.us", f"{PHONE}@c.us", f"{ARABIC_INDIC_PHONE}@g.us"])
def test_chat_jid_refuses_what_is_no_chat(value):
    with pytest.raises(ValueError):
        jids.chat_jid(value)


# The OpenAPI document's patterns (whatsapp.jids) against the validators they describe: a client
# or a tool reading the schema (Python's re, or jsonschema-rs as schemathesis does) must accept
# exactly what the server does, surrounding spaces that str.strip() removes included.
PATTERNS = [
    pytest.param(jids.PHONE_PATTERN, jids.phone_digits, id="phone-or-user-jid"),
    pytest.param(jids.PHONE_PATTERN, jids.phone_jid, id="phone-jid"),
    pytest.param(jids.USER_PATTERN, jids.user_jid, id="user-jid"),
    pytest.param(jids.CHAT_PATTERN, jids.chat_jid, id="chat"),
    pytest.param(jids.GROUP_PATTERN, jids.group_jid, id="group"),
    pytest.param(jids.GROUP_OR_FEED_PATTERN, jids.group_or_feed_jid, id="group-or-feed"),
]
PATTERN_SAMPLES = [
    *INVALID_PHONE_VALUES,
    PHONE,
    f"+{PHONE}",
    USER_JID,
    DEVICE_JID,
    GROUP,
    "5511987654321-1600000000@g.us",
    f" {PHONE}\n",
    f"{PHONE}\n",
    f"\t{GROUP}\u3000",
    f"\x1c{PHONE}\x85",  # str.strip() removes these, which ECMA-262's \s does not match
    f"\ufeff{PHONE}",  # and not this one, which \s matches
    f"\u200b{PHONE}",
    f"{PHONE}@lid",
    "203012345678901:3@lid",
    " 203012345678901@lid\n",
    "1234@lid",
    "@lid",
    "203012345678901@LID",
    "203012345678901@lid.example.com",
    f"{GROUP}\n@g.us",
]


def accepts(parse, value: str) -> bool:
    try:
        parse(value)
    except ValueError:
        return False
    return True


def pattern_verdicts(pattern: str, value: str) -> tuple[bool, bool]:
    import jsonschema_rs

    return (
        re.search(pattern, value) is not None,
        jsonschema_rs.validator_for({"type": "string", "pattern": pattern}).is_valid(value),
    )


@pytest.mark.parametrize(("pattern", "parse"), PATTERNS)
def test_the_patterns_accept_what_the_validators_accept(pattern, parse):
    for value in PATTERN_SAMPLES:
        expected = accepts(parse, value)
        assert pattern_verdicts(pattern, value) == (expected, expected), value


@pytest.mark.parametrize(("pattern", "parse"), PATTERNS)
def test_the_patterns_accept_what_the_validators_accept_for_any_text(pattern, parse):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    spaces = st.text(st.sampled_from(jids.SPACES + "\ufeff\u200bx"), max_size=3)
    values = st.one_of(
        st.from_regex(pattern),
        st.text(max_size=40),
        st.tuples(spaces, st.sampled_from(PATTERN_SAMPLES), spaces).map("".join),
    )

    @settings(max_examples=300, derandomize=True, database=None, deadline=None)
    @given(values)
    def check(value):
        expected = accepts(parse, value)
        assert pattern_verdicts(pattern, value) == (expected, expected)

    check()
