"""Management commands an operator runs by hand: create_api_token and ensure_admin."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.http import HttpRequest
from django.test import Client

from bots.models import ApiToken
from tests.helpers import make_bot, make_user


def run(command: str, *args: str) -> tuple[str, str]:
    stdout, stderr = StringIO(), StringIO()
    call_command(command, *args, stdout=stdout, stderr=stderr)
    return stdout.getvalue(), stderr.getvalue()


# --- create_api_token ---------------------------------------------------------------


def test_it_prints_a_token_alone_on_the_last_line(alice):
    stdout, stderr = run("create_api_token", "alice")

    token = stdout.splitlines()[-1]
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert len(token) >= 40
    assert token not in stderr
    assert ApiToken.objects.user_for(token) == alice


def test_it_makes_a_token_that_lists_the_users_bots(alice, bob):
    make_bot(alice, name="Support")
    make_bot(bob, name="Sales")
    token = run("create_api_token", "alice")[0].splitlines()[-1]

    response = Client().get("/api/bots", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 200
    assert [bot["name"] for bot in response.json()["bots"]] == ["Support"]


def test_it_makes_a_new_token_each_time_with_an_optional_name(alice):
    first = run("create_api_token", "alice")[0].splitlines()[-1]
    second = run("create_api_token", "alice", "--name", "deploy script")[0].splitlines()[-1]

    assert first != second
    assert ApiToken.objects.user_for(first) == ApiToken.objects.user_for(second) == alice
    assert sorted(ApiToken.objects.values_list("name", flat=True)) == ["", "deploy script"]


def test_it_refuses_an_unknown_username(db):
    with pytest.raises(CommandError, match="No user named 'carol'"):
        run("create_api_token", "carol")

    assert not ApiToken.objects.exists()


def test_it_refuses_an_inactive_user(db):
    make_user("dave", is_active=False)

    with pytest.raises(CommandError, match="'dave' is inactive"):
        run("create_api_token", "dave")

    assert not ApiToken.objects.exists()


# --- ensure_admin -------------------------------------------------------------------


def printed(stdout: str, label: str) -> str:
    return re.search(rf"^\s*{label}: (\S+)$", stdout, re.M).group(1)


def test_it_creates_an_admin_that_can_log_in(alice):
    stdout, _ = run("ensure_admin")

    username, password = printed(stdout, "username"), printed(stdout, "password")
    assert username == "admin"
    assert User.objects.get(username="admin").is_superuser
    client = Client()
    assert client.login(request=HttpRequest(), username=username, password=password)
    assert client.get("/admin/").status_code == 200


def test_it_names_the_chosen_username_in_its_advice(db):
    stdout, _ = run("ensure_admin", "--username", "root")

    assert printed(stdout, "username") == "root"
    assert Client().login(request=HttpRequest(), username="root", password=printed(stdout, "password"))
    assert "changepassword root" in stdout


def test_it_leaves_an_existing_admin_alone(staff):
    stdout, _ = run("ensure_admin")

    assert "exists already" in stdout
    assert "password" not in stdout
    assert list(User.objects.filter(is_superuser=True)) == [staff]
    assert not User.objects.filter(username="admin").exists()


def test_it_refuses_to_take_over_an_ordinary_user_with_the_admin_name(db):
    make_user("admin")

    with pytest.raises(CommandError, match="--username"):
        run("ensure_admin")

    admin = User.objects.get(username="admin")
    assert not admin.is_superuser
    assert admin.check_password("password-admin")
