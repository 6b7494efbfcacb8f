"""Shared set-up for the benchmarks: a database of their own, migrated, and clean.

Each benchmark prints one JSON object on stdout. They talk to loopback only and
stop by themselves. Defaults: PostgreSQL and Redis on this machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/botplatform_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/9"


def setup_django(*, redis: bool = True) -> dict[str, str]:
    """Point Django at the benchmark database, create and migrate it; returns the env for child processes."""
    os.environ.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
    if redis:
        os.environ.setdefault("REDIS_URL", DEFAULT_REDIS_URL)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    sys.path.insert(0, str(ROOT))
    url = os.environ["DATABASE_URL"]
    if url.startswith("postgres"):
        import psycopg

        base, _, name = url.rpartition("/")
        with psycopg.connect(base + "/postgres", autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
                conn.execute(f'CREATE DATABASE "{name}"')
    env = dict(os.environ)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    import django

    django.setup()
    return env


def reset_data() -> None:
    from django.contrib.auth.models import User

    from bots.models import Bot

    Bot.objects.all().delete()
    User.objects.filter(username__startswith="bench").delete()


def paired_simulator_bots(count: int) -> list:
    """``count`` simulator bots of a new owner, paired earlier (a stored device) and wanting to connect."""
    from django.contrib.auth.models import User

    from bots.models import Bot
    from whatsapp.models import Session, SimulatorDevice

    owner = User.objects.create_user("bench-owner")
    bots = Bot.objects.bulk_create(
        [Bot(owner=owner, name=f"bench {n}", whatsapp_provider="simulator") for n in range(count)]
    )
    Session.objects.bulk_create(
        [Session(bot=bot, desired_connected=True, jid=f"55{n:011d}:2@s.whatsapp.net") for n, bot in enumerate(bots)]
    )
    SimulatorDevice.objects.bulk_create(
        [
            SimulatorDevice(bot=bot, jid=f"55{n:011d}:2@s.whatsapp.net", phone=f"55{n:011d}")
            for n, bot in enumerate(bots)
        ]
    )
    return bots


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def rss_mb(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            fields[key] = value.strip()
    return {
        "rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
        "peak_rss_mb": round(int(fields["VmHWM"].split()[0]) / 1024, 1),
        "threads": int(fields["Threads"]),
    }


def emit(result: dict) -> None:
    print(json.dumps(result, indent=2))
