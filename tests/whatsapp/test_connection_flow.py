"""The connection pipeline end to end: daphne, the pool and a WebSocket client, as an operator uses them.

On PostgreSQL + Redis in CI; on SQLite alone when DATABASE_URL and REDIS_URL are unset.
"""

from __future__ import annotations

import os
import signal

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from bots.models import ApiToken, Message
from tests.processes import pid_of, wait_until
from tests.whatsapp.live import QR_PAYLOAD, Frames, create_bot, decode_qr, open_events, pair, status_of, wait_for_status
from whatsapp.models import Session, SessionEvent

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def token(alice) -> str:
    return ApiToken.issue(alice)[1]


def test_it_shows_a_live_qr_that_pairs_the_phone(web, pool, token):
    pool()
    bot = create_bot(web, token)
    assert bot["whatsapp"]["status"] == "connecting"

    with open_events(web, bot["id"], token) as ws:
        frames = Frames(ws)
        first = frames.next()
        assert first["event"] == "status"
        qr = frames.until(lambda f: bool(f.get("qrCode")))
        assert qr["status"] == "qr_required"
        assert qr["qrExpiresAt"].endswith("Z")
        payload = decode_qr(qr["qrCode"])
        assert QR_PAYLOAD.match(payload), payload

        # A phone that read some other code does not pair the bot.
        status, _, _ = web.request("POST", f"/api/bots/{bot['id']}/simulator/scan", {"qr": "2@x,y,z,w"}, token)
        assert status == 202
        status, _, body = web.request(
            "POST",
            f"/api/bots/{bot['id']}/simulator/scan",
            {"qr": payload, "phone": "5511987654321", "pushName": "Padaria"},
            token,
        )
        assert status == 202, body
        connected = frames.until(lambda f: f["event"] == "connected")

    assert connected["status"] == "connected"
    assert connected["jid"].startswith("5511987654321:") and connected["jid"].endswith("@s.whatsapp.net")
    assert connected["phone"] == "5511987654321"
    assert connected["pushName"] == "Padaria"
    assert "qrCode" not in connected
    seqs = [frame["seq"] for frame in frames.seen]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "every transition, in order, none lost or merged"
    status = status_of(web, token, bot["id"])
    assert status["status"] == "connected" and status["seq"] == connected["seq"]


def test_it_stays_connected_across_restarts_drops_and_ends_on_unlink(web, pool, token):
    first_pool = pool()
    bot = create_bot(web, token)
    with open_events(web, bot["id"], token) as ws:
        pair(web, token, bot["id"], Frames(ws))

    # A restart of the pool: the bot comes back without a new QR.
    assert first_pool.stop() == 0
    stopped = status_of(web, token, bot["id"])
    assert stopped["status"] == "disconnected"
    assert stopped["lastError"] == "worker stopped"
    assert Session.objects.get(pk=bot["id"]).desired_connected, "a shutdown never changes what the operator wants"
    with open_events(web, bot["id"], token) as ws:
        frames = Frames(ws)
        pool()
        frames.until(lambda f: f["event"] == "connected")
        assert "qr" not in frames.events()

        # The network drops: it reconnects by itself, without a QR.
        status, _, _ = web.request("POST", f"/api/bots/{bot['id']}/simulator/drop", token=token)
        assert status == 202
        dropped = frames.until(lambda f: f["event"] == "connecting")
        assert dropped["lastError"] == "network dropped"
        frames.until(lambda f: f["event"] == "connected")
        assert "qr" not in frames.events()

        # The phone unlinks the device: logged out, device forgotten.
        status, _, _ = web.request("POST", f"/api/bots/{bot['id']}/simulator/unlink", token=token)
        assert status == 202
        logged_out = frames.until(lambda f: f["event"] == "logged_out")
    assert logged_out["status"] == "logged_out"
    assert "jid" not in logged_out
    session = Session.objects.get(pk=bot["id"])
    assert not session.desired_connected and session.jid == ""
    status, _, body = web.request("POST", f"/api/bots/{bot['id']}/simulator/unlink", token=token)
    assert status == 409 and body["error"]["code"] == "not_paired"


def test_it_times_out_an_unscanned_qr_and_can_retry(web, pool, token):
    pool(WHATSAPP_QR_TIMEOUT="10")
    bot = create_bot(web, token)
    with open_events(web, bot["id"], token) as ws:
        frames = Frames(ws)
        first_qr = decode_qr(frames.until(lambda f: f["event"] == "qr")["qrCode"])
        timeout = frames.until(lambda f: f["event"] == "qr_timeout", timeout=25)
    assert timeout["status"] == "qr_timeout"
    assert "qrCode" not in timeout
    assert not Session.objects.get(pk=bot["id"]).desired_connected

    # Retry: a new connect request shows a fresh QR.
    status, _, body = web.request("POST", f"/api/bots/{bot['id']}/connect-whatsapp", token=token)
    assert status in (200, 202), body
    retried = wait_for_status(web, token, bot["id"], "qr_required")
    assert QR_PAYLOAD.match(decode_qr(retried["qrCode"]))
    assert decode_qr(retried["qrCode"]) != first_qr


def test_it_refuses_websockets_without_the_right_origin_auth_or_bot(web, bob, token):
    bob_token = ApiToken.issue(bob)[1]
    bot = create_bot(web, token, autoConnect=False)

    # The Origin must be the page's own, scheme, host and port: another port of the same host is another site.
    for origin in ("http://evil.example.com", f"http://127.0.0.1:{web.port + 1}", f"https://127.0.0.1:{web.port}"):
        with pytest.raises(InvalidStatus) as refused:
            open_events(web, bot["id"], token, origin=origin)
        assert refused.value.response.status_code == 403, origin
    # A path with no route, or an id that is not a UUID, is an HTTP 404 at the handshake (not a 500).
    for path in ("/ws/nowhere", "/api/bots/123/connection-events", "/ws/bots/not-a-uuid/live"):
        with pytest.raises(InvalidStatus) as missing:
            connect(web.ws_base + path, origin=web.base, open_timeout=10)
        assert missing.value.response.status_code == 404, path

    for credentials, code in ((None, 4401), ("not-a-token", 4401), (bob_token, 4404)):
        with open_events(web, bot["id"], credentials) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
        assert closed.value.rcvd.code == code, credentials

    with open_events(web, "00000000-0000-0000-0000-000000000000", token) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd.code == 4404

    status, _, body = web.request("POST", f"/api/bots/{bot['id']}/connect-whatsapp", token=bob_token)
    assert status == 404 and body["error"]["code"] == "not_found"
    status, _, body = web.request("GET", f"/api/bots/{bot['id']}/whatsapp-status")
    assert status == 401 and body["error"]["code"] == "unauthorized"


def test_it_hosts_each_bot_on_one_shard_and_survives_a_killed_shard(web, pool, token):
    pool("--shards", "2")
    bots = [create_bot(web, token, name=f"Bot {n}") for n in range(4)]
    for n, bot in enumerate(bots):
        with open_events(web, bot["id"], token) as ws:
            pair(web, token, bot["id"], Frames(ws), phone=f"55119000000{n:02d}")

    owners = dict(Session.objects.filter(pk__in=[b["id"] for b in bots]).values_list("pk", "lease_owner"))
    assert all(owners.values()), "every connected bot has exactly one host"

    # kill -9 the shard hosting the first bot, then queue messages for it while it is down.
    victim_owner = owners[next(iter(owners))]
    victim_pid = pid_of(f"--shard-id {victim_owner}")
    victim_bots = [str(pk) for pk, owner in owners.items() if owner == victim_owner]
    last_seq = dict(Session.objects.filter(pk__in=victim_bots).values_list("pk", "version"))
    os.kill(victim_pid, signal.SIGKILL)
    sent_ids = []
    for n in range(3):
        status, _, body = web.request(
            "POST",
            f"/api/bots/{victim_bots[0]}/simulator/inbound",
            {"from": "5511955554444", "text": f"mensagem {n}", "id": f"KILL{n}"},
            token,
        )
        assert status == 202, body
        sent_ids.append(body["id"])

    def resumed():
        rows = Session.objects.filter(pk__in=victim_bots)
        return all(s.status == "connected" and s.lease_owner not in ("", victim_owner) for s in rows)

    wait_until(resumed, timeout=40, interval=0.2, message="the killed shard's bots were not resumed")
    wait_until(
        lambda: Message.objects.filter(bot_id=victim_bots[0], wa_id__in=sent_ids).count() == 3,
        timeout=20,
        message="pending inbound messages were lost",
    )
    for wa_id in sent_ids:
        assert Message.objects.filter(bot_id=victim_bots[0], wa_id=wa_id).count() == 1
    assert not SessionEvent.objects.filter(frame__lastError="stream_replaced").exists(), "a bot was hosted twice"
    for bot_id, seq in last_seq.items():
        assert not SessionEvent.objects.filter(session_id=bot_id, version__gt=seq, event="qr").exists(), (
            "resumed with a QR"
        )
