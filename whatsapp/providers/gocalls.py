"""Calls into goneonize, never one that reads its maps beside one that writes them (docs/neonize.md).

goneonize (neonize's Go side, ``main.go``) keeps three maps keyed by a client's uuid, ``clients``,
``StopSignal`` and ``eventChannel``, with no mutex. ``Neonize()``, a client's connect, writes all
three; ``Stop`` deletes from them; every other call (``SendMessage``, ``PairPhone``, ``Logout``...)
reads ``clients``. A read during a write is a Go ``fatal error: concurrent map read and map write``,
which aborts the whole process: measured offline, two threads dialling and one sending, 3 of 3
runs of 20 s (``tests/whatsapp/go_stress.py --unlocked``). So every call of this process into
goneonize goes through one lock, shared by the calls that only read the maps (Go allows
concurrent reads) and held alone by those that write them:

- ``Stop`` holds it alone while it runs; a stop of a client still dialling waits for the dial's
  end (whatsmeow's ``Disconnect`` would wait for it, up to 60 s, holding everyone);
- a connect holds it alone while ``Neonize()`` writes the maps. It writes them before it dials (the
  stop signal first, the event channel once the store is open, the client after
  ``whatsmeow.NewClient``; then ``client.Connect()``), and a dial into a black hole takes 60 s,
  so the lock is not held for the dial: it is released at the client's first sign of life (a QR,
  an event, the call's return) or after ``SETUP_SECONDS``, whichever comes first. Measured offline,
  from the call to the dial reaching a loopback proxy (or failing at a refused one): 11-15 ms,
  once 133 ms (the first run after the machine started). A send waits behind a dial at most
  ``SETUP_SECONDS``; tests/whatsapp/test_neonize_go.py shows a send not held by a dial into a
  black hole.

Two windows stay open, stated in the README: a store slower to open than ``SETUP_SECONDS`` (a
stalled database) lets the lock go before the maps are written; and Go reads the maps itself,
on a client's own goroutine, right after its dial (``FetchMe``, ``CallbackFunction``), where no
Python lock reaches.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

SETUP_SECONDS = 0.25


class GoCalls:
    """The process's one way into goneonize: calls that read its maps share it, those that write them
    (a connect's setup, ``Stop``) have it alone.

    Readers go first, even past a waiting writer: a send that whatsmeow holds (it waits for a dial in
    progress, up to 60 s) must not stop every other bot's sends behind the writer waiting for it; it
    delays only the next connect or stop. And a writer waits for the readers already waiting, so
    that dials one after another (a restart) do not starve the sends. Hand-written: the standard
    library has no such lock, and the few lines here are the whole of it.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._readers = 0
        self._waiting_readers = 0
        self._writing = False

    def read(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._changed:
            self._waiting_readers += 1
            while self._writing:
                self._changed.wait()
            self._waiting_readers -= 1
            self._readers += 1
        try:
            return fn(*args)
        finally:
            with self._changed:
                self._readers -= 1
                self._changed.notify_all()

    def _acquire_alone(self) -> None:
        with self._changed:
            while self._writing or self._readers or self._waiting_readers:
                self._changed.wait()
            self._writing = True

    def _release_alone(self) -> None:
        with self._changed:
            self._writing = False
            self._changed.notify_all()

    def write(self, fn: Callable[..., Any], *args: Any) -> Any:
        self._acquire_alone()
        try:
            return fn(*args)
        finally:
            self._release_alone()

    def connect(self, connect: Callable[[], Any], alive: threading.Event, setup_seconds: float = SETUP_SECONDS) -> Any:
        """``connect()`` (neonize's, which blocks for the life of the session), alone during its setup.

        ``alive`` is set by the client's handlers at its first sign of life.
        """
        self._acquire_alone()
        once = threading.Lock()

        def release() -> None:
            if once.acquire(blocking=False):
                self._release_alone()

        def release_when_set_up() -> None:
            alive.wait(setup_seconds)
            release()

        threading.Thread(target=release_when_set_up, name="neonize-setup", daemon=True).start()
        try:
            return connect()
        finally:
            release()
