"""A process of the cross-process budget test (tests/test_manager.py): a PoolManager with
``across_processes=True``, a pool "shared" of 3, and threads running short transactions with
think time between them. Prints how many it ran, and when the server ran each (its clock).
Not a test module: run by the tests."""

from __future__ import annotations

import sys
import threading
import time

from pgpoolkit import PoolManager


def main(dsn: str, app: str, units: int, hold: float) -> None:
    with PoolManager(dsn, budget=50, across_processes=True) as manager:
        pool = manager.create_pool(
            "shared",
            size=3,
            min_size=0,
            max_idle=0.1,
            timeout=30.0,
            kwargs={"application_name": app},
        )
        if hold:  # hold every slot, then sleep: the test kills this process
            held = [pool.getconn() for _ in range(3)]
            print("holding", len(held), flush=True)
            time.sleep(hold)
            return
        done = [0]
        spans: list[tuple[float, float]] = []

        def work() -> None:
            for _ in range(units):
                with pool.connection() as conn:  # when the server ran it, by its own clock
                    row = conn.execute(
                        "SELECT extract(epoch FROM clock_timestamp()), pg_sleep(0.005),"
                        " extract(epoch FROM clock_timestamp())"
                    ).fetchone()
                assert row is not None
                spans.append((float(row[0]), float(row[2])))
                done[0] += 1
                time.sleep(0.02)

        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print("served", done[0], flush=True)
        for start, end in spans:
            print("span", start, end, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
