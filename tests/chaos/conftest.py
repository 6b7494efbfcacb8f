"""Fixtures of the chaos tests: everything a test starts is stopped at its end, also when it fails."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Protocol

import pytest
from django.db import connection

from tests.chaos.services import PrivateCluster, PrivateRedis
from tests.fake_gemini import FakeGemini


class Stoppable(Protocol):
    def stop(self) -> object: ...


@pytest.fixture
def stop_at_end() -> Iterator[Callable[..., Stoppable]]:
    """stop_at_end(thing) returns it, and calls thing.stop() when the test ends, the last one registered first.

    So processes started by a test stop before the servers they use (registered by the fixtures).
    """
    with contextlib.ExitStack() as stack:

        def register(thing: Stoppable, stop: Callable[[], object] | None = None) -> Stoppable:
            stack.callback(stop or thing.stop)
            return thing

        yield register


@pytest.fixture
def fake_gemini(stop_at_end) -> FakeGemini:
    """The fake Gemini server, in this process, answering the shards (other processes) in 0.2 s."""
    return stop_at_end(FakeGemini(latency=0.2).start())


@pytest.fixture
def private_redis(stop_at_end) -> PrivateRedis:
    return stop_at_end(PrivateRedis()).start()


@pytest.fixture
def private_postgres(stop_at_end) -> PrivateCluster:
    """A PostgreSQL cluster of the test's own; only on PostgreSQL runs (SQLite runs have no server to restart)."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL restarts matter only where the platform runs on PostgreSQL (DATABASE_URL=postgres)")
    cluster = PrivateCluster()
    stop_at_end(cluster, cluster.remove)
    return cluster.init().start()
