"""The whatsmeow store through PgBouncer in transaction mode: shown on the real library, offline.

Every neonize client opens a Go connection pool on the store that is never closed (goneonize's
``getDB``, on every ``NewClient``). Straight to PostgreSQL that is a server connection per
client; through PgBouncer it is a client connection to PgBouncer, and the server connections
stay within its pool. lib/pq needs ``binary_parameters=yes`` there (``store.for_go``): without
it its unnamed prepared statements can land on another server connection than their execution.
"""

from __future__ import annotations

import concurrent.futures

import pytest
from django.db import connection

from tests.chaos.services import PgBouncer
from tests.whatsapp.go_stress import offline_provider
from whatsapp.providers.gocalls import GoCalls
from whatsapp.providers.store import for_go, migrate_store

pytest.importorskip("neonize.events")

pytestmark = pytest.mark.timeout(120)

CLIENTS = 24
POOL = 3


@pytest.fixture
def pgbouncer(tmp_path):
    if connection.vendor != "postgresql":
        pytest.skip("the store goes through PgBouncer only where it is PostgreSQL (DATABASE_URL=postgres)")
    bouncer = PgBouncer(int(connection.settings_dict.get("PORT") or 5432), pool_size=POOL).start()
    yield bouncer
    bouncer.stop()


@pytest.mark.django_db(transaction=True)
def test_many_neonize_clients_share_a_few_server_connections_through_pgbouncer(pgbouncer, tmp_path):
    from neonize.client import ClientFactory

    store = pgbouncer.url(connection.settings_dict["NAME"])
    migrate_store(store)  # whatsmeow's schema, made through PgBouncer
    provider = offline_provider(tmp_path, GoCalls())
    provider.dsn = store

    def client_that_reads_the_store(n: int):
        client = provider.new_client(f"pgb-{n}", None)  # its own Go pool on the store, kept open
        return client, ClientFactory.get_all_devices_from_db(for_go(store))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        made = list(pool.map(client_that_reads_the_store, range(CLIENTS)))

    assert all(devices == [] for _, devices in made), "each read the store through PgBouncer without an error"
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM information_schema.tables WHERE table_name LIKE 'whatsmeow_%%'")
        assert cursor.fetchone()[0] >= 15, "whatsmeow's tables"
    clients = [c for c in pgbouncer.show("CLIENTS") if c["database"] == connection.settings_dict["NAME"]]
    servers = [s for s in pgbouncer.show("SERVERS") if s["database"] == connection.settings_dict["NAME"]]
    assert len(clients) >= CLIENTS, "one client connection per neonize client (and per store it opened)"
    assert len(servers) <= POOL, f"{len(servers)} server connections for {len(clients)} clients"
    for client, _ in made:
        provider.go.write(client.stop)


@pytest.mark.parametrize(
    ("store", "given"),
    [
        ("postgres://bots@127.0.0.1:6432/bots", "postgres://bots@127.0.0.1:6432/bots?binary_parameters=yes"),
        (
            "postgres://bots@127.0.0.1:6432/bots?sslmode=disable",
            "postgres://bots@127.0.0.1:6432/bots?sslmode=disable&binary_parameters=yes",
        ),
        ("postgres://bots@db/bots?binary_parameters=no", "postgres://bots@db/bots?binary_parameters=no"),
        ("/srv/bots/db.whatsmeow.sqlite3", "/srv/bots/db.whatsmeow.sqlite3"),
    ],
)
def test_whatsmeow_gets_the_store_with_binary_parameters(store, given):
    assert for_go(store) == given
