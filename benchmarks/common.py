"""Shared set-up for the benchmarks: a database of their own, migrated, and clean.

Each benchmark prints one JSON object on stdout. They talk to loopback only and
stop by themselves. Defaults: PostgreSQL and Redis on this machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/botplatform_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/9"
# The project's packages, importable by the benchmarks (those that need no Django at import, at the top).
sys.path.insert(0, str(ROOT))


def setup_django(*, redis: bool = True) -> dict[str, str]:
    """Point Django at the benchmark database, create and migrate it; returns the env for child processes."""
    os.environ.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
    if redis:
        os.environ.setdefault("REDIS_URL", DEFAULT_REDIS_URL)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    url = os.environ["DATABASE_URL"]
    if url.startswith("postgres"):
        # The simulated WhatsApp in a PostgreSQL database of its own too: the figures measure the
        # platform, not SQLite's single writer.
        os.environ.setdefault("WHATSAPP_SIMULATOR_URL", url + "_simulator")
    for database in (url, os.environ.get("WHATSAPP_SIMULATOR_URL", "")):
        if database.startswith("postgres"):
            create_postgres_database(database)
    env = dict(os.environ)
    for database in ("default", "simulator"):
        migrate = [sys.executable, "manage.py", "migrate", "-v0", "--database", database]
        subprocess.run(migrate, cwd=ROOT, env=env, check=True)
    import django

    django.setup()
    return env


def create_postgres_database(url: str) -> None:
    import psycopg

    base, _, name = url.rpartition("/")
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def reset_data() -> None:
    from django.contrib.auth.models import User

    from bots.models import Bot
    from whatsapp.models import SimulatorCommand, SimulatorDevice, SimulatorInbound, SimulatorSent

    Bot.objects.all().delete()
    User.objects.filter(username__startswith="bench").delete()
    for model in (SimulatorCommand, SimulatorDevice, SimulatorInbound, SimulatorSent):  # another database: no cascade
        model.objects.all().delete()


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


def neonize_bots(count: int, *, wanted: bool) -> list:
    """``count`` neonize bots of a new owner, never paired; ``wanted``: they ask to connect (a QR, offline a dial)."""
    from django.contrib.auth.models import User

    from bots.models import Bot
    from whatsapp.models import Session

    owner = User.objects.create_user("bench-owner")
    bots = Bot.objects.bulk_create(
        [Bot(owner=owner, name=f"bench {n}", whatsapp_provider="neonize") for n in range(count)]
    )
    Session.objects.bulk_create([Session(bot=bot, desired_connected=wanted, status="connecting") for bot in bots])
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


def cpu_seconds(pid: int) -> float:
    """User and system CPU a process used so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(parent: int, *, shards_only: bool = False) -> list[int]:
    """Direct children of a process (those running ``--shard-id``: the shards of a supervisor)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent and (not shards_only or b"--shard-id" in cmdline):
                pids.append(int(entry.name))
    return pids


def shard_pids(supervisor: int) -> list[int]:
    return children(supervisor, shards_only=True)


def database_backends() -> dict[int, str]:
    """PostgreSQL server processes serving the current database (not this connection): pid -> state."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, coalesce(state, '') FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        rows = dict(cursor.fetchall())
    connection.close()
    return rows


def total_cpu_seconds(pids) -> float:
    """CPU of these processes so far, skipping those gone meanwhile."""
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except (OSError, IndexError):
            pass
    return total


def start_shard(env: dict, shard_id: str, *, capacity: int | None = None, **popen) -> subprocess.Popen:
    """One shard process alone (no supervisor), as a supervisor starts it; ``capacity``: WHATSAPP_SHARD_CAPACITY."""
    if capacity is not None:
        env = dict(env, WHATSAPP_SHARD_CAPACITY=str(capacity))
    return subprocess.Popen(
        [sys.executable, "manage.py", "run_whatsapp", "--shard", "0", "--shard-id", shard_id],
        cwd=ROOT,
        env=env,
        **popen,
    )


def default_shard_capacity() -> int:
    from django.conf import settings

    return settings.WHATSAPP_SHARD_CAPACITY


def stop(process: subprocess.Popen, timeout: float = 60, sig: int = signal.SIGTERM) -> float:
    """Signal a process and wait for it (killed after ``timeout``); returns the seconds it took."""
    started = time.monotonic()
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return time.monotonic() - started


class NudgeCounter:
    """Counts the wake-up nudges that reach the shards while it is open (None without Redis).

    Each wakes every shard of the deployment for a step, so an idle figure says how many
    there were (Redis pub/sub ignores database numbers: the layer's prefix tells deployments apart).
    """

    def __enter__(self) -> NudgeCounter:
        import redis
        from django.conf import settings

        from bots.control import SHARDS_GROUP

        url = os.environ.get("REDIS_URL")
        self.client = redis.Redis.from_url(url) if url else None
        self.count = None
        if self.client is not None:
            # channels_redis's pub/sub layer: a group's channel is "<prefix>__group__<group>".
            prefix = settings.CHANNEL_LAYERS["default"].get("CONFIG", {}).get("prefix", "asgi")
            self.pubsub = self.client.pubsub()
            self.pubsub.subscribe(f"{prefix}__group__{SHARDS_GROUP}")
        return self

    def __exit__(self, *exc) -> None:
        if self.client is None:
            return
        self.count = 0
        while (message := self.pubsub.get_message(timeout=0.01)) is not None:
            self.count += message["type"] == "message"
        self.pubsub.close()
        self.client.close()


def start_fake_gemini(env: dict, latency: float) -> tuple[subprocess.Popen, str]:
    """The fake Gemini server (tests/fake_gemini.py) in a process of its own, answering in ``latency`` s."""
    fake = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_gemini", "--latency", str(latency)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    return fake, json.loads(fake.stdout.readline())["url"]


def emit(result: dict) -> None:
    print(json.dumps(result, indent=2))
