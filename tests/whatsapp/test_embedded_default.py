"""The main flow once more on the embedded default: SQLite alone, no Redis (DESIGN.md section 2).

Consumers then follow the session event log and shards poll for work; the
operator must not notice the difference.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.processes import ROOT, process_env, start_pool, start_web
from tests.whatsapp.live import Frames, create_bot, open_events, pair, status_of

pytestmark = pytest.mark.processes


def manage(env: dict, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_it_pairs_a_bot_on_sqlite_without_redis(tmp_path):
    settings = {"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "REDIS_URL": None}
    env = process_env(**settings, DJANGO_SUPERUSER_PASSWORD="password-carla")
    manage(env, "migrate", "--no-input")
    manage(env, "createsuperuser", "--no-input", "--username", "carla", "--email", "carla@example.com")
    token = manage(env, "create_api_token", "carla").strip().splitlines()[-1]

    web = start_web(**settings)
    pool = start_pool(**settings)
    try:
        bot = create_bot(web, token)
        with open_events(web, bot["id"], token) as ws:
            frames = Frames(ws)
            assert frames.next()["event"] == "status"
            connected = pair(web, token, bot["id"], frames)
        assert connected["status"] == "connected"
        assert frames.events()[-1] == "connected"
        seqs = [frame["seq"] for frame in frames.seen]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "every transition, in order, none lost or merged"
        assert "qr" in frames.events()
        assert status_of(web, token, bot["id"])["seq"] == connected["seq"]
        assert pool.stop() == 0
    finally:
        pool.stop()
        web.proc.stop()
