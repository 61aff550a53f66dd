"""A threaded job worker: eight threads take jobs from a table over a pool of three connections.

PGPOOLKIT_DSN="host=127.0.0.1 dbname=postgres user=postgres" python examples/threaded_worker.py

Each thread claims one job at a time with SELECT ... FOR UPDATE SKIP LOCKED, does the work outside
the transaction (no server connection held meanwhile: transaction mode), then marks it done.
"""

from __future__ import annotations

import os
import threading
import time

import pgpoolkit

#: the server: a libpq connection string (PGHOST, PGUSER... fill in what it leaves out)
DSN = os.environ.get("PGPOOLKIT_DSN", "dbname=postgres")

THREADS = 8
JOBS = 200


def worker(pool: pgpoolkit.Pool, done: list[int]) -> None:
    conn = pool.connect()  # one client per thread, held for the thread's life
    try:
        while True:
            with conn.transaction():  # a server connection for this block only
                row = conn.execute(
                    "SELECT id, payload FROM worker_jobs WHERE done_by IS NULL"
                    " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
                ).fetchone()
                if row is None:
                    return
                job_id, payload = row
                conn.execute(
                    "UPDATE worker_jobs SET done_by = %s WHERE id = %s",
                    (threading.current_thread().name, job_id),
                )
            time.sleep(0.001)  # the work itself: the server connection serves others meanwhile
            done.append(payload)
    finally:
        conn.close()


def main(dsn: str) -> None:
    with pgpoolkit.Pool(dsn, mode="transaction", min_size=1, max_size=3, name="worker") as pool:
        with pool.connection() as conn:
            conn.execute("DROP TABLE IF EXISTS worker_jobs")
            conn.execute(
                "CREATE TABLE worker_jobs (id serial PRIMARY KEY, payload int, done_by text)"
            )
            conn.execute("INSERT INTO worker_jobs (payload) SELECT generate_series(1, %s)", (JOBS,))
        done: list[int] = []
        threads = [
            threading.Thread(target=worker, args=(pool, done), name=f"worker-{i}")
            for i in range(THREADS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with pool.connection() as conn:
            row = conn.execute(
                "SELECT count(*) FROM worker_jobs WHERE done_by IS NOT NULL"
            ).fetchone()
            conn.execute("DROP TABLE worker_jobs")
        assert row is not None
        stats = pool.stats()
        print(f"{len(done)} jobs done once each: {len(done) == len(set(done)) == row[0]}")
        print(f"{THREADS} threads over at most {stats.max_size} server connections")


if __name__ == "__main__":
    main(DSN)
