"""/healthz and /metrics: what a load balancer and a Prometheus scraper see."""

from __future__ import annotations

import datetime

import pytest
from django.test import Client
from django.utils import timezone

from bots.models import Direction, Message, MessageStatus
from pool import leases
from tests.helpers import make_bot
from whatsapp.models import Session, ShardHeartbeat, Status

pytestmark = pytest.mark.django_db


def test_it_is_healthy_with_a_database_and_no_bots_waiting():
    response = Client().get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"] == "ok"
    assert "channel_layer" in body["checks"] and "shards" in body["checks"]


def test_it_is_unhealthy_when_bots_wait_and_no_shard_beats(alice):
    bot = make_bot(alice)
    Session.objects.filter(pk=bot.pk).update(desired_connected=True)
    response = Client().get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"]["shards"] == "error"

    leases.beat("shard-a", "host-a", 123, 100, 1)
    assert Client().get("/healthz").status_code == 200

    ShardHeartbeat.objects.update(seen_at=timezone.now() - datetime.timedelta(minutes=5))
    assert Client().get("/healthz").status_code == 503, "a stale heartbeat is a dead shard"


def test_metrics_show_sessions_messages_and_queues(alice):
    bot = make_bot(alice)
    Session.objects.filter(pk=bot.pk).update(status=Status.CONNECTED, lease_owner="shard-a")
    leases.beat("shard-a", "host-a", 123, 100, 1)
    inbound = Message.objects.create(
        bot=bot,
        chat="5511@s.whatsapp.net",
        direction=Direction.IN,
        wa_id="A",
        status=MessageStatus.REPLIED,
        ai_latency_ms=700,
    )
    Message.objects.create(
        bot=bot, chat=inbound.chat, direction=Direction.OUT, status=MessageStatus.QUEUED, in_reply_to=inbound
    )
    Message.objects.create(bot=bot, chat=inbound.chat, direction=Direction.IN, wa_id="B", status=MessageStatus.RECEIVED)

    response = Client(REMOTE_ADDR="127.0.0.1").get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert 'whatsapp_sessions{shard="shard-a",status="connected"} 1.0' in text
    assert 'whatsapp_shard_bots{kind="capacity",shard="shard-a"} 100.0' in text
    assert 'bot_queue_depth{queue="inbound"} 1.0' in text
    assert 'bot_queue_depth{queue="outbox"} 1.0' in text
    assert 'bot_reply_ai_latency_seconds_bucket{le="1.0"} 1.0' in text
    assert 'bot_reply_ai_latency_seconds_bucket{le="0.5"} 0.0' in text
    assert 'bot_messages{direction="in",status="replied"} 1.0' in text


def test_metrics_are_only_for_loopback_or_the_token(settings):
    settings.METRICS_TOKEN = "scrape-secret"
    assert Client(REMOTE_ADDR="203.0.113.9").get("/metrics").status_code == 403
    forwarded = Client(REMOTE_ADDR="127.0.0.1").get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    assert forwarded.status_code == 403, "a local reverse proxy does not make a request local"
    wrong = Client(REMOTE_ADDR="203.0.113.9").get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    right = Client(REMOTE_ADDR="203.0.113.9").get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert right.status_code == 200


def test_placement_sees_live_shards_only_with_the_bots_they_hold_now(alice):
    leases.beat("shard-a", "a", 1, 100, 0)
    leases.beat("shard-b", "b", 2, 50, 0)
    ShardHeartbeat.objects.create(
        shard_id="shard-dead",
        host="c",
        pid=3,
        capacity=100,
        hosted=0,
        seen_at=timezone.now() - datetime.timedelta(hours=1),
    )
    bot = make_bot(alice)
    Session.objects.filter(pk=bot.pk).update(desired_connected=True)
    leases.claim(bot.pk, "shard-a", 15)  # its heartbeat still says 0: the lease counts
    assert leases.shard_loads(15) == {"shard-a": (100, 1), "shard-b": (50, 0)}
    leases.forget_shard("shard-a")
    assert leases.shard_loads(15) == {"shard-b": (50, 0)}


@pytest.mark.parametrize(
    "headers",
    [
        {"Forwarded": "for=203.0.113.9"},
        {"X-Real-IP": "203.0.113.9"},
        {"X-Forwarded-For": "127.0.0.1, 203.0.113.9"},
        {"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "203.0.113.9"},
    ],
)
def test_metrics_believe_only_the_proxy_header_the_deployment_sets(headers):
    """A same-host proxy forwards for someone: unless it names a loopback client in its own header, no metrics."""
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics", headers=headers).status_code == 403
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"}).status_code == 200


def test_metrics_answer_plain_http_on_loopback_even_behind_https(settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]  # what HTTPS=1 sets (tests/test_settings.py)

    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="127.0.0.1").get("/").status_code == 301, "the pages still go to HTTPS"


def test_the_health_check_tells_anonymous_callers_ok_or_error_and_the_token_holder_why(alice, settings):
    settings.METRICS_TOKEN = "scrape-secret"
    bot = make_bot(alice)
    Session.objects.filter(pk=bot.pk).update(desired_connected=True)  # waiting, and no shard beats

    anonymous = Client().get("/healthz").json()
    detailed = Client().get("/healthz", headers={"Authorization": "Bearer scrape-secret"}).json()

    assert anonymous["checks"]["shards"] == "error" and anonymous["checks"]["database"] == "ok"
    assert set(anonymous["checks"].values()) <= {"ok", "error"}, "no internal text for anonymous callers"
    assert detailed["checks"]["shards"].startswith("error: no shard heartbeat")
