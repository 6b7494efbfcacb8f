"""Replies per second and the pipeline's added latency: M messages over C chats, model latency L.

    .venv/bin/python benchmarks/replies.py --chats 200 --messages 4000 --latency 0.2

A real pool (`run_whatsapp`, its shards hosting paired simulator bots) answers
through the real SDK against the fake Gemini server (another process) that
takes L seconds per answer. Each chat is a person who writes, waits for the
reply, then writes again, until M messages were answered: C conversations
in flight, so no pipeline can do better than C / L replies per second.

- replies per second, measured from the first message to the last reply, and
  as a fraction of the bound C / L;
- added latency per message: from the moment it waited on the (simulated)
  WhatsApp servers until its reply reached them, minus L. It covers delivery,
  storing, the rules, the history, the SDK, the reply rows and the send.

Goal (issue 5): for C=200, L=200 ms on PostgreSQL, at least 80 % of the bound
and an added latency p50 under 20 ms.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import uuid

from common import (
    ROOT,
    cpu_seconds,
    emit,
    paired_simulator_bots,
    percentile,
    reset_data,
    setup_django,
    shard_pids,
    start_fake_gemini,
)

LOOK_BACK = 50


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chats", type=int, default=200)
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the model takes per answer")
    parser.add_argument("--bots", type=int, default=20, help="the chats are spread over this many bots")
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    env = setup_django()

    from django.db import connection
    from django.db.models import Count
    from django.utils import timezone

    from bots.control import nudge_shards
    from bots.models import Bot, Direction, Message
    from whatsapp.models import Session, SimulatorInbound, SimulatorSent

    reset_data()
    bots = paired_simulator_bots(args.bots)
    chats = [(bots[n % args.bots], f"55219{n:08d}@s.whatsapp.net") for n in range(args.chats)]

    def write(chat_list: list[tuple[Bot, str]], tag: str) -> None:
        """People write: their messages wait on the simulated WhatsApp servers; the shards are nudged."""
        now = timezone.now()
        SimulatorInbound.objects.bulk_create(
            [
                SimulatorInbound(
                    bot=bot,
                    wa_id=f"B{uuid.uuid4().hex[:20]}",
                    chat=chat,
                    sender=chat,
                    text=f"{tag}: what do you have today?",
                    timestamp=now,
                )
                for bot, chat in chat_list
            ]
        )
        nudge_shards()

    fake, fake_url = start_fake_gemini(env, args.latency)
    pool_env = {
        **env,
        "GEMINI_BASE_URL": fake_url,
        "WHATSAPP_AI_CONCURRENCY": str(max(64, args.chats)),
        "NO_PROXY": "127.0.0.1,localhost",
    }
    pool = subprocess.Popen(
        [sys.executable, "manage.py", "run_whatsapp", "--shards", str(args.shards)], cwd=ROOT, env=pool_env
    )
    try:
        deadline = time.monotonic() + 60
        while Session.objects.filter(status="connected").count() < args.bots:
            if time.monotonic() > deadline:
                raise SystemExit("the bots did not connect")
            time.sleep(0.1)

        def converse(per_chat: int, tag: str) -> tuple[float, int]:
            """Every chat writes `per_chat` times, each time after the reply to the last; returns the seconds taken."""
            left = {chat: per_chat for _, chat in chats}
            by_chat = dict((chat, bot) for bot, chat in chats)
            seen: set[int] = set()
            start = high = SimulatorSent.objects.order_by("-id").values_list("id", flat=True).first() or 0
            started = time.monotonic()
            write(chats, tag)
            for chat in left:
                left[chat] -= 1
            replies, total, polls = 0, per_chat * len(chats), 0
            while replies < total:
                if time.monotonic() - started > args.timeout:
                    raise SystemExit(f"timed out with {replies} of {total} replies")
                # Ids are taken at insert and committed in any order: look back behind the highest seen
                # (a little each time, far now and then).
                polls += 1
                back = LOOK_BACK * 20 if polls % 50 == 0 else LOOK_BACK
                rows = [
                    (pk, to)
                    for pk, to in SimulatorSent.objects.filter(id__gt=max(start, high - back)).values_list("id", "to")
                    if pk not in seen
                ]
                if not rows:
                    time.sleep(0.003)
                    continue
                seen.update(pk for pk, _ in rows)
                high = max(high, *(pk for pk, _ in rows))
                replies += len(rows)
                again = [chat for _, chat in rows if left.get(chat)]
                for chat in again:
                    left[chat] -= 1
                if again:
                    write([(by_chat[chat], chat) for chat in again], tag)
            return time.monotonic() - started, replies

        # Warm-up: connections, caches, the first SDK call of each shard.
        converse(1, "warm")
        urllib_reset(fake_url)
        pids = shard_pids(pool.pid)
        hosted = sorted(
            Session.objects.filter(status="connected")
            .values("lease_owner")
            .annotate(n=Count("pk"))
            .values_list("n", flat=True)
        )
        cpu_before = sum(cpu_seconds(pid) for pid in pids)
        per_chat = max(1, args.messages // args.chats)
        elapsed, replies = converse(per_chat, "run")
        cpu_used = sum(cpu_seconds(pid) for pid in pids) - cpu_before
        stats = urllib_stats(fake_url)

        # Added latency: from waiting on the (simulated) WhatsApp servers to the reply reaching them, minus L.
        waited = dict(SimulatorInbound.objects.filter(text__startswith="run:").values_list("wa_id", "created_at"))
        replied = dict(
            Message.objects.filter(direction=Direction.OUT, in_reply_to__wa_id__in=list(waited)).values_list(
                "in_reply_to__wa_id", "wa_id"
            )
        )
        arrived = dict(
            SimulatorSent.objects.filter(wa_id__in=list(replied.values())).values_list("wa_id", "created_at")
        )
        added = [
            (arrived[replied[wa_id]] - at).total_seconds() * 1000 - args.latency * 1000
            for wa_id, at in waited.items()
            if wa_id in replied and replied[wa_id] in arrived
        ]
        connection.close()
    finally:
        pool.send_signal(signal.SIGTERM)
        pool.wait(60)
        fake.send_signal(signal.SIGTERM)
        fake.wait(10)

    bound = args.chats / args.latency
    rate = replies / elapsed
    emit(
        {
            "benchmark": "replies",
            "database": env["DATABASE_URL"].split("://")[0],
            "chats": args.chats,
            "messages": replies,
            "model_latency_ms": round(args.latency * 1000),
            "bots": args.bots,
            "shards": args.shards,
            "bots_per_shard": hosted,
            "ai_concurrency": int(pool_env["WHATSAPP_AI_CONCURRENCY"]),
            "seconds": round(elapsed, 2),
            "replies_per_second": round(rate, 1),
            "bound_replies_per_second": round(bound, 1),
            "fraction_of_bound": round(rate / bound, 3),
            "added_latency_ms": {
                "p50": round(percentile(added, 50), 1),
                "p90": round(percentile(added, 90), 1),
                "p99": round(percentile(added, 99), 1),
                "max": round(max(added), 1),
                "measured": len(added),
            },
            "gemini_peak_in_flight": stats["peakInFlight"],
            "shard_cpu_seconds_per_reply_ms": round(cpu_used / replies * 1000, 2),
            "goal": "C=200, L=200 ms, PostgreSQL: >= 0.8 of the bound, added latency p50 < 20 ms",
            "goal_met": rate / bound >= 0.8 and percentile(added, 50) < 20,
        }
    )


def urllib_stats(url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"{url}/_stats", timeout=5) as response:
        return json.load(response)


def urllib_reset(url: str) -> None:
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{url}/_reset", data=b"{}", method="POST"), timeout=5).read()


if __name__ == "__main__":
    main()
