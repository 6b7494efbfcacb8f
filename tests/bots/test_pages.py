"""The operator's pages: log in, see your own bots, log out; health and static files."""

from __future__ import annotations

import re

from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from bots.models import Bot
from tests.conftest import make_bot


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_it_shows_a_login_form(db):
    response = Client().get("/login/")

    assert response.status_code == 200
    page = response.content.decode()
    assert '<form method="post" action="/login/">' in page
    assert 'name="username"' in page
    assert 'name="password"' in page
    assert "csrfmiddlewaretoken" in page


def test_it_logs_in_with_username_and_password_and_lands_on_the_bot_list(alice, bob):
    make_bot(alice, name="Alice's helper")
    make_bot(bob, name="Bob's secret bot")
    client = Client(enforce_csrf_checks=True)
    login_page = client.get("/login/")
    csrf = login_page.cookies["csrftoken"].value

    response = client.post("/login/", {"username": "alice", "password": "password-alice", "csrfmiddlewaretoken": csrf})

    assert response.status_code == 302
    assert response["Location"] == "/"
    home = client.get("/")
    assert home.status_code == 200
    assert "Alice&#x27;s helper" in home.content.decode()
    assert "Bob&#x27;s secret bot" not in home.content.decode()


def test_it_refuses_a_wrong_password(alice):
    client = Client()

    response = client.post("/login/", {"username": "alice", "password": "wrong"})

    assert response.status_code == 200
    assert "didn't match" in response.content.decode()
    assert client.get("/").status_code == 302


def test_it_lists_only_the_users_own_live_bots(alice, bob):
    make_bot(alice, name="Support", whatsapp_provider="neonize")
    old = make_bot(alice, name="Old bot")
    Bot.objects.filter(pk=old.pk).update(deleted_at=timezone.now())
    make_bot(bob, name="Sales")

    response = logged_in(alice).get("/")

    page = response.content.decode()
    assert response.status_code == 200
    assert "Support" in page
    assert "WhatsApp (neonize)" in page
    assert "disconnected" in page
    assert "Old bot" not in page
    assert "Sales" not in page


def test_it_tells_a_user_without_bots_how_to_create_one(bob):
    response = logged_in(bob).get("/")

    assert "You have no bots yet" in response.content.decode()


def test_it_sends_an_anonymous_visitor_to_the_login_page(db):
    response = Client().get("/")

    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/"


def test_it_logs_out_by_post(alice):
    client = logged_in(alice)

    response = client.post("/logout/")

    assert response.status_code == 302
    assert response["Location"] == "/login/"
    assert client.get("/")["Location"] == "/login/?next=/"


def test_it_does_not_log_out_by_get(alice):
    client = logged_in(alice)

    response = client.get("/logout/")

    assert response.status_code == 405
    assert client.get("/").status_code == 200


def test_it_answers_health_checks_with_the_database_state(db):
    response = Client().get("/healthz")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"status": "ok", "checks": {"database": "ok"}}
    assert "no-cache" in response["Cache-Control"]


def test_it_serves_the_stylesheet_the_pages_link_to(db):
    page = Client().get("/login/").content.decode()
    href = re.search(r'<link rel="stylesheet" href="([^"]+)">', page).group(1)

    # WhiteNoise answers with a file response, read through streaming_content.
    response = Client().get(href)
    plain = Client().get("/static/css/app.css")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/css")
    assert b".topbar" in b"".join(response.streaming_content)
    assert plain.status_code == 200
