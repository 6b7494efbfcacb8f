"""`make run`: the web (daphne) and the pool (run_whatsapp) together; Ctrl+C stops both."""

import signal
import subprocess
import sys
import time

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Serve the web and run the WhatsApp pool on one machine until Ctrl+C."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--shards", type=int, default=1)

    def handle(self, host: str, port: int, shards: int, **options):
        web = ["daphne", "-b", host, "-p", str(port), "botplatform.asgi:application"]
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
