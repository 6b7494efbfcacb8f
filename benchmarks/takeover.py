"""Take-over time: how long until another pool hosts the bots of a pool that stopped or died.

    .venv/bin/python benchmarks/takeover.py --bots 50 500
    .venv/bin/python benchmarks/takeover.py --bots 500 --ttl 6

Two pools (`manage.py run_whatsapp`, each a supervisor and one shard) on one
database. K paired simulator bots are all hosted by the first; once the
second's shard is up (its heartbeat is seen), the first is ended:

- `sigterm`: SIGTERM to its supervisor, as systemd stops a unit. The shard
  stops each client, records `disconnected` ("worker stopped") and releases
  its lease; the second pool claims them as they come free, no lease waited for.
- `kill`: SIGKILL to its whole process group (supervisor and shard): nobody
  releases anything, so the second pool waits until the leases expire (the
  last renewal, every TTL/3, plus WHATSAPP_LEASE_TTL) and then claims them.

Per bot, the take-over time runs from the signal to its first `connected`
event written by the second pool (its shard's clock and ours are the same
machine's). Reported: the first, p50, p90 and last bot; that every bot moved
without a new QR, and that no `stream_replaced` was ever recorded (a second
connection for a device while the first was alive: both hosts at once).
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import subprocess
import sys
import time

from common import ROOT, emit, paired_simulator_bots, percentile, reset_data, setup_django, stop


def start_pool(env: dict) -> subprocess.Popen:
    # A session (and process group) of its own: `kill` ends the supervisor and its shard at once.
    return subprocess.Popen(
        [sys.executable, "manage.py", "run_whatsapp"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stderr=open(os.environ.get("POOL_LOG", os.devnull), "a"),  # POOL_LOG=file keeps the pools' logs
    )


def end_group(pool: subprocess.Popen) -> None:
    """Make sure nothing of a pool is left: its supervisor stops its shards on SIGTERM, else SIGKILL all."""
    stop(pool, timeout=90)
    try:
        os.killpg(pool.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def one_take_over(bots: int, how: str, env: dict, timeout: float) -> dict:
    from django.db import connection
    from django.db.models import Max, Min
    from django.utils import timezone

    from whatsapp.models import Session, SessionEvent, ShardHeartbeat

    def counted(value):
        connection.close()
        return value

    reset_data()
    ids = [bot.pk for bot in paired_simulator_bots(bots)]
    connection.close()
    first = start_pool(env)
    second = None
    try:
        wait_for(
            lambda: counted(Session.objects.filter(status="connected").exclude(lease_owner="").count()) >= bots,
            timeout,
            "the first pool to connect its bots",
        )
        # Heartbeats of shards that died earlier (a `kill` before) stay behind: only a new one is the second's.
        seen = set(ShardHeartbeat.objects.values_list("pk", flat=True))
        second = start_pool(env)
        second_shards = wait_for(
            lambda: counted(list(ShardHeartbeat.objects.exclude(shard_id__in=seen).values_list("pk", flat=True))),
            60,
            "the second pool's shard",
        )
        # Its supervisor announces a shard before the process is up: wait for the shard's own beat.
        announced = dict(ShardHeartbeat.objects.filter(pk__in=second_shards).values_list("pk", "seen_at"))
        wait_for(
            lambda: counted(
                all(beat.seen_at > announced[beat.pk] for beat in ShardHeartbeat.objects.filter(pk__in=second_shards))
            ),
            60,
            "the second pool's shard to run",
        )

        # Steady state: the first pool renewed all its leases together since it claimed them (a shard
        # renews between steps, and its first step claims and starts every bot, one by one).
        def renewed_together() -> bool:
            spread = Session.objects.aggregate(first=Min("lease_expires_at"), last=Max("lease_expires_at"))
            return counted(spread["last"] - spread["first"] < datetime.timedelta(seconds=0.5))

        wait_for(renewed_together, 60, "the first pool to renew its leases")
        # Leases at the moment of the signal, on the database's clock.
        with connection.cursor() as cursor:
            cursor.execute("SELECT clock_timestamp()")
            (db_now,) = cursor.fetchone()
        expiry = Session.objects.aggregate(first=Min("lease_expires_at"), last=Max("lease_expires_at"))
        versions = dict(Session.objects.values_list("pk", "version"))
        connection.close()

        signalled = timezone.now()
        started = time.monotonic()
        if how == "sigterm":
            first.send_signal(signal.SIGTERM)
        else:
            os.killpg(first.pid, signal.SIGKILL)

        exited = None
        while True:
            if exited is None and first.poll() is not None:
                exited = time.monotonic() - started
            # By its events: right after a claim the row still says `connected` (the dead host's last word).
            rows = counted(
                SessionEvent.objects.filter(event="connected", created_at__gte=signalled)
                .values("session_id")
                .distinct()
                .count()
            )
            if rows >= bots:
                break
            if time.monotonic() - started > timeout:
                raise SystemExit(f"{how}, {bots} bots: timed out with {rows} connected on the second pool")
            time.sleep(0.05)
        all_seen = time.monotonic() - started
        if how == "sigterm" and exited is None:
            first.wait(60)
            exited = time.monotonic() - started

        connected_at = {}
        for session_id, version, at in SessionEvent.objects.filter(
            event="connected", created_at__gte=signalled
        ).values_list("session_id", "version", "created_at"):
            if version > versions[session_id]:
                connected_at[session_id] = min(at, connected_at.get(session_id, at))
        later = SessionEvent.objects.filter(session_id__in=ids, created_at__gte=signalled)
        qr_events = later.filter(event="qr").count()
        worker_stopped = later.filter(frame__lastError="worker stopped").count()
        replaced = SessionEvent.objects.filter(frame__lastError="stream_replaced").count()
        failed = later.filter(event="failed").count()
        owners_now = set(Session.objects.values_list("lease_owner", flat=True).distinct())
        connection.close()
    finally:
        for pool in (first, second):
            if pool is not None:
                end_group(pool)
    seconds = sorted((at - signalled).total_seconds() for at in connected_at.values())
    result = {
        "how": how,
        "bots": bots,
        "moved": len(seconds),
        "seconds_to_first_bot": round(seconds[0], 2),
        "seconds_p50": round(percentile(seconds, 50), 2),
        "seconds_p90": round(percentile(seconds, 90), 2),
        "seconds_to_last_bot": round(seconds[-1], 2),
        "seconds_until_the_benchmark_saw_all": round(all_seen, 2),
        "qr_events_after_the_signal": qr_events,
        "stream_replaced_events": replaced,
        "failed_events_after_the_signal": failed,
        "all_on_the_second_pool": owners_now <= set(second_shards),
    }
    if how == "sigterm":
        result["worker_stopped_events"] = worker_stopped
        result["seconds_until_the_first_pool_exited"] = round(exited, 2)
    else:
        result["leases_expired_after_seconds"] = {
            "first": round((expiry["first"] - db_now).total_seconds(), 2),
            "last": round((expiry["last"] - db_now).total_seconds(), 2),
        }
        result["seconds_after_the_last_lease_expired"] = round(
            seconds[-1] - (expiry["last"] - db_now).total_seconds(), 2
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bots", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--how", nargs="+", choices=["sigterm", "kill"], default=["sigterm", "kill"])
    parser.add_argument("--ttl", type=int, default=15, help="WHATSAPP_LEASE_TTL for both pools (6 at least)")
    parser.add_argument("--timeout", type=float, default=90)
    args = parser.parse_args()
    env = setup_django()
    pool_env = dict(env, WHATSAPP_LEASE_TTL=str(args.ttl))
    emit(
        {
            "benchmark": "takeover",
            "database": env["DATABASE_URL"].split("://")[0],
            "channel_layer": "redis" if env.get("REDIS_URL") else "none",
            "lease_ttl": args.ttl,
            "results": [one_take_over(bots, how, pool_env, args.timeout) for bots in args.bots for how in args.how],
        }
    )


if __name__ == "__main__":
    main()
