"""Latency from a provider event to the WebSocket frame, through the real path.

    .venv/bin/python benchmarks/ws_latency.py --bots 100 --rounds 20

A shard (in this process) receives `connected` events from its provider for
100 bots; each goes through the one write path (PostgreSQL), Redis and daphne to
one WebSocket subscriber per bot, in another process. Both sides stamp
CLOCK_MONOTONIC, which is shared by all processes of the machine.
Goal (issue 3): p99 under 20 ms on this 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
import uuid

from common import ROOT, emit, percentile, reset_data, setup_django

from whatsapp.providers.base import Client, Provider


class QuietClient(Client):
    async def start(self):
        pass

    async def stop(self):
        pass

    async def logout(self):
        pass


class QuietProvider(Provider):
    """Clients that only report what the benchmark tells them to."""

    name = "simulator"

    def client(self, device, events):
        return QuietClient(device, events)


async def subscriber(port: int, token: str, bot_ids: list[str], expected: int) -> None:
    from websockets.asyncio.client import connect

    arrivals: dict[str, list[float]] = {bot: [] for bot in bot_ids}
    origin = f"http://127.0.0.1:{port}"
    sockets = []
    for bot in bot_ids:
        ws = await connect(
            f"ws://127.0.0.1:{port}/api/bots/{bot}/connection-events",
            origin=origin,
            additional_headers={"Authorization": f"Bearer {token}"},
        )
        await ws.recv()  # the first frame: current state
        sockets.append((bot, ws))
    print("ready", flush=True)

    async def listen(bot, ws):
        while len(arrivals[bot]) < expected:
            frame = json.loads(await ws.recv())
            if frame["event"] == "connected":
                arrivals[bot].append(time.monotonic())

    await asyncio.wait_for(asyncio.gather(*(listen(bot, ws) for bot, ws in sockets)), 300)
    print(json.dumps(arrivals), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run(args, env) -> dict:
    from asgiref.sync import sync_to_async
    from django.contrib.auth.models import User

    from bots.models import ApiToken, Bot
    from pool.shard import Shard
    from whatsapp.models import Session

    def prepare():
        reset_data()
        owner = User.objects.create_user("bench-owner")
        bots = [
            Bot.objects.create(owner=owner, name=f"bench {n}", whatsapp_provider="simulator") for n in range(args.bots)
        ]
        Session.objects.filter(bot__in=bots).update(desired_connected=True)
        return [str(bot.pk) for bot in bots], ApiToken.issue(owner)[1]

    bot_ids, token = await sync_to_async(prepare)()
    port = free_port()
    web = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "botplatform.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    shard = Shard("bench-shard", providers={"simulator": QuietProvider()}, poll_interval=0.5)
    await shard.setup()
    for _ in range(100):
        await shard.step()
        if len(shard.hosted) == args.bots and all(h.client for h in shard.hosted.values()):
            break
    time.sleep(1.5)
    listener = subprocess.Popen(
        [sys.executable, __file__, "--subscribe", str(port), token, str(args.rounds), *bot_ids],
        cwd=ROOT / "benchmarks",
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout.readline().strip() == "ready", "subscribers did not connect"
        emitted: dict[str, list[float]] = {bot: [] for bot in bot_ids}
        started = time.monotonic()
        for _ in range(args.rounds):
            for bot in bot_ids:
                emitted[bot].append(time.monotonic())
                shard.events.connected(uuid.UUID(bot))
                await asyncio.sleep(args.interval)
        out, _ = await asyncio.to_thread(listener.communicate, timeout=300)
        elapsed = time.monotonic() - started
    finally:
        await shard.stop_all()
        web.send_signal(signal.SIGTERM)
        web.wait(30)
    arrivals = json.loads(out.strip().splitlines()[-1])
    latencies = [
        (arrival - sent) * 1000 for bot in bot_ids for sent, arrival in zip(emitted[bot], arrivals[bot], strict=True)
    ]
    return {
        "benchmark": "ws_latency",
        "path": "provider event -> shard -> write path (DB) -> Redis -> daphne -> WebSocket",
        "database": env["DATABASE_URL"].split("://")[0],
        "bots": args.bots,
        "subscribers": args.bots,
        "events": len(latencies),
        "events_per_second": round(len(latencies) / elapsed, 1),
        "latency_ms": {
            "p50": round(percentile(latencies, 50), 2),
            "p90": round(percentile(latencies, 90), 2),
            "p99": round(percentile(latencies, 99), 2),
            "max": round(max(latencies), 2),
        },
        "goal_p99_ms": 20,
        "goal_met": percentile(latencies, 99) < 20,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--subscribe":
        port, token, rounds, *bot_ids = sys.argv[2:]
        asyncio.run(subscriber(int(port), token, bot_ids, int(rounds)))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--bots", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.005, help="seconds between events")
    args = parser.parse_args()
    env = setup_django()
    emit(asyncio.run(run(args, env)))


if __name__ == "__main__":
    main()
