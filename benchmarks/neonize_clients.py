"""Memory and threads of one shard per hosted neonize client, with the real library, offline.

    .venv/bin/python benchmarks/neonize_clients.py --counts 1 50 200

WhatsApp's servers are unreachable here, so each client makes its real first
connect attempt (store opened, Go client created, dial fails at DNS) and then
waits in backoff while the shard keeps hosting it. The figures therefore
include what every attempt leaks (a store pool: docs/neonize.md section 4),
not a live WhatsApp session.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time

from common import ROOT, emit, neonize_bots, reset_data, rss_mb, setup_django


def store_connections() -> int:
    """PostgreSQL connections held by the benchmark shard beyond Django's own few."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        (count,) = cursor.fetchone()
    connection.close()
    return count


def measure(count: int, env: dict, timeout: float, store: str) -> dict:
    from django.db import connection

    from whatsapp.models import Session, SessionEvent

    reset_data()
    neonize_bots(count, wanted=True)
    connection.close()
    shard_env = dict(
        env,
        WHATSAPP_BACKOFF_BASE="60",
        WHATSAPP_BACKOFF_CAP="3600",
        WHATSAPP_SIMULATOR="0",
        # Hosting more clients than the recycling threshold means more attempts than it, too.
        WHATSAPP_RECYCLE_AFTER="100000",
    )
    if store != "main":
        shard_env["WHATSAPP_STORE_URL"] = store
    shard = subprocess.Popen(
        [sys.executable, "manage.py", "run_whatsapp", "--shard", "0", "--shard-id", "bench-neonize"],
        cwd=ROOT,
        env=shard_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        started = time.monotonic()
        time.sleep(2)
        idle = rss_mb(shard.pid)
        attempted = 0
        while time.monotonic() - started < timeout:
            attempted = SessionEvent.objects.filter(event="connecting", frame__lastError__startswith="connect").count()
            connection.close()
            if attempted >= count:
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        time.sleep(1)
        loaded = rss_mb(shard.pid)
        connections = store_connections() if env["DATABASE_URL"].startswith("postgres") else None
        hosted = Session.objects.filter(lease_owner="bench-neonize").count()
        connection.close()
    finally:
        shard.send_signal(signal.SIGTERM)
        shard.wait(60)
    return {
        "clients": count,
        "hosted": hosted,
        "attempted": attempted,
        "seconds_until_all_attempted": round(elapsed, 1),
        "shard_rss_mb": loaded["rss_mb"],
        "shard_threads": loaded["threads"],
        "rss_mb_per_client": round((loaded["rss_mb"] - idle["rss_mb"]) / count, 3) if count else None,
        "rss_mb_before_first_attempt": idle["rss_mb"],
        "postgres_connections_of_the_database": connections,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 50, 200])
    parser.add_argument("--timeout", type=float, default=180)
    parser.add_argument(
        "--store",
        default="sqlite:///tmp/bench-whatsmeow.sqlite3",
        help="WHATSAPP_STORE_URL for the shard, or 'main' for the main database "
        "(PostgreSQL: every connect attempt keeps a connection, so keep counts under max_connections)",
    )
    args = parser.parse_args()
    env = setup_django()
    emit(
        {
            "benchmark": "neonize_clients",
            "note": "offline: one real connect attempt per client, then hosted in backoff",
            "database": env["DATABASE_URL"].split("://")[0],
            "store": args.store,
            "results": [measure(count, env, args.timeout, args.store) for count in args.counts],
        }
    )


if __name__ == "__main__":
    main()
