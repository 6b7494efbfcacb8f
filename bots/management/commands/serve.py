"""`make run`: the web (daphne) and the pool (run_whatsapp) together; Ctrl+C stops both."""

import signal
import subprocess
import sys
import time

from django.core.management.base import BaseCommand

# Connections daphne's socket queues before it accepts them. Twisted's default, 50, drops connections
# in a burst (a thousand sockets opened at once reset a few); Linux caps it at net.core.somaxconn.
LISTEN_BACKLOG = 1024
# Seconds a WebSocket has to be accepted from the moment its connection is made. daphne's default, 5,
# dropped a few sockets of a burst of a thousand, unanswered, while the others were being authorized.
HANDSHAKE_SECONDS = 20


def daphne_endpoint(host: str, port: int) -> str:
    """daphne's ``-e`` endpoint for a TCP address, with the listen backlog (``-b``/``-p`` cannot set one)."""
    interface = host.replace(":", r"\:")  # IPv6 colons are escaped in Twisted's endpoint strings
    return f"tcp:port={port}:interface={interface}:backlog={LISTEN_BACKLOG}"


def daphne_args(host: str, port: int) -> list[str]:
    """daphne's arguments as the platform runs it (``make run``, the tests, the README's units)."""
    endpoint = daphne_endpoint(host, port)
    return ["-e", endpoint, "--websocket_connect_timeout", str(HANDSHAKE_SECONDS), "botplatform.asgi:application"]


class Command(BaseCommand):
    help = "Serve the web and run the WhatsApp pool on one machine until Ctrl+C."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--shards", type=int, default=1)

    def handle(self, host: str, port: int, shards: int, **options):
        web = ["daphne", *daphne_args(host, port)]
        pool = ["run_whatsapp", "--shards", str(shards)]
        processes = [
            subprocess.Popen([sys.executable, "-m", *web]),
            subprocess.Popen([sys.executable, "manage.py", *pool]),
        ]
        self.stdout.write(f"Serving on http://{host}:{port}/ with the WhatsApp pool. Press Ctrl+C to stop both.")
        stopping = False

        def stop(*_):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        while not stopping and all(p.poll() is None for p in processes):
            time.sleep(0.2)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=35)
            except subprocess.TimeoutExpired:
                process.kill()
        failed = [p for p in processes if p.returncode not in (0, -signal.SIGTERM)]
        if failed and not stopping:
            raise SystemExit(1)
