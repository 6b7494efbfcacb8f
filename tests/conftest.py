"""Personas and fixtures shared by the whole suite (helpers: tests/helpers.py, tests/hosting.py).

alice and bob are operators with bots of their own; staff uses the admin.
`api` clients authenticate as a real client would: a bearer token made by the
platform itself, or a logged-in browser session with CSRF enforced.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.db import connections
from django.test import Client

from pool.shard import Shard
from tests.helpers import ApiClient, make_user, token_client
from tests.hosting import POLL
from tests.processes import Proc, Web, start_pool, start_web
from whatsapp.providers.simulator import SimulatorProvider

DB_FIXTURES = {"db", "transactional_db", "live_server", "django_db_reset_sequences", "django_db_serialized_rollback"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses the database gets the simulator's store too (whatsapp/routers.py): the
    simulated WhatsApp is part of the world the tests run in, as the main database is."""
    for item in items:
        marker = item.get_closest_marker("django_db")
        if marker is None and not DB_FIXTURES & set(getattr(item, "fixturenames", ())):
            continue
        kwargs = dict(marker.kwargs) if marker is not None else {}
        if marker is not None and marker.args:
            kwargs.setdefault("transaction", marker.args[0])
        if kwargs.get("databases") is None:
            item.add_marker(pytest.mark.django_db(**{**kwargs, "databases": "__all__"}), append=False)


@pytest.fixture
def alice(db) -> User:
    return make_user("alice")


@pytest.fixture
def bob(db) -> User:
    return make_user("bob")


@pytest.fixture
def staff(db) -> User:
    return make_user("staff", is_staff=True, is_superuser=True)


@pytest.fixture
def alice_api(alice) -> ApiClient:
    return token_client(alice)


@pytest.fixture
def bob_api(bob) -> ApiClient:
    return token_client(bob)


@pytest.fixture
def anonymous_api(db) -> ApiClient:
    return ApiClient(Client(), {})


@pytest.fixture
def web() -> Iterator[Web]:
    """daphne serving the app on a free port, against the test database (tests.processes)."""
    server = start_web()
    yield server
    server.proc.stop()


@pytest.fixture
def pool() -> Iterator[Callable[..., Proc]]:
    """pool(*args, **env) starts `run_whatsapp` against the test database; all are stopped afterwards."""
    pools: list[Proc] = []

    def start(*args: str, **env: str) -> Proc:
        proc = start_pool(*args, **env)
        pools.append(proc)
        return proc

    yield start
    for proc in pools:
        proc.stop()


@pytest.fixture
async def shards():
    """shards(**kwargs) makes a shard hosting simulator bots, in-process (tests/hosting.py); all are stopped after."""
    made: list[Shard] = []

    async def start(*, setup: bool = True, **kwargs) -> Shard:
        shard = Shard(capacity=kwargs.pop("capacity", 10), poll_interval=POLL, **kwargs)
        if not shard.providers:
            shard.providers = {"simulator": SimulatorProvider(shard.db, poll_interval=POLL)}
        if setup:
            await shard.setup()
        made.append(shard)
        return shard

    yield start
    for shard in made:
        if not shard.db_threads.closed:  # stop_all shuts them down; a second stop_all only logs
            await shard.stop_all()
        shard.db_threads.executor.shutdown(wait=True)
    # A shard process exits with its DB threads' connections open; here they must close, or
    # PostgreSQL cannot drop the test database. Their threads are gone, their connections unreachable.
    gc.collect()
    await sync_to_async(connections.close_all)()
