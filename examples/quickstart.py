"""Quickstart: a threaded pool shared by a few workers.

PGPOOLKIT_DSN="host=127.0.0.1 dbname=postgres user=postgres" python examples/quickstart.py
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pgpoolkit

#: the server: a libpq connection string (PGHOST, PGUSER... fill in what it leaves out)
DSN = os.environ.get("PGPOOLKIT_DSN", "dbname=postgres")


def main(dsn: str) -> None:
    with pgpoolkit.Pool(dsn, min_size=1, max_size=4, name="quickstart") as pool:
        with pool.connection() as conn:
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS seen (n int)")  # session-only table

        def work(n: int) -> int:
            with pool.connection() as conn:  # committed at block end, rolled back on error
                row = conn.execute("SELECT %s::int * 2", (n,)).fetchone()
                assert row is not None
                return int(row[0])

        with ThreadPoolExecutor(16) as executor:
            results = list(executor.map(work, range(100)))
        print("sum:", sum(results))
        print(pool.stats())


if __name__ == "__main__":
    main(DSN)
