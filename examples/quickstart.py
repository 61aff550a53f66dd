"""Quickstart: a threaded pool shared by a few workers.

python examples/quickstart.py "host=127.0.0.1 dbname=postgres user=postgres"
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import pgpoolkit


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
    main(sys.argv[1] if len(sys.argv) > 1 else "")
