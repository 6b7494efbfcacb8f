"""schemathesis over every operation of the JSON API, with all of its checks (docs/api.md).

Data generated from /api/openapi.json itself, valid (positive) and invalid (negative),
goes through Django's whole WSGI stack: the server must accept what its schema allows,
refuse what it does not, answer only the status codes, content types and bodies the
schema describes, never a 500, 405 with `Allow` to a method an operation lacks, and 401
without credentials or with wrong ones. The settings (examples per operation, the seed,
and any check an operation would skip on purpose, with its reason: none does) are in
schemathesis.toml at the root of the repository.

Every request is alice's, who owns the simulator bot BOT_ID: the operations on one bot
are pointed at it (a random UUID would be a 404 every time), and each example, or each
sequence of the stateful test, starts from that bot alone, new, so that what the server
answers depends on the example only (Hypothesis replays examples). The stateful test chains
the operations as schemathesis infers them from the schema (create a bot, then read, update,
connect, delete it...), for the checks that need a history: use_after_free and
ensure_resource_availability. No pool runs: what the web writes is left for shards that
are not there.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import schemathesis
from django.contrib.auth.models import User
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, Phase, settings
from schemathesis.config import SchemathesisConfig

from bots.models import ApiToken, Bot, hash_token
from tests.helpers import make_bot, make_user

ROOT = Path(__file__).resolve().parents[2]
BOT_ID = uuid.UUID("5c4e2b0a-3f1d-4e6a-9b7c-0d8e1f2a3b4c")

# connect-whatsapp and pair-phone close their database connection before they wait:
# a transactional database, as in tests/bots/test_whatsapp_api.py.
pytestmark = pytest.mark.django_db(transaction=True)

APP = get_wsgi_application()
CONFIG = SchemathesisConfig.from_path(ROOT / "schemathesis.toml")
schema = schemathesis.openapi.from_wsgi("/api/openapi.json", APP, config=CONFIG)
# For test_every_operation, whose bot_id is always alice's bot.
on_her_bot = schemathesis.openapi.from_wsgi("/api/openapi.json", APP, config=CONFIG)
on_her_bot.config.update(parameters={"path.bot_id": str(BOT_ID)})


# alice's token. Fixed before any test runs: schemathesis puts it on the cases it builds as the
# tests are collected (the coverage and examples phases), before any fixture.
SECRET = "schemathesis-alice-0123456789abcdefghijklmnopqrstuv"


class Token:
    """alice's bearer token, put on every request schemathesis makes.

    As an auth provider, schemathesis knows it for the credentials it removes or spoils
    (ignored_auth, missing_required_header), and generates none of its own (such as a
    random session cookie).
    """

    def get(self, case, ctx):
        return SECRET

    def set(self, case, data, ctx):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


schema.auth()(Token)
on_her_bot.auth()(Token)


def fresh_bot() -> None:
    """alice's bots, and all that hangs on them (sessions, messages, connect requests), as new: BOT_ID alone."""
    Bot.objects.all().delete()
    make_bot(User.objects.get(username="alice"), id=BOT_ID)


@pytest.fixture
def alice_and_token(monkeypatch) -> None:
    """alice and her token. connect-whatsapp and pair-phone, with no shard to give a QR, answer 202 at once."""
    monkeypatch.setattr("bots.api.whatsapp.CONNECT_WAIT_SECONDS", 0)
    token, _ = ApiToken.issue(make_user("alice"))
    # The token issued, with the secret the cases carry in place of the one drawn.
    token.prefix, token.key_hash = SECRET[:8], hash_token(SECRET)
    token.save(update_fields=["prefix", "key_hash"])


@on_her_bot.parametrize()
# alice and her token, made once per operation, serve all of its examples, as meant.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_operation(case, alice_and_token):
    fresh_bot()
    case.call_and_validate()


class Sequences(schema.as_state_machine()):
    def setup(self) -> None:
        fresh_bot()


def test_sequences_of_operations(alice_and_token):
    # As schemathesis' own runner: the configured settings, generation alone (no shrinking), no health checks.
    configured = schema.config.get_hypothesis_settings(phase="stateful")
    Sequences.run(settings=settings(configured, phases=[Phase.generate], suppress_health_check=list(HealthCheck)))
