"""PostgreSQL stopped and started again: the platform comes back by itself (DESIGN.md invariants 1 and 3).

The web and the pool run on a PostgreSQL cluster of the test's own (the
shared one is never restarted). Eight people have talked to a paired bot and
two more wait for the model's answer when the database stops for a few
seconds: longer than a shard may keep its clients without renewing its
leases. Once it is back, with nobody acting and within seconds, /healthz
turns 200, the API answers, the bot is connected again and every message,
those caught in the restart and those written after it, gets exactly one
answer.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
from django.utils import timezone

from tests.chaos.people import Conversations, chat_of, healthz, phone
from tests.fake_gemini import held
from tests.processes import ROOT, process_env, start_pool, start_web, wait_until
from tests.whatsapp.live import Frames, create_bot, open_events, pair, status_of
from whatsapp.models import SimulatorInbound

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True), pytest.mark.timeout(150)]

SHORT_LEASES = {"WHATSAPP_LEASE_TTL": "6"}
# Down longer than a shard keeps its clients without renewing (TTL - 5 s), shorter than the lease itself.
DOWN_SECONDS = 4
# From the database's return until every message is answered: the shard reconnects the bot and asks again.
RECOVERY_SECONDS = 15


def manage(database_url: str, *args: str) -> str:
    """A management command on the private cluster, as an operator runs it; returns its output."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=process_env(DATABASE_URL=database_url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def paired_on_the_private_cluster(private_postgres, fake_gemini, stop_at_end, **env):
    """The web and a pool on the test's own PostgreSQL, an operator, and a bot paired by its phone."""
    database_url = private_postgres.create_database("botplatform")
    manage(database_url, "migrate", "--no-input")
    manage(database_url, "ensure_admin", "--username", "operator")
    token = manage(database_url, "create_api_token", "operator").splitlines()[-1]
    env = {"DATABASE_URL": database_url, "GEMINI_BASE_URL": fake_gemini.url, **env}
    web = start_web(**env)
    stop_at_end(web.proc)
    pool = stop_at_end(start_pool(**env))
    bot_id = create_bot(web, token)["id"]
    with open_events(web, bot_id, token) as ws:
        pair(web, token, bot_id, Frames(ws))
    return web, pool, token, bot_id, Conversations(web, token, bot_id)


def test_it_recovers_by_itself_when_postgresql_restarts(private_postgres, fake_gemini, stop_at_end):
    web, pool, token, bot_id, people = paired_on_the_private_cluster(
        private_postgres, fake_gemini, stop_at_end, **SHORT_LEASES
    )
    for n in range(1, 9):
        people.write(n, f"Bom dia ({n})")
    people.wait_for_answers(timeout=20)

    thinking = threading.Event()
    fake_gemini.script(held(thinking), held(thinking))
    people.write(9, "Tem pão?")
    people.write(10, "Até que horas?")
    fake_gemini.wait_for_requests(10, timeout=20)
    before = status_of(web, token, bot_id)

    private_postgres.stop()
    assert healthz(web) == 503, "the health check shows the database is gone"
    thinking.set()  # the model answers while the database is down
    time.sleep(DOWN_SECONDS)
    private_postgres.start()
    deadline = time.monotonic() + RECOVERY_SECONDS

    def remaining() -> float:
        return max(0.5, deadline - time.monotonic())

    wait_until(lambda: healthz(web) == 200, timeout=remaining(), interval=0.25, message="/healthz did not recover")
    wait_until(
        lambda: (s := status_of(web, token, bot_id))["status"] == "connected" and s["seq"] > before["seq"],
        timeout=remaining(),
        interval=0.25,
        message=f"the bot did not connect again:\n{pool.log()}",
    )
    for n in range(11, 19):
        people.write(n, f"Voltou? ({n})")
    people.wait_for_answers(timeout=remaining())
    status, _, body = web.request("GET", f"/api/bots/{bot_id}/messages?limit=200", token=token)
    assert status == 200, body
    inbound = [m for m in body["messages"] if m["direction"] == "in"]
    assert len(inbound) == 18 and {m["status"] for m in inbound} == {"replied"}
    assert pool.log().count("started (capacity") == 1, "the shard rode it out: no restart was needed"
    with private_postgres.connect("botplatform") as db:
        replaced = db.execute(
            "SELECT count(*) FROM whatsapp_sessionevent WHERE frame->>'lastError' = 'stream_replaced'"
        )
        assert replaced.fetchone() == (0,), "the bot was never hosted twice at once"


def test_what_arrives_while_postgresql_is_down_is_answered_even_when_the_shard_dies_meanwhile(
    private_postgres, fake_gemini, stop_at_end
):
    """WhatsApp keeps delivering while the platform's database is down, and counts each message
    delivered once the shard's callback returns. The shard is then killed before it could store
    them: only its journal has them. Once PostgreSQL is back, each is answered once."""
    web, pool, token, bot_id, people = paired_on_the_private_cluster(private_postgres, fake_gemini, stop_at_end)
    people.write(1, "Bom dia")
    people.wait_for_answers(timeout=20)

    private_postgres.stop()
    during = []
    for n in range(2, 12):
        # Written to the simulated WhatsApp's own store, as the network delivers while the API is down.
        text = f"Alguém aí? ({n})"
        during.append(
            SimulatorInbound.objects.create(
                bot_id=uuid.UUID(bot_id),
                wa_id=f"3EB0{uuid.uuid4().hex[:16].upper()}",
                chat=chat_of(phone(n)),
                sender=chat_of(phone(n)),
                text=text,
                timestamp=timezone.now(),
            )
        )
        people.expected[(chat_of(phone(n)), f"echo: {text}")] += 1
    wait_until(
        lambda: not SimulatorInbound.objects.filter(pk__in=[row.pk for row in during], delivered_at=None).exists(),
        timeout=10,
        message=f"WhatsApp did not deliver while the database was down:\n{pool.log()}",
    )
    shard_pid = int(re.findall(r"shard 0 started as pid (\d+)", pool.log())[-1])
    os.kill(shard_pid, signal.SIGKILL)  # acknowledged, not stored: only the journal has them
    time.sleep(1)
    private_postgres.start()

    people.wait_for_answers(timeout=60)
    assert re.search(r"replayed 10 messages", pool.log()), pool.log()
    status, _, body = web.request("GET", f"/api/bots/{bot_id}/messages?limit=200", token=token)
    assert status == 200, body
    inbound = [m for m in body["messages"] if m["direction"] == "in"]
    assert len(inbound) == 11 and {m["status"] for m in inbound} == {"replied"}
