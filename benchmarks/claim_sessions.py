"""How long one shard takes to claim and start N paired simulator sessions, and its memory.

    .venv/bin/python benchmarks/claim_sessions.py --bots 500

Goal (issue 3): 500 sessions connected in under 10 s on this 2-core machine.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time

from common import ROOT, emit, paired_simulator_bots, reset_data, rss_mb, setup_django


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bots", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    env = setup_django()

    from django.db import connection

    from whatsapp.models import Session

    reset_data()
    paired_simulator_bots(args.bots)
    connection.close()

    started = time.monotonic()
    shard = subprocess.Popen(
        [sys.executable, "manage.py", "run_whatsapp", "--shard", "0", "--shard-id", "bench-shard"], cwd=ROOT, env=env
    )
    try:
        connected, first_at, peak = 0, None, {}
        deadline = started + args.timeout
        while time.monotonic() < deadline:
            connected = Session.objects.filter(status="connected").count()
            connection.close()
            peak = rss_mb(shard.pid)
            if connected and first_at is None:
                first_at = time.monotonic() - started
            if connected >= args.bots:
                break
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        time.sleep(1)
        settled = rss_mb(shard.pid)
    finally:
        shard.send_signal(signal.SIGTERM)
        shard.wait(60)
    emit(
        {
            "benchmark": "claim_sessions",
            "database": env["DATABASE_URL"].split("://")[0],
            "bots": args.bots,
            "connected": connected,
            "seconds_to_all_connected": round(elapsed, 2),
            "seconds_to_first_connected": round(first_at or float("nan"), 2),
            "process_start_included": True,
            "shard_memory_at_end": peak,
            "shard_memory_settled": settled,
            "goal_seconds": 10,
            "goal_met": connected >= args.bots and elapsed < 10,
        }
    )


if __name__ == "__main__":
    main()
