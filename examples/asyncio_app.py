"""An asyncio application: many tasks over a few server connections.

PGPOOLKIT_DSN="host=127.0.0.1 dbname=postgres user=postgres" python examples/asyncio_app.py
"""

from __future__ import annotations

import asyncio
import os

import pgpoolkit

#: the server: a libpq connection string (PGHOST, PGUSER... fill in what it leaves out)
DSN = os.environ.get("PGPOOLKIT_DSN", "dbname=postgres")


async def handle_request(pool: pgpoolkit.AsyncPool, n: int) -> int:
    try:
        async with pool.connection(timeout=5.0) as conn:
            cur = await conn.execute("SELECT %s::int + 1", (n,))
            row = await cur.fetchone()
            assert row is not None
            return int(row[0])
    except pgpoolkit.PoolTimeout as ex:  # the message says how busy the pool was
        print("overloaded:", ex)
        return 0


async def main(dsn: str) -> None:
    async with pgpoolkit.AsyncPool(dsn, min_size=2, max_size=5, name="app") as pool:
        results = await asyncio.gather(*(handle_request(pool, n) for n in range(500)))
        print("served", len(results), "requests; stats:", pool.get_stats())


if __name__ == "__main__":
    asyncio.run(main(DSN))
