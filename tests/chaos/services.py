"""Private Redis and PostgreSQL servers that a chaos test may kill and start again.

Each listens on its own free loopback port, so the shared servers of the test
run (6379, 5432) are never touched. They are children of the test (tests.processes.Proc):
stop() ends them, and the ``stop_at_end`` fixture calls it even when the test fails.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest
import redis

from tests.processes import Proc, free_port, wait_until


def find(program: str) -> str | None:
    """A program on the PATH, or in Debian's PostgreSQL directory (its servers are not on the PATH)."""
    found = shutil.which(program)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"), key=lambda path: int(Path(path).parts[4]))
    return versions[-1] if versions else None


def require(program: str, install: str) -> str:
    """The path of a server program; without it the test skips, except in CI (CI=true), where it fails."""
    found = find(program)
    if found:
        return found
    reason = f"{program} is not installed: {install}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}. CI runs the chaos tests: .ci/run has the servers they need.")
    pytest.skip(reason)


class PrivateRedis:
    """redis-server on a free loopback port, no persistence: a restart empties it, as after a crash."""

    def __init__(self) -> None:
        self.program = require("redis-server", "apt-get install redis-server")
        self.port = free_port()
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        args = [self.program, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = Proc("redis", args, dict(os.environ)).start()
        wait_until(self.answers, timeout=10, interval=0.05, message=f"redis did not start:\n{self.proc.log()}")
        return self

    def answers(self) -> bool:
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False
        finally:
            client.close()

    def kill(self) -> None:
        """A crash: SIGKILL, so clients see their connections reset, not a goodbye."""
        self.proc.signal(signal.SIGKILL)
        self.proc.process.wait(10)
        self.proc.stop()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


class PrivateCluster:
    """A PostgreSQL cluster of its own in a temporary directory, run as the postgres user (it refuses root)."""

    user = "postgres"

    def __init__(self) -> None:
        self.bin = {name: require(name, "apt-get install postgresql") for name in ("initdb", "postgres", "pg_ctl")}
        self.runuser = require("runuser", "apt-get install util-linux")
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="chaos-pg-"))
        self.data = self.directory / "data"
        self.proc: Proc | None = None

    def url(self, database: str = "postgres") -> str:
        return f"postgres://{self.user}@127.0.0.1:{self.port}/{database}"

    def as_postgres(self, *args: str) -> list[str]:
        return [self.runuser, "-u", self.user, "--", *args]

    def init(self) -> PrivateCluster:
        shutil.chown(self.directory, self.user)
        subprocess.run(
            self.as_postgres(self.bin["initdb"], "-D", str(self.data), "-U", self.user, "-A", "trust", "--no-sync"),
            check=True,
            capture_output=True,
            timeout=60,
        )
        return self

    def start(self) -> PrivateCluster:
        server = [self.bin["postgres"], "-D", str(self.data), "-p", str(self.port), "-k", str(self.directory)]
        # Speed over durability: nothing here must survive the machine, only a server restart.
        options = ["listen_addresses=127.0.0.1", "fsync=off", "synchronous_commit=off", "full_page_writes=off"]
        server += [arg for option in options for arg in ("-c", option)]
        self.proc = Proc("postgres", self.as_postgres(*server), dict(os.environ)).start()
        wait_until(self.answers, timeout=30, interval=0.1, message=f"postgres did not start:\n{self.proc.log()}")
        return self

    def answers(self) -> bool:
        if self.proc.process.poll() is not None:
            raise AssertionError(f"postgres exited:\n{self.proc.log()}")
        try:
            with psycopg.connect(self.url(), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def connect(self, database: str) -> psycopg.Connection:
        return psycopg.connect(self.url(database), autocommit=True, connect_timeout=5)

    def create_database(self, name: str) -> str:
        with self.connect("postgres") as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """A fast shutdown (pg_ctl -m fast): clients are disconnected and the server goes away."""
        if self.proc is None or self.proc.process.poll() is not None:
            return
        subprocess.run(
            self.as_postgres(self.bin["pg_ctl"], "-D", str(self.data), "-m", "fast", "-w", "stop"),
            capture_output=True,
            timeout=60,
        )
        self.proc.stop()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class PgBouncer:
    """Debian's PgBouncer on a free loopback port, in front of a PostgreSQL server, run as the postgres
    user (it refuses root); transaction mode and a pool of ``pool_size`` server connections per database."""

    user = "postgres"

    def __init__(self, server_port: int, *, pool_size: int = 3, max_clients: int = 500) -> None:
        self.program = require("pgbouncer", "apt-get install pgbouncer")
        self.runuser = require("runuser", "apt-get install util-linux")
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
        shutil.chown(self.directory, self.user)
        (self.directory / "users.txt").write_text(f'"{self.user}" ""\n')
        (self.directory / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={server_port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.directory}/users.txt\nadmin_users = {self.user}\n"
            f"pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = {max_clients}\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
        )
        self.proc: Proc | None = None

    def url(self, database: str) -> str:
        return f"postgres://{self.user}@127.0.0.1:{self.port}/{database}?sslmode=disable"

    def start(self) -> PgBouncer:
        args = [self.runuser, "-u", self.user, "--", self.program, str(self.directory / "pgbouncer.ini")]
        self.proc = Proc("pgbouncer", args, dict(os.environ)).start()
        wait_until(self.answers, timeout=10, interval=0.05, message=f"pgbouncer did not start:\n{self.proc.log()}")
        return self

    def show(self, what: str) -> list[dict]:
        """The admin console's SHOW (CLIENTS, SERVERS, POOLS...), as rows of dicts."""
        with (
            psycopg.connect(self.url("pgbouncer"), autocommit=True, prepare_threshold=None, connect_timeout=10) as conn,
            conn.cursor() as cursor,
        ):
            cursor.execute(f"SHOW {what}")
            names = [column.name for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def answers(self) -> bool:
        try:
            self.show("VERSION")
            return True
        except psycopg.Error:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
