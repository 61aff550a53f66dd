"""The drop-in: an existing script's psycopg.connect() replaced by pgpoolkit.connect().

PGPOOLKIT_DSN="host=127.0.0.1 dbname=postgres user=postgres" python examples/dropin_connect.py

The script below connects once per record, as scripts written without a pool often do. With
psycopg.connect() each call opens a server connection (a new backend process, a few
milliseconds); with pgpoolkit.connect() the calls share a process-wide pool, so the script's
100 connections use one server connection. The only change is the marked line.
"""

from __future__ import annotations

import os

import pgpoolkit

#: the server: a libpq connection string (PGHOST, PGUSER... fill in what it leaves out)
DSN = os.environ.get("PGPOOLKIT_DSN", "dbname=postgres")


def save(record: int) -> int:
    """Store one record the way the script always did; return the server process that did it."""
    # before: with psycopg.connect(DSN) as conn:
    with pgpoolkit.connect(DSN, application_name="dropin-example") as conn:  # the changed line
        conn.execute("INSERT INTO dropin_records VALUES (%s)", (record,))
        return conn.info.backend_pid  # committed and given back to the pool when the block ends


def main() -> None:
    with pgpoolkit.connect(DSN, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS dropin_records (n int)")
        conn.execute("TRUNCATE dropin_records")
    backends = {save(n) for n in range(100)}
    with pgpoolkit.connect(DSN, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM dropin_records").fetchone()
        conn.execute("DROP TABLE dropin_records")
    print(f"stored {row[0] if row else 0} records over {len(backends)} server connection(s)")


if __name__ == "__main__":
    main()
