"""Redis killed and started again: nothing is lost, and the live events come back (DESIGN.md invariant 1).

The web and the pool use a Redis of the test's own. A client watches a
paired bot's connection events on a WebSocket. Redis dies; people keep
writing and the bot's network drops and comes back meanwhile. The API keeps
answering, every message is stored and answered, and once Redis is back the
open socket hears the bot's next event, preceded by the ones it missed
while Redis was down: every transition, in order, with no reload.
"""

from __future__ import annotations

import pytest

from bots.models import ApiToken
from tests.chaos.people import Conversations, healthz
from tests.processes import Web, start_pool, start_web, wait_until
from tests.whatsapp.live import Frames, create_bot, open_events, pair, status_of

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


def drop_network(web: Web, token: str, bot_id: str) -> int:
    """The bot's network drops (it reconnects by itself); returns the event sequence number before the drop."""
    seq = status_of(web, token, bot_id)["seq"]
    status, _, body = web.request("POST", f"/api/bots/{bot_id}/simulator/drop", token=token)
    assert status == 202, body
    return seq


def back_after(web: Web, token: str, bot_id: str, seq: int) -> dict:
    """The bot reconnected after the drop that followed ``seq`` (connecting, then connected)."""
    return wait_until(
        lambda: (s := status_of(web, token, bot_id))["status"] == "connected" and s["seq"] >= seq + 2 and s,
        timeout=20,
        interval=0.1,
        message="the bot did not reconnect after its network dropped",
    )


def test_it_loses_nothing_and_the_live_events_resume_when_redis_restarts(
    alice, fake_gemini, private_redis, stop_at_end
):
    token = ApiToken.issue(alice)[1]
    web = start_web(REDIS_URL=private_redis.url)
    stop_at_end(web.proc)
    pool = stop_at_end(start_pool(REDIS_URL=private_redis.url, GEMINI_BASE_URL=fake_gemini.url))
    bot_id = create_bot(web, token)["id"]
    people = Conversations(web, token, bot_id)

    with open_events(web, bot_id, token) as ws:
        frames = Frames(ws)
        pair(web, token, bot_id, frames)
        people.write(1, "Bom dia")
        people.wait_for_answers(timeout=20)

        private_redis.kill()
        for n in range(2, 7):
            people.write(n, f"Tem pão? ({n})")
        back_after(web, token, bot_id, drop_network(web, token, bot_id))
        people.wait_for_answers(timeout=30)
        assert healthz(web) == 503, "the health check shows the channel layer is gone"

        private_redis.start()
        wait_until(lambda: healthz(web) == 200, timeout=20, interval=0.2, message="/healthz did not recover")
        reconnected = back_after(web, token, bot_id, drop_network(web, token, bot_id))
        frames.until(lambda f: f["seq"] == reconnected["seq"], timeout=20)
        people.write(7, "Obrigado")
        people.wait_for_answers(timeout=20)

    seqs = [frame["seq"] for frame in frames.seen]
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "every transition reached the socket, in order"
    drops = [f for f in frames.seen if f["event"] == "connecting" and f.get("lastError") == "network dropped"]
    assert len(drops) == 2, "the drop while Redis was down was told too, once Redis was back"
    assert pool.log().count("started (capacity") == 1, "the pool rode it out without a restart"
