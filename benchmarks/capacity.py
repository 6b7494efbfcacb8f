"""Sessions per shard and per host: what holding them costs, and what stops a shard from holding more.

    .venv/bin/python benchmarks/capacity.py shard --bots 1000 2000
    .venv/bin/python benchmarks/capacity.py host --shards 4 --bots 4000
    .venv/bin/python benchmarks/capacity.py neonize --shards 1
    .venv/bin/python benchmarks/capacity.py neonize --shards 2 --pg-clients 0

`shard`: one shard process alone hosts N paired simulator bots. Its capacity
(WHATSAPP_SHARD_CAPACITY, 1000 by default) is raised to N, so what is measured
is the process, not the cap: seconds until all
are connected (process start included), then, once idle, the shard's RSS and
threads, the CPU it and the PostgreSQL server processes of the database use per
second (nothing happens but the lease renewals, the simulator's heartbeats and
polls, and the reply scans), the database connections, and the seconds a
SIGTERM takes to stop it (every bot recorded `disconnected` and released).

`host`: the same for a pool of N shards on this machine (`run_whatsapp --shards N`,
the supervisor included) sharing the bots, each shard's capacity raised to its
share when 1000 is not enough. It reports how the bots were spread, and the
leases shards lost to one another on the way (from the pool's log).

`neonize`: the real library, offline (see neonize_clients.py): each client
makes its connect attempt, fails at DNS and is hosted in backoff (drawn from
0-60 s: some try again within the run, and each ended attempt leaks a store
pool, so figures are given per client and per attempt). Per shard up to
WHATSAPP_NEONIZE_CAPACITY, with a SQLite store of its own: RSS and threads,
and the seconds until every client dialled (a shard paces its dials). With the
store in the main PostgreSQL database: the connections per attempt (a few
clients only: the server's max_connections is shared).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    ROOT,
    NudgeCounter,
    database_backends,
    default_shard_capacity,
    emit,
    neonize_bots,
    paired_simulator_bots,
    reset_data,
    rss_mb,
    setup_django,
    shard_pids,
    start_shard,
    stop,
    total_cpu_seconds,
)

SETTLE_SECONDS = 3.0


def by_owner(**filters) -> dict[str, int]:
    """Sessions matching ``filters``, counted by the shard holding their lease."""
    from django.db import connection
    from django.db.models import Count

    from whatsapp.models import Session

    rows = dict(
        Session.objects.filter(**filters)
        .values_list("lease_owner")
        .annotate(n=Count("pk"))
        .values_list("lease_owner", "n")
    )
    connection.close()
    return rows


def connected_by_owner() -> dict[str, int]:
    return by_owner(status="connected")


def wait_connected(expected: int, started: float, timeout: float, alive) -> tuple[int, float | None, float]:
    """Poll until `expected` sessions are connected; returns (connected, first at, all at) in seconds."""
    connected, first_at = 0, None
    while time.monotonic() - started < timeout and alive():
        connected = sum(connected_by_owner().values())
        if connected and first_at is None:
            first_at = time.monotonic() - started
        if connected >= expected:
            break
        time.sleep(0.25)
    return connected, first_at, time.monotonic() - started


def idle_cost(pids: list[int], seconds: float) -> dict:
    """CPU per second of these processes and of the database's server processes while idle.

    Sampled each second; the median second is the figure (a sweep or a vacuum now and then
    would otherwise decide it), the mean beside it.
    """
    backends = list(database_backends())
    samples: list[tuple[float, float]] = []
    last, at = (total_cpu_seconds(pids), total_cpu_seconds(backends)), time.monotonic()
    with NudgeCounter() as nudges:
        for _ in range(max(1, round(seconds))):
            time.sleep(1.0)
            now, now_at = (total_cpu_seconds(pids), total_cpu_seconds(backends)), time.monotonic()
            samples.append(((now[0] - last[0]) / (now_at - at), (now[1] - last[1]) / (now_at - at)))
            last, at = now, now_at
    return {
        "pool_cpu_per_second": round(statistics.median(s[0] for s in samples), 4),
        "pool_cpu_per_second_mean": round(statistics.mean(s[0] for s in samples), 4),
        "postgres_cpu_per_second": round(statistics.median(s[1] for s in samples), 4),
        "postgres_cpu_per_second_mean": round(statistics.mean(s[1] for s in samples), 4),
        "idle_window_seconds": len(samples),
        "postgres_connections": len(backends),
        # Each nudge wakes every shard for a step (the benchmark sends none).
        "nudges_during_window": nudges.count,
    }


def claim_pass_seconds(shard_id: str) -> float | None:
    """From the shard's first heartbeat (written just before it claims) to its first bot connected.

    A shard claims all the bots it has room for, one by one, before it starts any client.
    """
    from django.db import connection

    from whatsapp.models import SessionEvent, ShardHeartbeat

    beat = ShardHeartbeat.objects.filter(shard_id=shard_id).values_list("started_at", flat=True).first()
    first = (
        SessionEvent.objects.filter(event="connected", session__lease_owner=shard_id)
        .order_by("created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    connection.close()
    return round((first - beat).total_seconds(), 2) if beat and first else None


def churn(log_path: str | None = None) -> dict:
    """Connects beyond one per bot, and the leases shards lost on the way (from the pool's log)."""
    from django.db import connection

    from whatsapp.models import Session, SessionEvent

    sessions = Session.objects.count()
    result = {
        "connected_events": SessionEvent.objects.filter(event="connected").count(),
        "sessions": sessions,
        "stream_replaced_events": SessionEvent.objects.filter(frame__lastError="stream_replaced").count(),
    }
    connection.close()
    if log_path:
        text = Path(log_path).read_text(errors="replace")
        result["log_lease_lost"] = text.count("lease lost, dropping it")
        result["log_lease_not_renewed"] = text.count("lease not renewed")
        # The supervisor's grace (30 s) ran out while a shard was still stopping its bots.
        result["log_shards_killed_by_the_supervisor"] = text.count("did not stop in")
    return result


def per_thousand(value: float, sessions: int) -> float | None:
    return round(value / sessions * 1000, 4) if sessions else None


def leases_held() -> int:
    from django.db import connection

    from whatsapp.models import Session

    held = Session.objects.exclude(lease_owner="").count()
    connection.close()
    return held


# --- simulator: one shard ------------------------------------------------------------


def measure_shard(bots: int, capacity: int | None, env: dict, idle: float, timeout: float) -> dict:
    from django.db import connection

    reset_data()
    paired_simulator_bots(bots)
    connection.close()
    capacity = capacity or bots
    expected = min(bots, capacity)
    log = tempfile.NamedTemporaryFile(prefix="bench-capacity-", suffix=".log")
    started = time.monotonic()
    shard = start_shard(env, "bench-capacity", capacity=capacity, stderr=log)
    try:
        connected, first_at, all_at = wait_connected(expected, started, timeout, lambda: shard.poll() is None)
        claim_pass = claim_pass_seconds("bench-capacity")
        time.sleep(SETTLE_SECONDS)
        cost = idle_cost([shard.pid], idle)
        memory = rss_mb(shard.pid)
    finally:
        stop_seconds = stop(shard, timeout=120)
    moves = churn(log.name)
    log.close()
    return {
        "bots": bots,
        "shard_capacity": capacity,
        "connected": connected,
        "seconds_to_all_connected": round(all_at, 1),
        "seconds_to_first_connected": round(first_at or float("nan"), 2),
        "connected_per_second": round(connected / all_at, 1) if all_at else None,
        "claim_pass_seconds": claim_pass,
        **memory,
        **cost,
        "shard_cpu_per_second_per_1000": per_thousand(cost["pool_cpu_per_second"], connected),
        "postgres_cpu_per_second_per_1000": per_thousand(cost["postgres_cpu_per_second"], connected),
        "seconds_to_stop_on_sigterm": round(stop_seconds, 1),
        "stop_ms_per_session": round(stop_seconds / connected * 1000, 1) if connected else None,
        "exit_code": shard.returncode,
        "leases_left_held": leases_held(),
        **moves,
    }


def run_shard_benchmark(args, env: dict) -> dict:
    results = [measure_shard(bots, args.capacity, env, args.idle, args.timeout) for bots in args.bots]
    # What each further 1000 sessions add, between consecutive sizes (the process's own baseline cancels).
    marginal = [
        {
            "from": a["connected"],
            "to": b["connected"],
            "rss_mb_per_1000": per_thousand(b["rss_mb"] - a["rss_mb"], b["connected"] - a["connected"]),
            "shard_cpu_per_second_per_1000": per_thousand(
                b["pool_cpu_per_second"] - a["pool_cpu_per_second"], b["connected"] - a["connected"]
            ),
        }
        for a, b in itertools.pairwise(results)
        if b["connected"] > a["connected"]
    ]
    return {
        "benchmark": "capacity",
        "mode": "shard",
        "provider": "simulator",
        "database": env["DATABASE_URL"].split("://")[0],
        "lease_ttl": int(env.get("WHATSAPP_LEASE_TTL", 15)),
        "built_in_shard_capacity": default_shard_capacity(),
        "supervisor_stop_grace_seconds": 30,
        "results": results,
        "marginal": marginal,
    }


# --- simulator: one host, N shards ------------------------------------------------------


def run_host_benchmark(args, env: dict) -> dict:
    from django.db import connection

    reset_data()
    paired_simulator_bots(args.bots)
    connection.close()
    built_in = default_shard_capacity()
    capacity = args.capacity or max(built_in, -(-args.bots // args.shards))
    log = tempfile.NamedTemporaryFile(prefix="bench-capacity-", suffix=".log")
    started = time.monotonic()
    supervisor = subprocess.Popen(
        [sys.executable, "manage.py", "run_whatsapp", "--shards", str(args.shards)],
        cwd=ROOT,
        env=dict(env, WHATSAPP_SHARD_CAPACITY=str(capacity)),
        stderr=log,
    )
    expected = min(args.bots, capacity * args.shards)
    try:
        connected, first_at, all_at = wait_connected(expected, started, args.timeout, lambda: supervisor.poll() is None)
        time.sleep(SETTLE_SECONDS)
        spread = sorted(connected_by_owner().values(), reverse=True)
        pids = [supervisor.pid, *shard_pids(supervisor.pid)]
        cost = idle_cost(pids, args.idle)
        memory = [rss_mb(pid) for pid in pids]
    finally:
        stop_seconds = stop(supervisor, timeout=120)
    moves = churn(log.name)
    log.close()
    return {
        "benchmark": "capacity",
        "mode": "host",
        "provider": "simulator",
        "database": env["DATABASE_URL"].split("://")[0],
        "cores": len(os.sched_getaffinity(0)),
        "shards": args.shards,
        "shard_capacity": capacity,
        "built_in_shard_capacity": built_in,
        "bots": args.bots,
        "connected": connected,
        "connected_per_shard": spread,
        "seconds_to_all_connected": round(all_at, 1),
        "seconds_to_first_connected": round(first_at or float("nan"), 2),
        "rss_mb_sum": round(sum(m["rss_mb"] for m in memory), 1),
        "rss_mb_per_process": [m["rss_mb"] for m in memory],  # the supervisor first
        "threads_sum": sum(m["threads"] for m in memory),
        **cost,
        "pool_cpu_per_second_per_1000": per_thousand(cost["pool_cpu_per_second"], connected),
        "postgres_cpu_per_second_per_1000": per_thousand(cost["postgres_cpu_per_second"], connected),
        "seconds_to_stop_on_sigterm": round(stop_seconds, 1),
        "leases_left_held": leases_held(),
        **moves,
    }


# --- neonize, offline ------------------------------------------------------------------------


def measure_neonize(clients: int, shards: int, store: str, env: dict, idle: float, timeout: float, probe=None) -> dict:
    """``probe()``, if given, adds what it measures once every client made its attempt."""
    from django.db import connection

    from whatsapp.models import Session, SessionEvent, ShardHeartbeat

    reset_data()
    ShardHeartbeat.objects.all().delete()
    # Not wanted yet: the shards start (neonize loaded, its store open) with nothing to host, for the baseline.
    neonize_bots(clients, wanted=False)
    connection.close()
    pool_env = dict(
        env,
        # One attempt each, then a backoff drawn from 0-60 s (full jitter): a few try again within the run.
        WHATSAPP_BACKOFF_BASE="60",
        WHATSAPP_BACKOFF_CAP="3600",
        WHATSAPP_SIMULATOR="0",
        # Every client's attempt ends (offline): no recycling before all were made.
        WHATSAPP_RECYCLE_AFTER="100000",
        # Every bot has one owner here: the per-user dial budget (30 per 10 minutes) would hold them.
        WHATSAPP_DIAL_RATE_USER="1000000/600",
        WHATSAPP_STORE_URL=store,
    )
    pool = subprocess.Popen(
        [sys.executable, "manage.py", "run_whatsapp", "--shards", str(shards)],
        cwd=ROOT,
        env=pool_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while ShardHeartbeat.objects.count() < shards and time.monotonic() < deadline:
            connection.close()
            time.sleep(0.2)
        time.sleep(SETTLE_SECONDS)
        pids = shard_pids(pool.pid)
        empty = [rss_mb(pid) for pid in pids]
        empty_connections = len(database_backends())
        Session.objects.update(desired_connected=True)
        connection.close()
        started = time.monotonic()
        attempted = 0
        attempts = SessionEvent.objects.filter(event="connecting", frame__lastError__startswith="connect")
        while time.monotonic() - started < timeout and pool.poll() is None:
            attempted = attempts.values("session_id").distinct().count()
            connection.close()
            if attempted >= clients:
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        time.sleep(SETTLE_SECONDS)
        probed = probe() if probe is not None else {}
        pids = shard_pids(pool.pid)
        cost = idle_cost([pool.pid, *pids], idle)
        loaded = [rss_mb(pid) for pid in pids]
        total_attempts = attempts.count()
        hosted = {owner: n for owner, n in by_owner().items() if owner}
        connection.close()
    finally:
        stop(pool, timeout=90)
    added_rss = sum(m["rss_mb"] for m in loaded) - sum(m["rss_mb"] for m in empty)
    added_threads = sum(m["threads"] for m in loaded) - sum(m["threads"] for m in empty)
    return {
        "clients": clients,
        "shards": shards,
        "store": store.split("://")[0],
        "hosted_per_shard": sorted(hosted.values(), reverse=True),
        "clients_attempted": attempted,
        "connect_attempts": total_attempts,
        "seconds_until_all_attempted": round(elapsed, 1),
        "shard_rss_mb": [m["rss_mb"] for m in loaded],
        "shard_threads": [m["threads"] for m in loaded],
        "shard_rss_mb_before_clients": [m["rss_mb"] for m in empty],
        "shard_threads_before_clients": [m["threads"] for m in empty],
        "rss_mb_per_client": round(added_rss / clients, 3),
        # Each ended attempt leaks a store pool (docs/neonize.md section 4): offline, hosting means retrying.
        "rss_mb_per_attempt": round(added_rss / max(1, total_attempts), 3),
        "threads_per_client": round(added_threads / clients, 2),
        "postgres_connections_before_clients": empty_connections,
        "postgres_connections": cost["postgres_connections"],
        "postgres_connections_per_attempt": round(
            (cost["postgres_connections"] - empty_connections) / max(1, total_attempts), 2
        ),
        "pool_cpu_per_second": cost["pool_cpu_per_second"],
        **probed,
    }


def run_neonize_benchmark(args, env: dict) -> dict:
    from django.conf import settings
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW max_connections")
        (max_connections,) = cursor.fetchone()
    connection.close()
    capacity = settings.WHATSAPP_NEONIZE_CAPACITY
    results = []
    if args.pg_clients:
        # The slope of PostgreSQL connections per client, with whatsmeow's store in the main database.
        results.append(measure_neonize(args.pg_clients, 1, env["DATABASE_URL"], env, args.idle, args.timeout))
    for shards in args.shards:
        store = f"sqlite:///tmp/bench-capacity-whatsmeow-{shards}.sqlite3"
        results.append(measure_neonize(args.clients * shards, shards, store, env, args.idle, args.timeout))
    return {
        "benchmark": "capacity",
        "mode": "neonize",
        "note": "offline: one real connect attempt per client, then hosted in backoff",
        "database": env["DATABASE_URL"].split("://")[0],
        "neonize_capacity_per_shard": capacity,
        "postgres_max_connections": int(max_connections),
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    modes = parser.add_subparsers(dest="mode", required=True)
    shard = modes.add_parser("shard", help="simulator sessions on one shard")
    shard.add_argument("--bots", type=int, nargs="+", default=[1000, 2000])
    shard.add_argument("--capacity", type=int, help="the shard's capacity (default: the number of bots)")
    host = modes.add_parser("host", help="simulator sessions on N shards of this host")
    host.add_argument("--shards", type=int, default=4)
    host.add_argument("--bots", type=int, default=4000)
    host.add_argument("--capacity", type=int, help="each shard's capacity (default: the built-in one, or more)")
    neonize = modes.add_parser("neonize", help="offline neonize clients per shard and per host")
    neonize.add_argument("--clients", type=int, help="clients per shard (default WHATSAPP_NEONIZE_CAPACITY)")
    neonize.add_argument("--shards", type=int, nargs="+", default=[1], help="one run per count, N x clients each")
    neonize.add_argument(
        "--pg-clients", type=int, default=20, help="clients with the store in PostgreSQL (0: skip that run)"
    )
    for sub in (shard, host, neonize):
        sub.add_argument("--idle", type=float, default=10.0, help="seconds of the idle CPU window")
        sub.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    env = setup_django()
    if args.mode == "shard":
        emit(run_shard_benchmark(args, env))
    elif args.mode == "host":
        emit(run_host_benchmark(args, env))
    else:
        from django.conf import settings

        args.clients = args.clients or settings.WHATSAPP_NEONIZE_CAPACITY
        emit(run_neonize_benchmark(args, env))


if __name__ == "__main__":
    main()
