"""neonize clients across shards with the whatsmeow store through PgBouncer in transaction mode.

For each N: ceil(N / 200) shards (200 neonize bots each, WHATSAPP_NEONIZE_CAPACITY), the store in
a PostgreSQL database of its own behind a PgBouncer of the benchmark's (Debian's, run as the
postgres user, on a free loopback port). Reported once every client has made its connect attempt:
PostgreSQL server connections to the store (pg_stat_activity), PgBouncer's client and server
connections, RSS and threads per shard, and the time until all attempted. Offline: each attempt
fails (no WhatsApp), and each client waits in backoff holding its store pool, as a live one would.

    cd benchmarks && ../.venv/bin/python store_pgbouncer.py --clients 50 200 1000 --timeout 600
"""

from __future__ import annotations

import argparse
import math

from capacity import measure_neonize
from common import create_postgres_database, emit, setup_django


def store_probe(bouncer, store_db: str):
    def probe() -> dict:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [store_db])
            (server,) = cursor.fetchone()
        connection.close()
        return {
            "store_postgres_connections": server,
            "pgbouncer_client_connections": sum(c["database"] == store_db for c in bouncer.show("CLIENTS")),
            "pgbouncer_server_connections": sum(s["database"] == store_db for s in bouncer.show("SERVERS")),
        }

    return probe


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--per-shard", type=int, default=200)
    parser.add_argument("--pool-size", type=int, default=20, help="PgBouncer's default_pool_size")
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    env = setup_django()

    from tests.chaos.services import PgBouncer

    url = env["DATABASE_URL"]
    store_db = url.rpartition("/")[2] + "_store"
    create_postgres_database(url.rpartition("/")[0] + "/" + store_db)
    port = int(url.rpartition(":")[2].split("/")[0]) if url.count(":") > 1 else 5432
    bouncer = PgBouncer(port, pool_size=args.pool_size, max_clients=20_000).start()
    results = []
    try:
        for clients in args.clients:
            shards = math.ceil(clients / args.per_shard)
            results.append(
                measure_neonize(
                    clients,
                    shards,
                    bouncer.url(store_db),
                    env,
                    args.idle,
                    args.timeout,
                    probe=store_probe(bouncer, store_db),
                )
            )
    finally:
        bouncer.stop()
    emit(
        {
            "benchmark": "store through pgbouncer",
            "note": "offline: one real connect attempt per client, then in backoff holding its store pool",
            "pgbouncer_pool_size": args.pool_size,
            "results": results,
        }
    )


if __name__ == "__main__":
    main()
