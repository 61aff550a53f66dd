"""configure / check / reset callbacks and rotating credentials.

PGPOOLKIT_DSN="host=127.0.0.1 dbname=postgres user=postgres" python examples/callbacks.py
"""

from __future__ import annotations

import os
from typing import Any

import psycopg

import pgpoolkit


def configure(conn: psycopg.Connection[Any]) -> None:
    """Runs once per new server connection."""
    conn.execute("SET statement_timeout = '5s'")
    conn.commit()  # configure must leave no transaction open


def reset(conn: psycopg.Connection[Any]) -> None:
    """Runs on every return, after the pool rolled back what was open (and, if the client
    changed its session, after the pool's DISCARD ALL and a new run of configure)."""
    conn.execute("SELECT 1")  # e.g. note the connection's return somewhere
    conn.commit()  # reset must leave no transaction open


def current_dsn() -> str:
    """Called at every new connection: read a rotated password from a vault here."""
    return os.environ.get("PGPOOLKIT_DSN", "dbname=postgres")


def main() -> None:
    with pgpoolkit.Pool(
        current_dsn,
        min_size=1,
        max_size=2,
        configure=configure,
        reset=reset,
        check=pgpoolkit.Pool.check_connection,  # a round trip on each checkout, if you want one
        reconnect_failed=lambda pool: print(f"{pool.name}: database unreachable"),
    ) as pool:
        with pool.connection() as conn:
            conn.execute("SET work_mem = '64MB'")
        with pool.connection() as conn:
            row = conn.execute("SHOW work_mem").fetchone()
            print("work_mem after reset:", row[0] if row else None)


if __name__ == "__main__":
    main()
