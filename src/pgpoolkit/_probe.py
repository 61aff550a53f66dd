"""Is an idle server connection still alive? Asked of its socket, without a round trip.

An idle PostgreSQL connection has nothing to read. If its socket is readable, the server sent
something while nobody was asking: most often an error and end-of-file because the backend was
terminated (pg_terminate_backend, a restart, idle_session_timeout), sometimes a notification.
libpq then reads it without blocking: if that fails or marks the connection bad, it is dead.
The check is one ``poll()`` system call when nothing is pending.
"""

from __future__ import annotations

import select
from typing import Any, cast

import psycopg
from psycopg.pq import ConnStatus

_OK = ConnStatus.OK
_MAX_READS = 4

if hasattr(select, "poll"):

    def make_probe(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> object:
        """A poll object watching the connection's socket for input."""
        poller = select.poll()
        poller.register(conn.pgconn.socket, select.POLLIN | select.POLLPRI)
        return poller

    def is_alive(
        conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], probe: object
    ) -> bool:
        """False if the server closed the connection (or it is broken)."""
        poll = probe.poll  # type: ignore[attr-defined]
        # a terminated backend sends its error, then end-of-file: the first read takes the
        # message, the socket stays readable, the second read meets the end of the stream
        for _ in range(_MAX_READS):
            if not poll(0):
                return True
            if not _consume(conn):
                return False
        return conn.pgconn.status == _OK

else:  # pragma: no cover - Windows

    def make_probe(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> object:
        return conn.pgconn.socket

    def is_alive(
        conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], probe: object
    ) -> bool:
        for _ in range(_MAX_READS):
            readable, _, _ = select.select([cast(int, probe)], [], [], 0)
            if not readable:
                return True
            if not _consume(conn):
                return False
        return conn.pgconn.status == _OK


def _consume(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    pgconn = conn.pgconn
    if pgconn.status != _OK:
        return False
    try:
        pgconn.consume_input()
    except psycopg.OperationalError:
        return False
    return pgconn.status == _OK
