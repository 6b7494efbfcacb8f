"""neonize's Go side, offline, on the real library: the finalizer, the unlocked maps, a dial held.

A refused loopback proxy makes a connect fail in milliseconds with its entries written in
goneonize's maps (the client stays registered: a probe answers "websocket not connected"); a
black-holed one (a listener that accepts and never answers) keeps a client dialling.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import gc
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.processes import wait_until
from tests.whatsapp.go_stress import dial_once, offline_provider, refused_proxy
from whatsapp.providers.base import Device
from whatsapp.providers.gocalls import GoCalls

pytest.importorskip("neonize.events")
from neonize._binder import ProxySettings
from neonize.utils.jid import build_jid

ROOT = Path(__file__).parents[2]
PHONE = "5511987654321"
# How long a send may wait behind another bot's dial: the setup span (gocalls.SETUP_SECONDS,
# 0.25 s) with room for a busy machine, against the 60 s that the dial itself holds.
SEND_BOUND_SECONDS = 5.0


def probe(client) -> str:
    """What goneonize says of this client: "websocket not connected" while it holds it, "client is nil" once gone."""
    try:
        return "code " + client.PairPhone(PHONE, True)
    except Exception as exc:
        return str(exc)


class BlackHole:
    """A loopback listener that accepts and never answers: a dial through it hangs until closed."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(connection)

    @property
    def proxy(self) -> ProxySettings:
        return ProxySettings(proxy_address=f"socks5://127.0.0.1:{self.listener.getsockname()[1]}")

    def close(self) -> None:
        self.listener.close()
        for connection in self.accepted:
            connection.close()


def quietly(fn, *args) -> None:
    with contextlib.suppress(Exception):
        fn(*args)


class Recorder:
    """Events as the provider interface receives them."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, *args))


@pytest.fixture
def provider(tmp_path):
    return offline_provider(tmp_path, GoCalls())


def test_collecting_an_old_client_leaves_the_live_client_of_its_device(provider):
    # Every reconnect of a bot makes a new client with the same key (a resumed device: its phone
    # number); the old one is dropped. neonize's finalizer would Stop(key) when Python collects it.
    old = provider.new_client("bot-1", None)
    live = dial_once(provider, "bot-1", refused_proxy())
    assert probe(live) == "websocket not connected"

    del old
    gc.collect()

    assert probe(live) == "websocket not connected", "the live client is still in goneonize's maps"
    provider.go.write(live.stop)
    assert probe(live).startswith("client is nil"), "stopped explicitly, it is gone"


def test_a_dial_into_a_black_hole_does_not_hold_another_bots_send(provider):
    registered = dial_once(provider, "sender", refused_proxy())
    hole = BlackHole()
    dialling = provider.new_client("dialler", None)
    connect = functools.partial(dialling.connect, hole.proxy)
    thread = threading.Thread(target=quietly, args=(provider.go.connect, connect, threading.Event()), daemon=True)
    try:
        thread.start()
        wait_until(lambda: hole.accepted, timeout=10, message="the dial did not reach the proxy")

        started = time.monotonic()
        with pytest.raises(Exception, match=r"device JID|not connected"):
            provider.go.read(registered.send_message, build_jid("5511955554444", "s.whatsapp.net"), "oi")
        waited = time.monotonic() - started

        assert thread.is_alive(), "the other bot is still dialling"
        assert waited < SEND_BOUND_SECONDS, f"the send waited {waited:.1f} s behind a dial"
    finally:
        hole.close()  # the dial fails at once
        thread.join(10)
        provider.go.write(dialling.stop)
        provider.go.write(registered.stop)


def test_it_asks_for_a_pairing_code_in_a_display_name_whatsapp_accepts(provider):
    from neonize.proto import Neonize_pb2

    client = provider.new_client("pairing", None)
    sent = []

    class Go:
        """neonize's binding to goneonize, for this client: what PairPhone hands to Go."""

        def PairPhone(self, key, payload, size):
            sent.append(Neonize_pb2.PairPhoneParams.FromString(payload))
            return Neonize_pb2.PairPhoneReturnFunction(Code="ABCD-EFGH").SerializeToString()

    client._NewClient__client = Go()
    bot = provider.client(Device(bot_id=uuid.uuid4(), pairing_phone=PHONE), Recorder())

    assert bot._pair(client) == "ABCD-EFGH"
    assert (sent[0].phone, sent[0].clientDisplayName) == (PHONE, "Chrome (Linux)")


async def test_a_bot_stopped_while_dialling_stops_at_once_and_leaves_goneonize_when_the_dial_ends(provider, settings):
    hole = BlackHole()
    settings.WHATSAPP_PROXY = hole.proxy.proxy_address
    provider._executor = concurrent.futures.ThreadPoolExecutor(4)
    events = Recorder()
    client = provider.client(Device(bot_id=uuid.uuid4()), events)
    try:
        await client.start()
        await asyncio.to_thread(wait_until, lambda: hole.accepted, timeout=10, message="no dial")
        inner = client.client

        started = time.monotonic()
        await client.stop()
        assert time.monotonic() - started < SEND_BOUND_SECONDS, "whatsmeow's Disconnect would wait for the dial"
        assert client.dialling(), "still dialling (a probe would wait for the dial too)"

        hole.close()
        await asyncio.to_thread(client.thread.join, 10)
        assert probe(inner).startswith("client is nil"), "the dial's end stopped it"
        assert events.calls == [], "a stopped bot reports nothing"
    finally:
        hole.close()
        provider._executor.shutdown(wait=False)


@pytest.mark.processes
def test_dials_stops_and_sends_at_once_never_abort_the_process():
    done = subprocess.run(
        [sys.executable, "-m", "tests.whatsapp.go_stress", "--seconds", "15"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )

    assert "fatal error" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == 0, done.stderr[-2000:]
    counts = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    assert counts["dials"] > 100 and counts["sends"] > 100, counts
