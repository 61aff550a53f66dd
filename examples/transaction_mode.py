"""Transaction pooling: many open clients over a few server connections.

    python examples/transaction_mode.py "host=127.0.0.1 dbname=postgres user=postgres"
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import pgpoolkit


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

        try:
            clients[0].execute("SET search_path TO other")  # session state: this client is pinned
        finally:
            print("pinned clients:", pool.stats().clients_pinned)
        for conn in clients:
            conn.close()  # the pinned one's connection is reset (DISCARD ALL) on close


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
