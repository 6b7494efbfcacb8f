"""The ceiling the Gemini SDK alone puts on replies per second: no WhatsApp, no database, no pipeline.

    .venv/bin/python benchmarks/gemini_floor.py --chats 200 --calls 4000 --latency 0.2 --turns 20

C chats each ask Gemini for an answer, wait for it, ask again, through
``bots.gemini.generate`` (the real google-genai SDK, configured as the shards
configure it) against the fake Gemini server in another process answering in
L seconds. Each request carries a history of T turns, as a reply does. No
pipeline can answer faster than this on the same machine: the figure is the
ceiling for benchmarks/replies.py, and the CPU per call says why.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time

from common import cpu_seconds, emit, setup_django, start_fake_gemini


async def converse(chats: int, calls: int, turns: list) -> tuple[float, int, int]:
    from bots import gemini

    left = calls
    failed = 0

    async def chat() -> None:
        nonlocal left, failed
        while left > 0:
            left -= 1
            answer = await gemini.generate(
                model="gemini-2.5-flash", system_prompt="Você é a Ana.", temperature=0.7, turns=turns
            )
            failed += answer.text is None

    started = time.monotonic()
    await asyncio.gather(*(chat() for _ in range(chats)))
    return time.monotonic() - started, calls, failed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chats", type=int, default=200)
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument(
        "--turns", type=int, default=20, help="turns of history in each request (odd: ends with the user)"
    )
    args = parser.parse_args()
    env = setup_django(redis=False)
    fake, url = start_fake_gemini(env, args.latency)
    try:
        from django.conf import settings

        settings.GEMINI_BASE_URL = url
        settings.GEMINI_API_KEY = "test-key"
        settings.WHATSAPP_AI_CONCURRENCY = max(64, args.chats)
        os.environ["NO_PROXY"] = "127.0.0.1,localhost"
        roles = ["user", "model"]
        count = args.turns if args.turns % 2 else args.turns + 1
        turns = [(roles[n % 2], f"mensagem {n}: o que vocês têm hoje?") for n in range(count)]
        asyncio.run(converse(args.chats, args.chats, turns))  # warm-up: connections, first calls
        client_cpu, server_cpu = time.process_time(), cpu_seconds(fake.pid)
        elapsed, calls, failed = asyncio.run(converse(args.chats, args.calls, turns))
        client_cpu, server_cpu = time.process_time() - client_cpu, cpu_seconds(fake.pid) - server_cpu
    finally:
        fake.send_signal(signal.SIGTERM)
        fake.wait(10)
    bound = args.chats / args.latency
    emit(
        {
            "benchmark": "gemini_floor",
            "chats": args.chats,
            "calls": calls,
            "failed": failed,
            "history_turns": len(turns),
            "model_latency_ms": round(args.latency * 1000),
            "seconds": round(elapsed, 2),
            "calls_per_second": round(calls / elapsed, 1),
            "bound_calls_per_second": round(bound, 1),
            "fraction_of_bound": round(calls / elapsed / bound, 3),
            "sdk_cpu_ms_per_call": round(client_cpu / calls * 1000, 2),
            "fake_server_cpu_ms_per_call": round(server_cpu / calls * 1000, 2),
            "cpus": os.cpu_count(),
        }
    )


if __name__ == "__main__":
    main()
