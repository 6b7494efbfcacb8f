"""A bounded stress of goneonize's maps, offline: ``python -m tests.whatsapp.go_stress --seconds 20``.

Two threads dial again and again (new clients through a refused loopback proxy: each dial writes
goneonize's maps, fails in milliseconds, and is stopped), while a third sends on a client that is
registered but not connected (each send reads the maps). Every call goes through the provider's
``GoCalls``; with ``--unlocked`` none does, which is how the adapter called neonize before: then Go
aborts the process (``fatal error: concurrent map read and map write``) in about 2 of 3 runs of 20 s.
Prints one JSON line of counts and exits 0 when the time is up.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import socket
import tempfile
import threading
import time
from pathlib import Path

from whatsapp.providers.gocalls import GoCalls
from whatsapp.providers.neonize import NeonizeProvider
from whatsapp.providers.store import migrate_store


class Unlocked(GoCalls):
    def read(self, fn, *args):
        return fn(*args)

    def write(self, fn, *args):
        return fn(*args)

    def connect(self, connect, alive, setup_seconds=0.0):
        return connect()


def refused_proxy():
    """A socks5:// address on loopback where nothing listens: a dial fails at once."""
    from neonize._binder import ProxySettings

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return ProxySettings(proxy_address=f"socks5://127.0.0.1:{port}")


def offline_provider(directory: Path, go: GoCalls) -> NeonizeProvider:
    from neonize.utils import log as neonize_log

    neonize_log.setLevel(logging.WARNING)
    provider = NeonizeProvider(db=None)
    provider.dsn = str(directory / "store.sqlite3")
    migrate_store(provider.dsn)
    provider.go = go
    return provider


def dial_once(provider: NeonizeProvider, key: str, proxy):
    """A new client for ``key``, its connect refused; it stays registered in goneonize's maps."""
    client = provider.new_client(key, None)
    try:
        provider.go.connect(functools.partial(client.connect, proxy), threading.Event())
    except Exception:
        pass
    return client


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--unlocked", action="store_true")
    args = parser.parse_args()

    from neonize.utils.jid import build_jid

    provider = offline_provider(Path(tempfile.mkdtemp()), Unlocked() if args.unlocked else GoCalls())
    proxy = refused_proxy()
    target = dial_once(provider, "sender", proxy)
    deadline = time.monotonic() + args.seconds
    counts = {"dials": 0, "stops": 0, "sends": 0}
    lock = threading.Lock()

    def count(name: str) -> None:
        with lock:
            counts[name] += 1

    def dialler(index: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            client = dial_once(provider, f"dialler-{index}-{n}", proxy)
            count("dials")
            provider.go.write(client.stop)
            count("stops")

    def sender() -> None:
        to = build_jid("5511955554444", "s.whatsapp.net")
        while time.monotonic() < deadline:
            try:
                provider.go.read(target.send_message, to, "oi")
            except Exception:
                pass  # "websocket not connected": what a send to it answers
            count("sends")
            time.sleep(0.001)

    threads = [threading.Thread(target=dialler, args=(i,)) for i in range(2)] + [threading.Thread(target=sender)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
