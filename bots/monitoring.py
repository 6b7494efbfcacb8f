"""``/healthz`` and ``/metrics``: plain views, outside the OpenAPI document.

Metrics are read from the database at scrape time, so every web process
answers the same figures for the whole deployment (shards on all hosts);
only the ``web_*`` gauges are the answering process's own (its sockets).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import secrets

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.db.models import Count, Q, Sum
from django.db.models.functions import Now
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

from botplatform.proxy import FORWARDING_HEADERS, is_loopback, relayed_for
from bots import sockets
from bots.models import Direction, Message
from whatsapp.models import Session, SessionEvent, ShardHeartbeat

logger = logging.getLogger(__name__)

LATENCY_BUCKETS_MS = (250, 500, 1000, 2000, 5000, 10000, 25000)


def _check_database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return "ok"


def _check_channel_layer() -> str:
    layer = get_channel_layer()
    if layer is None:
        return "not configured (consumers follow the event log)"
    async_to_sync(layer.group_send)("healthz", {"type": "healthz.ping"})
    return "ok"


def _check_shards() -> str:
    """Fresh heartbeats, when there are bots that want a host."""
    window = 2 * settings.WHATSAPP_LEASE_TTL
    fresh = ShardHeartbeat.objects.filter(seen_at__gte=Now() - datetime.timedelta(seconds=window)).count()
    wanted = Session.objects.filter(desired_connected=True, bot__deleted_at__isnull=True).exists()
    if wanted and not fresh:
        raise RuntimeError(f"no shard heartbeat in the last {window} s while bots want a connection")
    return f"ok ({fresh} live)"


@require_GET
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """For load balancers and monitors: 200 when healthy, 503 with the failing checks otherwise.

    Anyone sees ``ok`` or ``error`` per check; what failed, and how, only a caller with METRICS_TOKEN
    (the error text names internal hosts and ports).
    """
    detailed = _has_metrics_token(request)
    checks: dict[str, str] = {}
    healthy = True
    for name, check in (
        ("database", _check_database),
        ("channel_layer", _check_channel_layer),
        ("shards", _check_shards),
    ):
        try:
            result = check()
            checks[name] = result if detailed else "ok"
        except Exception as exc:
            healthy = False
            checks[name] = f"error: {exc}"[:300] if detailed else "error"
            logger.warning("health check %s failed: %s", name, exc)
            if name == "database":
                break
    return JsonResponse({"status": "ok" if healthy else "unhealthy", "checks": checks}, status=200 if healthy else 503)


class DatabaseCollector:
    """Prometheus metrics computed from the database at scrape time."""

    def collect(self):
        sessions = GaugeMetricFamily(
            "whatsapp_sessions", "WhatsApp sessions by status and hosting shard.", labels=["status", "shard"]
        )
        rows = (
            Session.objects.filter(bot__deleted_at__isnull=True).values("status", "lease_owner").annotate(n=Count("pk"))
        )
        for row in rows:
            sessions.add_metric([row["status"], row["lease_owner"] or "none"], row["n"])
        yield sessions

        shards = GaugeMetricFamily(
            "whatsapp_shard_bots", "Bots hosted and capacity per live shard.", labels=["shard", "kind"]
        )
        for beat in ShardHeartbeat.objects.all():
            shards.add_metric([beat.shard_id, "hosted"], beat.hosted)
            shards.add_metric([beat.shard_id, "capacity"], beat.capacity)
        yield shards

        messages = GaugeMetricFamily(
            "bot_messages", "Stored messages by direction and status.", labels=["direction", "status"]
        )
        for row in Message.objects.values("direction", "status").annotate(n=Count("pk")):
            messages.add_metric([row["direction"], row["status"]], row["n"])
        yield messages

        depth = GaugeMetricFamily("bot_queue_depth", "Work waiting in the pipeline.", labels=["queue"])
        waiting = Message.objects.aggregate(
            inbound=Count("pk", filter=Q(direction=Direction.IN, status__in=["received", "replying"])),
            outbox=Count("pk", filter=Q(direction=Direction.OUT, status__in=["queued", "sending"])),
        )
        for queue, value in waiting.items():
            depth.add_metric([queue], value)
        yield depth

        answered = Message.objects.filter(direction=Direction.IN, ai_latency_ms__isnull=False)
        buckets = answered.aggregate(
            total=Count("pk"),
            sum=Sum("ai_latency_ms"),
            **{f"le{ms}": Count("pk", filter=Q(ai_latency_ms__lte=ms)) for ms in LATENCY_BUCKETS_MS},
        )
        latency = HistogramMetricFamily("bot_reply_ai_latency_seconds", "Time spent getting each AI reply.")
        latency.add_metric(
            [],
            [(str(ms / 1000), buckets[f"le{ms}"]) for ms in LATENCY_BUCKETS_MS] + [("+Inf", buckets["total"])],
            sum_value=(buckets["sum"] or 0) / 1000,
        )
        yield latency

        errors = GaugeMetricFamily(
            "bot_reply_errors", "Inbound messages whose reply hit an error (fallback or failed)."
        )
        errors.add_metric([], Message.objects.filter(direction=Direction.IN).exclude(error="").count())
        yield errors

        reconnects = GaugeMetricFamily(
            "whatsapp_reconnects_logged", "Reconnects after a drop or a failed dial, in the bounded event log."
        )
        reconnects.add_metric([], SessionEvent.objects.filter(event="connecting").exclude(detail="").count())
        yield reconnects


class ProcessCollector:
    """This web process's live sockets: the only figures here that are not the whole deployment's."""

    def collect(self):
        sockets_open = GaugeMetricFamily(
            "web_sockets_open", "WebSockets open and authorized in this web process (all users)."
        )
        sockets_open.add_metric([], sum(sockets.open_sockets.values()))
        yield sockets_open
        consumers = GaugeMetricFamily(
            "web_socket_consumers", "Socket consumers running in this web process: one per socket, none left over."
        )
        consumers.add_metric([], len(sockets.running))
        yield consumers
        tasks = GaugeMetricFamily("web_asyncio_tasks", "asyncio tasks of this web process's event loop.")
        tasks.add_metric([], async_to_sync(_count_tasks)())
        yield tasks


async def _count_tasks() -> int:
    return len(asyncio.all_tasks())


def _has_metrics_token(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return bool(token and given and secrets.compare_digest(given, token))


def client_address(request: HttpRequest) -> str:
    """The address a request came from: through the deployment's proxy, the one it names; else the peer's.

    Only the header that proxy sets (PROXY_CLIENT_HEADER) is believed; any other on a request from
    loopback makes it a forwarded one, of nobody known ("").
    """
    trusted = settings.PROXY_CLIENT_HEADER
    peer = request.META.get("REMOTE_ADDR", "")
    if is_loopback(peer) and any(h in request.headers and h != trusted for h in FORWARDING_HEADERS):
        return ""
    relayed = relayed_for(request, trusted)
    return peer if relayed is None else relayed


def _metrics_allowed(request: HttpRequest) -> bool:
    return _has_metrics_token(request) or is_loopback(client_address(request))


@require_GET
@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    if not _metrics_allowed(request):
        return HttpResponse(
            "Forbidden: /metrics answers loopback or a METRICS_TOKEN.\n", status=403, content_type="text/plain"
        )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector())
    registry.register(ProcessCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
