"""Login throttling (django-axes, botplatform/settings.py): 10 failures lock an account, 50 an address.

A lock refuses the right password too, for 15 minutes, with a page in the operator's language, on the
operator login and the admin's alike. Addresses are given per request (REMOTE_ADDR), as the test
client allows; time moves by moving the failures' recorded times back.
"""

from __future__ import annotations

import datetime
from types import SimpleNamespace

import pytest
from asgiref.sync import sync_to_async
from axes.models import AccessAttempt
from django.contrib.auth import BACKEND_SESSION_KEY, get_user
from django.core.management import call_command
from django.db.models import F
from django.test import AsyncClient, Client

from bots import sockets
from tests.helpers import make_user, token_client
from tests.test_settings import started

ATTACKER = "203.0.113.7"
ELSEWHERE = "198.51.100.20"
LOCKED = "Too many failed logins"


def log_in(username: str, password: str, address: str = ATTACKER, *, path: str = "/login/", client=None, **extra):
    client = client or Client()
    data = {"username": username, "password": password}
    if path.startswith("/admin/"):
        data["next"] = "/admin/"
    return client.post(path, data, REMOTE_ADDR=address, **extra)


def fail(username: str, times: int, address: str = ATTACKER, **kwargs) -> list[int]:
    return [log_in(username, "wrong", address, **kwargs).status_code for _ in range(times)]


def assert_locked(response) -> str:
    page = response.content.decode()
    assert response.status_code == 429, (response.status_code, page[:300])
    assert LOCKED in page
    assert "even with the right password" in page
    assert "Try again in 15 minutes at most." in page
    assert "ask the platform's staff to unlock your account" in page
    assert "_auth_user_id" not in response.wsgi_request.session
    return page


def move_back(minutes: float) -> None:
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - datetime.timedelta(minutes=minutes))


# --- The account --------------------------------------------------------------------------------


def test_it_locks_an_account_at_its_tenth_failure_and_refuses_the_right_password(alice):
    assert fail("alice", 9) == [200] * 9

    assert_locked(log_in("alice", "wrong"))
    page = assert_locked(log_in("alice", "password-alice"))
    assert 'lang="en"' in page
    assert 'href="/login/"' in page


def test_it_shows_the_lock_in_brazilian_portuguese(alice):
    fail("alice", 10)

    response = log_in("alice", "password-alice", headers={"Accept-Language": "pt-BR"})

    page = response.content.decode()
    assert response.status_code == 429
    assert 'lang="pt-br"' in page
    assert "Muitas tentativas de entrada sem sucesso" in page
    assert "mesmo com a senha certa" in page
    assert "Tente de novo em no máximo 15 minutos." in page
    assert "peça à equipe da plataforma que desbloqueie a sua conta" in page
    assert LOCKED not in page


def test_it_counts_an_accounts_failures_from_every_address(alice):
    for n in range(10):
        fail("alice", 1, f"192.0.2.{n + 1}")

    assert_locked(log_in("alice", "password-alice", ELSEWHERE))


def test_another_account_still_logs_in_from_the_address_that_locked_one(alice, bob):
    fail("alice", 10)

    response = log_in("bob", "password-bob")

    assert response.status_code == 302
    assert response["Location"] == "/"


def test_it_unlocks_an_account_after_the_cool_off(alice):
    fail("alice", 10)
    move_back(14)
    assert_locked(log_in("alice", "password-alice"))

    move_back(1.01)
    response = log_in("alice", "password-alice")

    assert response.status_code == 302
    assert AccessAttempt.objects.count() == 0  # expired rows are deleted


def test_refused_attempts_during_a_lock_do_not_prolong_it(alice):
    fail("alice", 10)
    row = AccessAttempt.objects.get()

    for _ in range(3):
        assert_locked(log_in("alice", "password-alice"))
        assert_locked(log_in("alice", "wrong"))

    again = AccessAttempt.objects.get()
    assert (again.failures_since_start, again.attempt_time) == (10, row.attempt_time)


def test_a_success_does_not_wipe_the_failures_of_others_from_the_same_address(alice, bob):
    fail("alice", 9)
    assert log_in("bob", "password-bob").status_code == 302  # an account of one's own

    assert_locked(log_in("alice", "wrong"))


def test_staff_unlock_an_account_with_axes_reset_username(alice, capsys):
    fail("alice", 10, "192.0.2.1")
    fail("alice", 2, "192.0.2.2")
    assert_locked(log_in("alice", "password-alice"))

    call_command("axes_reset_username", "alice")

    assert "attempts removed" in capsys.readouterr().out
    assert log_in("alice", "password-alice").status_code == 302


# --- The address ----------------------------------------------------------------------------------


def test_it_locks_an_address_at_its_fiftieth_failure_across_accounts(alice, bob):
    for n in range(49):
        assert fail(f"user{n}", 1) == [200]
    assert log_in("bob", "password-bob").status_code == 302  # 49: still open

    assert_locked(log_in("user49", "wrong"))
    assert_locked(log_in("alice", "password-alice"))
    assert log_in("alice", "password-alice", ELSEWHERE).status_code == 302


def test_staff_unlock_an_address_with_axes_reset_ip(alice):
    for n in range(50):
        fail(f"user{n}", 1)
    assert_locked(log_in("alice", "password-alice"))

    call_command("axes_reset_ip", ATTACKER)

    assert log_in("alice", "password-alice").status_code == 302


# --- The admin's login ---------------------------------------------------------------------------------


def test_it_locks_the_admin_login_the_same_way(staff):
    assert fail("staff", 9, path="/admin/login/") == [200] * 9

    assert_locked(log_in("staff", "wrong", path="/admin/login/"))
    assert_locked(log_in("staff", "password-staff", path="/admin/login/"))
    assert_locked(log_in("staff", "password-staff", ELSEWHERE, path="/admin/login/"))
    pt = log_in("staff", "password-staff", path="/admin/login/", headers={"Accept-Language": "pt-BR"})
    assert pt.status_code == 429
    assert "Muitas tentativas de entrada sem sucesso" in pt.content.decode()


def test_failures_on_one_login_page_lock_the_other(staff):
    fail("staff", 5, path="/admin/login/")
    fail("staff", 5)

    assert_locked(log_in("staff", "password-staff", path="/admin/login/"))
    assert_locked(log_in("staff", "password-staff"))


def test_staff_see_the_failed_logins_in_the_admin(alice, staff):
    fail("alice", 3)
    client = Client()
    client.force_login(staff)

    index = client.get("/admin/")
    attempts = client.get("/admin/axes/accessattempt/")

    assert "Access attempts" in index.content.decode()
    assert attempts.status_code == 200
    assert "alice" in attempts.content.decode()
    assert ATTACKER in attempts.content.decode()


# --- Under daphne (ASGI: axes' middleware runs async) ---------------------------------------------------


@pytest.mark.django_db(transaction=True)  # the ASGI handler's threads write the failures: committed
async def test_it_shows_the_lock_page_through_the_asgi_stack():
    await sync_to_async(make_user)("alice")
    client = AsyncClient()
    data = {"username": "alice", "password": "wrong"}
    for _ in range(10):
        await client.post("/login/", data)

    response = await client.post(
        "/login/",
        {"username": "alice", "password": "password-alice"},
        headers={"Accept-Language": "pt-BR"},
    )

    assert response.status_code == 429
    assert "Tente de novo em no máximo 15 minutos." in response.content.decode()


# --- The address behind the proxy ----------------------------------------------------------------------


def recorded_address(**extra) -> str:
    log_in("alice", "wrong", **extra)
    address = AccessAttempt.objects.get().ip_address
    AccessAttempt.objects.all().delete()
    return address


def test_it_believes_the_proxys_header_only_when_https_says_a_proxy_is_in_front(alice, settings):
    spoofed = {"headers": {"X-Forwarded-For": "10.9.9.9, 203.0.113.50"}}
    assert recorded_address(address="127.0.0.1", **spoofed) == "127.0.0.1"  # no proxy declared

    settings.LOGIN_CLIENT_HEADER = "X-Forwarded-For"
    # nginx appends the address it saw: the last one; what the client sent comes before.
    assert recorded_address(address="127.0.0.1", **spoofed) == "203.0.113.50"
    # Not relayed from loopback: not nginx, whatever the header says.
    assert recorded_address(address=ELSEWHERE, **spoofed) == ELSEWHERE
    assert recorded_address(address="127.0.0.1") == "127.0.0.1"
    assert recorded_address(address="127.0.0.1", headers={"X-Forwarded-For": "not an address"}) == "127.0.0.1"


def test_it_takes_the_proxys_header_from_the_environment_with_https_on():
    code = "from django.conf import settings; import json; print(json.dumps(settings.LOGIN_CLIENT_HEADER))"
    key = "k" * 60

    assert started(code, DEBUG="1") == ""
    assert started(code, HTTPS="1", SECRET_KEY=key) == "X-Forwarded-For"
    assert started(code, HTTPS="1", SECRET_KEY=key, PROXY_CLIENT_HEADER="X-Real-IP") == "X-Real-IP"
    assert started(code, HTTPS="1", SECRET_KEY=key, PROXY_CLIENT_HEADER="none") == ""


# --- What else authenticates -----------------------------------------------------------------------------


def test_a_form_login_stores_model_backend_so_sockets_find_the_user(alice):
    client = Client()
    assert log_in("alice", "password-alice", client=client).status_code == 302

    session = client.session
    assert session[BACKEND_SESSION_KEY] == "django.contrib.auth.backends.ModelBackend"
    assert get_user(SimpleNamespace(session=session)) == alice
    listener = sockets.authenticate({"session": session}, bearer=False)
    assert listener is not None
    assert listener.user == alice


@pytest.mark.parametrize("auth", ["token", "session"])
def test_the_api_is_not_throttled_by_a_locked_address(alice, auth):
    for n in range(50):
        fail(f"user{n}", 1, "127.0.0.1")
    assert_locked(log_in("alice", "password-alice", "127.0.0.1"))

    if auth == "token":
        response = token_client(alice).get("/api/bots")
    else:
        client = Client()
        client.force_login(alice)
        response = client.get("/api/bots")

    assert response.status_code == 200, response.content[:300]


def test_an_unknown_username_is_counted_like_any_other(db):
    make_user("carol")
    fail("nobody", 10)

    assert_locked(log_in("nobody", "anything"))
    assert log_in("carol", "password-carol").status_code == 302
