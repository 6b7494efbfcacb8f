"""Live page sockets on a real daphne, with PostgreSQL and Redis.

``handshakes``: N page sockets opened at once, spread over users (under the per-user
cap): how fast they all get their first frame (handshakes per second), and how long
each waited.

``idle``: a pool with one connected, idle simulator bot; PostgreSQL's transaction
counter over a window with no page open, then with P pages of that bot open: what
the open pages add, per page and per 10 s (each statement the web runs is a
transaction of its own). The shard's own work is in both windows.

    cd benchmarks && ../.venv/bin/python sockets.py handshakes --sockets 500 --users 10
    cd benchmarks && ../.venv/bin/python sockets.py idle --pages 30 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time

from common import ROOT, cpu_seconds, emit, paired_simulator_bots, percentile, reset_data, setup_django, stop

from bots.management.commands.serve import daphne_args


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_web(env: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    web = subprocess.Popen(
        [sys.executable, "-m", "daphne", *daphne_args("127.0.0.1", port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import socket

    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return web, f"127.0.0.1:{port}"
        time.sleep(0.05)
    raise RuntimeError("daphne did not start")


def logged_in(user) -> str:
    from django.test import Client

    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


async def first_frame(address: str, path: str, cookie: str) -> tuple[float, object]:
    from websockets.asyncio.client import connect

    started = time.monotonic()
    ws = await connect(
        f"ws://{address}{path}", origin=f"http://{address}", additional_headers={"Cookie": cookie}, open_timeout=60
    )
    await asyncio.wait_for(ws.recv(), 60)
    return time.monotonic() - started, ws


def handshakes(args, env) -> dict:
    from django.contrib.auth.models import User

    from bots.models import Bot

    reset_data()
    pages = []
    for n in range(args.users):
        user = User.objects.create_user(f"bench-user-{n}")
        bot = Bot.objects.create(owner=user, name=f"bench {n}", whatsapp_provider="simulator")
        pages += [(f"/ws/bots/{bot.pk}/live", logged_in(user))] * (args.sockets // args.users)
    web, address = start_web(env)
    try:

        async def burst():
            started = time.monotonic()
            opened = await asyncio.gather(*(first_frame(address, path, cookie) for path, cookie in pages))
            elapsed = time.monotonic() - started
            await asyncio.gather(*(ws.close() for _, ws in opened))
            return elapsed, [seconds for seconds, _ in opened]

        cpu_before = cpu_seconds(web.pid)
        elapsed, waits = asyncio.run(burst())
        cpu = cpu_seconds(web.pid) - cpu_before
    finally:
        stop(web)
    return {
        "benchmark": "sockets handshakes",
        "database": env["DATABASE_URL"].split("://")[0],
        "channel_layer": "redis" if env.get("REDIS_URL") else "in-memory",
        "sockets": len(pages),
        "users": args.users,
        "all_first_frames_after_s": round(elapsed, 2),
        "handshakes_per_second": round(len(pages) / elapsed, 1),
        "first_frame_s": {"p50": round(percentile(waits, 50), 3), "p99": round(percentile(waits, 99), 3)},
        "web_cpu_ms_per_handshake": round(1000 * cpu / len(pages), 2),
        "goal_per_second": 100,
        "goal_met": len(pages) / elapsed >= 100,
    }


STATS_DELAY = 11.0


def transactions() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")
        cursor.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()")
        return cursor.fetchone()[0]


def idle(args, env) -> dict:
    from whatsapp.models import Session

    reset_data()
    [bot] = paired_simulator_bots(1)
    owner = bot.owner
    cookie = logged_in(owner)
    web, address = start_web(env)
    pool = subprocess.Popen([sys.executable, "manage.py", "run_whatsapp"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    try:
        for _ in range(600):
            if Session.objects.filter(pk=bot.pk, status="connected").exists():
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("the bot did not connect")
        time.sleep(3)  # past the connect's own writes

        def window() -> float:
            # An idle backend reports its counters to pg_stat_database up to 10 s late (PostgreSQL 15):
            # a window starts and ends that long after what must not fall into it.
            time.sleep(STATS_DELAY)
            before = transactions()
            time.sleep(args.seconds)
            time.sleep(STATS_DELAY)
            return transactions() - before

        without_pages = window()

        async def with_pages():
            opened = [await first_frame(address, f"/ws/bots/{bot.pk}/live", cookie) for _ in range(args.pages)]
            counted = await asyncio.to_thread(window)
            await asyncio.gather(*(ws.close() for _, ws in opened))
            return counted

        with_open_pages = asyncio.run(with_pages())
    finally:
        stop(pool)
        stop(web)
    added = with_open_pages - without_pages
    per_page_per_10s = added / args.pages / (args.seconds / 10)
    return {
        "benchmark": "sockets idle",
        "database": env["DATABASE_URL"].split("://")[0],
        "channel_layer": "redis" if env.get("REDIS_URL") else "in-memory",
        "pages": args.pages,
        "window_s": args.seconds,
        "transactions_without_pages": without_pages,
        "transactions_with_pages": with_open_pages,
        "added_per_page_per_10s": round(per_page_per_10s, 3),
        "goal_per_page_per_10s": 1,
        "goal_met": per_page_per_10s <= 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    modes = parser.add_subparsers(dest="mode", required=True)
    burst = modes.add_parser("handshakes")
    burst.add_argument("--sockets", type=int, default=500)
    burst.add_argument("--users", type=int, default=10)
    quiet = modes.add_parser("idle")
    quiet.add_argument("--pages", type=int, default=30)
    quiet.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    env = setup_django()
    emit(handshakes(args, env) if args.mode == "handshakes" else idle(args, env))


if __name__ == "__main__":
    main()
