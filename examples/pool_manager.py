"""Named pools sharing one server's connection budget, as managed PostgreSQL services offer.

PGPOOLKIT_DSN="host=127.0.0.1 dbname=postgres user=postgres" python examples/pool_manager.py
"""

from __future__ import annotations

import os

import pgpoolkit

#: the server: a libpq connection string (PGHOST, PGUSER... fill in what it leaves out)
DSN = os.environ.get("PGPOOLKIT_DSN", "dbname=postgres")


def main(dsn: str) -> None:
    # the budget: the server's max_connections less its reserved ones and 3 for maintenance
    with pgpoolkit.PoolManager(dsn, timeout=10.0) as manager:
        web = manager.create_pool("web", size=10)  # transaction mode by default
        jobs = manager.create_pool("jobs", mode="session", size=4)
        print(manager.budget())

        with web.connection() as conn:
            conn.execute("SELECT 1")
        for info in manager.list_pools():
            print(
                f"{info.name}: {info.mode}, {info.servers_active + info.servers_idle}"
                f"/{info.size} connections"
            )

        manager.update_pool("jobs", size=6)  # live, checked against the budget
        try:
            manager.create_pool("huge", size=10_000)
        except pgpoolkit.BudgetExceeded as ex:
            print("refused:", ex)
        manager.delete_pool("jobs")  # drains: transactions under way finish first
        print([info.name for info in manager.list_pools()], jobs.closed)


if __name__ == "__main__":
    main(DSN)
