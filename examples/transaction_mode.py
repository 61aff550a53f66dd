"""Transaction pooling: many open clients over a few server connections.

PGPOOLKIT_DSN="host=127.0.0.1 dbname=postgres user=postgres" python examples/transaction_mode.py
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import psycopg
from psycopg.rows import dict_row

import pgpoolkit

#: the server: a libpq connection string (PGHOST, PGUSER... fill in what it leaves out)
DSN = os.environ.get("PGPOOLKIT_DSN", "dbname=postgres")


def main(dsn: str) -> None:
    with pgpoolkit.Pool(dsn, mode="transaction", min_size=1, max_size=3) as pool:
        # 100 long-lived clients, as 100 request-handling threads would keep them
        clients = [pool.connect() for _ in range(100)]

        def handle(i: int) -> int:
            conn = clients[i]
            with conn.transaction():  # the client holds a server connection for this block
                row = conn.execute("SELECT %s::int * 10", (i,)).fetchone()
            assert row is not None
            return int(row[0])  # results stay readable: the connection went back already

        with ThreadPoolExecutor(20) as executor:
            print("sum:", sum(executor.map(handle, range(100))))

        stats = pool.stats()
        print(f"{stats.clients_open} clients open, {stats.servers_idle} server connections idle")

        # each client is a psycopg connection: its settings, row factory and adapters are its own
        conn = clients[0]
        assert isinstance(conn, psycopg.Connection)
        conn.autocommit = True
        conn.row_factory = dict_row
        # a plain SET in autocommit: kept by the client, set on whatever it borrows, no pin
        conn.execute("SET TIME ZONE 'Asia/Tokyo'")
        print(conn.execute("SELECT current_setting('TimeZone') AS tz").fetchone())
        print("clients[1] sees:", clients[1].execute("SHOW TimeZone").fetchone())
        # LISTEN needs one server connection across transactions: the client is pinned...
        conn.execute("LISTEN jobs")
        print("pinned clients:", pool.stats().clients_pinned)
        conn.execute("UNLISTEN jobs")  # ...until nothing needs it any more
        print("pinned clients:", pool.stats().clients_pinned)
        for conn in clients:
            conn.close()


if __name__ == "__main__":
    main(DSN)
