"""Is an idle server connection still alive? Asked of its socket, without a round trip.

An idle PostgreSQL connection has nothing to read. If its socket is readable, the server sent
something while nobody was asking: most often an error and end-of-file because the backend was
terminated (pg_terminate_backend, a restart, idle_session_timeout), sometimes a notification.
libpq then reads it without blocking: if that fails or marks the connection bad, it is dead.
The check is one ``poll()`` system call when nothing is pending.

The end-of-file may not have arrived yet when the error has (the backend sends its FATAL
message, then exits): so what was read is parsed too, and a FATAL error, which libpq hands to
the notice handlers of an idle connection, marks the connection dead at once.

In the threaded pool, where the C library can be reached through ctypes, ``poll()`` is called
with the GIL held: ``select.poll`` releases the GIL around the call, and with several threads
checking out at once every release hands the interpreter to another thread and waits to get it
back, which cost a fifth of the throughput of SELECT 1 with 4 threads
(benchmarks/scenarios/checkout.py). A zero timeout poll never blocks, so holding the GIL through it
costs nothing. The asyncio pool, whose event loop is the one thread running, uses
``select.poll``: less work per call.
"""

from __future__ import annotations

import ctypes
import functools
import select
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.errors import Diagnostic
from psycopg.pq import ConnStatus

_OK = ConnStatus.OK
_MAX_READS = 4
#: severities of the errors a backend sends just before it closes the connection
_FATAL = frozenset({"FATAL", "PANIC"})

AnyConnection = psycopg.Connection[Any] | psycopg.AsyncConnection[Any]


class _PollFd(ctypes.Structure):
    _fields_ = (("fd", ctypes.c_int), ("events", ctypes.c_short), ("revents", ctypes.c_short))


def _libc_poll() -> Any:
    """libc's poll() through a PyDLL (which keeps the GIL during the call), or None."""
    try:
        poll = ctypes.PyDLL(None).poll
    except (OSError, AttributeError, TypeError):  # no C library to reach (Windows)
        return None
    poll.restype = ctypes.c_int
    return poll


_poll_holding_gil = _libc_poll() if hasattr(select, "poll") else None


class _Probe:
    """What the pool keeps per connection to check it: a watch on its socket, and whether the
    server announced its end (a FATAL error received while idle)."""

    __slots__ = ("fatal", "ready")

    #: ``ready(0)``: something to read (truthy), or nothing (falsy), without waiting
    ready: Callable[[int], Any]

    def __init__(self, conn: AnyConnection, hold_gil: bool) -> None:
        self.fatal = False
        if hold_gil and _poll_holding_gil is not None:
            pollfd = _PollFd(conn.pgconn.socket, select.POLLIN | select.POLLPRI, 0)
            # poll(fds, 1, timeout): byref() keeps the structure alive as long as the partial
            self.ready = functools.partial(_poll_holding_gil, ctypes.byref(pollfd), 1)
        elif hasattr(select, "poll"):
            poller = select.poll()
            poller.register(conn.pgconn.socket, select.POLLIN | select.POLLPRI)
            self.ready = poller.poll
        else:  # pragma: no cover - Windows
            fd = conn.pgconn.socket

            def ready(timeout: int) -> list[Any]:
                return select.select([fd], [], [], timeout)[0]

            self.ready = ready
        conn.add_notice_handler(self._on_notice)

    def _on_notice(self, diag: Diagnostic) -> None:
        if (diag.severity_nonlocalized or diag.severity) in _FATAL:
            self.fatal = True


def make_probe(conn: AnyConnection, hold_gil: bool) -> object:
    """A probe watching the connection's socket for input (kept in the connection's slot).

    ``hold_gil``: poll through ctypes without releasing the GIL, for the threaded pool. The
    asyncio pool's probe uses ``select.poll``, which costs less per call and whose release of
    the GIL costs nothing when the event loop's thread is the only one running.
    """
    return _Probe(conn, hold_gil)


def is_alive(conn: AnyConnection, probe: Any) -> bool:
    """False if the server closed the connection, announced it would, or it is broken."""
    if not probe.ready(0):  # the hot path: nothing arrived while the connection was idle
        return not probe.fatal
    return _is_alive_after_input(conn, probe)


def _is_alive_after_input(conn: AnyConnection, probe: _Probe) -> bool:
    ready = probe.ready
    # a terminated backend sends its error, then end-of-file: the first read takes the
    # message, the socket stays readable, the second read meets the end of the stream
    if not _consume(conn, probe):
        return False
    for _ in range(_MAX_READS - 1):
        if not ready(0):
            return not probe.fatal
        if not _consume(conn, probe):
            return False
    return conn.pgconn.status == _OK and not probe.fatal


def _consume(conn: AnyConnection, probe: _Probe) -> bool:
    pgconn = conn.pgconn
    if pgconn.status != _OK:
        return False
    try:
        pgconn.consume_input()
        # parse what arrived (notifications stay queued for psycopg): an error received
        # while idle goes to the notice handlers, where a FATAL one sets probe.fatal
        pgconn.is_busy()
    except psycopg.OperationalError:
        return False
    return pgconn.status == _OK and not probe.fatal
