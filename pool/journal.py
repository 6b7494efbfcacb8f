"""A shard's inbound journal: what reached Python is on disk before WhatsApp counts it delivered.

whatsmeow acknowledges a message when its Go handler returns, and neonize's handler only queues
it for Python: from then on WhatsApp never delivers it again (docs/whatsmeow.md). So the
provider callback appends each message here, fsync'ed, before it returns (the one stated
exception to "no slow work on library threads": a write and an fsync of about 0.15 ms, one fsync
shared by the callers that arrive meanwhile), and the shard marks it done once stored. A crash
or a database outage then loses nothing that reached Python: the shard retries the store, and a
journal whose shard died (its lock is free) is replayed by the next shard process on the host.

One file per shard process, a JSON line per record: ``{"seq", "bot", "message"}`` for a message,
``{"done": [seq, ...]}`` once stored. It is emptied whenever everything in it is stored.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from whatsapp.providers.base import Inbound

logger = logging.getLogger(__name__)

SUFFIX = ".journal"
# Emptied when nothing in it waits and it has grown this big: replays stay short, writes stay appends.
COMPACT_BYTES = 1 << 20

Entry = tuple[int, uuid.UUID, Inbound]


def encode(seq: int, bot_id: uuid.UUID, message: Inbound) -> bytes:
    fields = dataclasses.asdict(message)
    if message.timestamp is not None:
        fields["timestamp"] = message.timestamp.isoformat()
    return json.dumps({"seq": seq, "bot": str(bot_id), "message": fields}, ensure_ascii=False).encode() + b"\n"


def decode(record: dict) -> Entry:
    fields = dict(record["message"])
    fields["mentions"] = tuple(fields.get("mentions", ()))
    if fields.get("timestamp"):
        fields["timestamp"] = datetime.datetime.fromisoformat(fields["timestamp"])
    return record["seq"], uuid.UUID(record["bot"]), Inbound(**fields)


def read_entries(fd: int) -> list[Entry]:
    """The messages of a journal not marked done, in order. A line cut short by a crash is skipped:
    its write never returned, so neither did the callback, and WhatsApp delivers that message again."""
    with open(fd, "rb", closefd=False) as file:
        file.seek(0)
        entries: dict[int, Entry] = {}
        for line in file:
            try:
                record = json.loads(line)
                if "done" in record:
                    for seq in record["done"]:
                        entries.pop(seq, None)
                else:
                    entry = decode(record)
                    entries[entry[0]] = entry
            except (ValueError, KeyError, TypeError):
                logger.warning("journal: skipping a damaged line (%d bytes)", len(line))
    return list(entries.values())


def _lock(path: Path) -> int | None:
    """Open and lock a journal; None when its shard still holds it (or it is gone)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if os.fstat(fd).st_nlink == 0:  # replayed and removed by another shard meanwhile
        os.close(fd)
        return None
    return fd


class Orphan:
    """The journal of a shard that died, locked by the shard replaying it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    def entries(self) -> list[Entry]:
        return read_entries(self.fd)

    def remove(self) -> None:
        """Everything in it is stored: delete it, then let go of it."""
        self.path.unlink(missing_ok=True)
        self.close()

    def close(self) -> None:
        os.close(self.fd)


def orphans(directory: Path, own: Path | None = None) -> Iterator[Orphan]:
    """Journals in ``directory`` whose shard is gone (the lock is free), each locked for its replay."""
    try:
        paths = sorted(directory.glob("*" + SUFFIX))
    except OSError:
        return
    for path in paths:
        if path == own:
            continue
        fd = _lock(path)
        if fd is not None:
            yield Orphan(path, fd)


class Journal:
    """This shard's journal: ``append`` on any thread (a provider callback), ``done`` on the loop."""

    def __init__(self, directory: Path, name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / (name.replace(":", "_").replace("/", "_") + SUFFIX)
        fd = _lock(self.path)
        if fd is None:
            raise RuntimeError(f"journal {self.path} is held by another process")
        self.fd = fd
        self._lock = threading.Lock()  # appends and the counters
        self._sync_lock = threading.Lock()  # one fsync at a time; those waiting may find theirs done
        self._seq = 0
        self._synced = 0
        self.waiting: set[int] = set()

    def append(self, bot_id: uuid.UUID, message: Inbound) -> int:
        """Write a message and fsync it; returns its number, for ``done``."""
        with self._lock:
            self._seq += 1
            seq = self._seq
            # One write of one line on an O_APPEND file: records never interleave.
            os.write(self.fd, encode(seq, bot_id, message))
            self.waiting.add(seq)
        self._sync(seq)
        return seq

    def _sync(self, seq: int) -> None:
        # Group commit: an fsync covers every write before it started, so a caller that waited for
        # another's fsync is often covered by it and returns without one of its own.
        with self._sync_lock:
            if self._synced >= seq:
                return
            with self._lock:
                covered = self._seq
            os.fsync(self.fd)
            self._synced = covered

    def done(self, seqs: Iterable[int]) -> None:
        """These are stored. No fsync: a lost mark only makes a replay store them again, a no-op."""
        seqs = [seq for seq in seqs if seq]
        if not seqs:
            return
        with self._lock:
            self.waiting.difference_update(seqs)
            if not self.waiting and os.fstat(self.fd).st_size >= COMPACT_BYTES:
                os.ftruncate(self.fd, 0)
            else:
                os.write(self.fd, json.dumps({"done": seqs}).encode() + b"\n")

    def close(self) -> None:
        """At a clean stop: removed when nothing in it waits, else left for the next shard to replay."""
        with self._lock:
            if not self.waiting:
                self.path.unlink(missing_ok=True)
            else:
                logger.warning("journal: %d messages not stored yet; the next shard replays them", len(self.waiting))
            os.close(self.fd)
