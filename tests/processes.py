"""Real processes for end-to-end tests: daphne serving the ASGI app, and the pool.

They run against the test database (the tests use ``transactional_db`` so
what they write is committed and visible), with the same REDIS_URL as the
test run, so CI exercises PostgreSQL + Redis and a plain run SQLite alone.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.db import connections

from bots.management.commands.serve import daphne_args
from whatsapp.providers.store import postgres_url

ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = ROOT / "test-artifacts" / "logs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def database_url(alias: str = "default") -> str:
    """A URL for a database the tests are using right now (the test database)."""
    db = connections[alias].settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    return postgres_url(db)


def process_env(**overrides: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=database_url(),
        WHATSAPP_SIMULATOR_URL=database_url("simulator"),
        PYTHONUNBUFFERED="1",
        NO_PROXY="127.0.0.1,localhost",
    )
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05, message: str = ""):
    """Poll until predicate() is truthy; returns its value, or fails the test with a message."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message or f"timed out after {timeout} s waiting for {predicate}")
        time.sleep(interval)


@dataclass
class Proc:
    name: str
    args: list[str]
    env: dict[str, str]
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    _log: object = None

    def start(self) -> Proc:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"{self.name}-{int(time.time() * 1000)}.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            self.args, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def stop(self, timeout: float = 40.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        try:
            # Children the process left behind (shards of a killed supervisor) go too.
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self._log:
            self._log.close()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""


@dataclass
class Web:
    """daphne serving botplatform.asgi on a free loopback port."""

    proc: Proc
    port: int
    headers: dict = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body=None, token: str | None = None, headers: dict | None = None):
        """An HTTP request as curl would make it: returns (status, headers, parsed JSON or None)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                raw = response.read()
                status, response_headers = response.status, dict(response.headers)
        except urllib.error.HTTPError as error:
            raw, status, response_headers = error.read(), error.code, dict(error.headers)
        parsed = (
            json.loads(raw) if raw and response_headers.get("Content-Type", "").startswith("application/json") else None
        )
        return status, response_headers, parsed


def start_web(**env: str | None) -> Web:
    """daphne as deployed (bots/management/commands/serve.py): a listen backlog for bursts of connections."""
    port = free_port()
    proc = Proc(
        "daphne",
        [sys.executable, "-m", "daphne", *daphne_args("127.0.0.1", port)],
        process_env(**env),
    ).start()

    wait_listening(proc, port, timeout=20)
    return Web(proc, port)


def wait_listening(proc, port: int, *, timeout: float) -> None:
    """Until ``proc`` accepts connections on the loopback ``port``; its log if it exits first."""

    def up() -> bool:
        if proc.process.poll() is not None:
            raise AssertionError(f"{proc.name} exited early:\n{proc.log()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(up, timeout=timeout, message=f"{proc.name} did not start listening")


def pid_of(marker: str) -> int:
    """The pid of the process whose command line contains ``marker`` (e.g. a shard id)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            return int(entry.name)
    raise LookupError(marker)


def start_pool(*args: str, **env: str | None) -> Proc:
    return Proc("pool", [sys.executable, "manage.py", "run_whatsapp", *args], process_env(**env)).start()
