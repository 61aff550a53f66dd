"""Every use of psycopg's private attributes, in one place.

A pooled connection (``connection.py``) is a real psycopg connection object that borrows the
libpq connection (``pgconn``) and the prepared-statement manager (``_prepared``) of the server
connection it is bound to: psycopg has no public way to do that, nor to list or drop a
connection's handlers, nor to make it forget prepared statements that a ``DISCARD ALL`` dropped
on the server. Those reaches into psycopg live here, and ``tests/test_psycopg_internals.py``
fails loudly on a psycopg release that moved any of them (supported: psycopg 3.2 and 3.3).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn
from weakref import ref

import psycopg
from psycopg import BaseConnection
from psycopg.adapt import AdaptersMap
from psycopg.pq import ConnStatus, TransactionStatus

if TYPE_CHECKING:
    from psycopg.pq.abc import PGconn

__all__ = [
    "RETURNED",
    "UNOPENED",
    "attach",
    "check_connection_ok",
    "detach",
    "drop_client_handlers",
    "forget_prepared",
    "prepared_settings",
    "restore_prepared_settings",
    "server_handlers",
]


class DetachedPGconn:
    """What a pooled connection holds in place of a libpq connection when it holds none.

    psycopg sees a closed connection (``status`` is BAD): ``closed`` is True and every
    operation raises ``OperationalError``, with a message that says why. A cursor made while
    the connection was bound keeps the server's libpq connection, but psycopg reaches the
    socket through its connection (``conn.wait``), so it cannot run on a server connection that
    went back to the pool.
    """

    __slots__ = ("message", "notice_handler", "notify_handler")

    status = ConnStatus.BAD
    transaction_status = TransactionStatus.UNKNOWN
    pipeline_status = 0

    def __init__(self, message: str) -> None:
        self.message = message

    def __getattr__(self, name: str) -> NoReturn:
        raise psycopg.OperationalError(self.message)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.message}>"


#: a connection from ``pool.connection()`` before its block is entered
UNOPENED: Any = DetachedPGconn(
    "this connection comes from pool.connection() and opens when its block is entered: use "
    "it as '[async] with pool.connection() as conn:', or call pool.connect() for a "
    "connection to keep"
)
#: a pooled connection after close(): its server connection went back to the pool
RETURNED: Any = DetachedPGconn("the connection is closed (it went back to its pool)")


def check_connection_ok(self: BaseConnection[Any]) -> None:
    """psycopg's ``_check_connection_ok``, saying why a pooled connection holds no server
    connection (psycopg's own message is only "the connection is closed")."""
    pgconn: Any = self.pgconn
    if pgconn.status == ConnStatus.OK:
        return
    if type(pgconn) is DetachedPGconn:
        raise psycopg.OperationalError(pgconn.message)
    BaseConnection._check_connection_ok(self)


def server_handlers(pgconn: PGconn) -> tuple[Any, Any]:
    """The notice and notify callbacks psycopg set on a server connection's libpq connection,
    to put back when a client that borrowed it lets go."""
    return (pgconn.notice_handler, pgconn.notify_handler)


def attach(client: BaseConnection[Any], server: BaseConnection[Any], first: bool) -> None:
    """Bind ``client`` to ``server``'s libpq connection and prepared statements.

    Notices and notifications the server sends go to the client from now on (its handlers,
    its ``notifies()``). On the ``first`` bind the client takes the server connection's
    settings, factories and adapters as its starting point (those the pool's ``kwargs`` and
    ``configure`` gave it): what the client changes after that is its own.
    """
    pgconn = server.pgconn
    client.pgconn = pgconn
    client._prepared = server._prepared
    wself = ref(client)
    pgconn.notice_handler = partial(BaseConnection._notice_handler, wself)
    pgconn.notify_handler = partial(BaseConnection._notify_handler, wself)
    if first:
        client.row_factory = server.row_factory  # type: ignore[attr-defined]
        client.cursor_factory = server.cursor_factory  # type: ignore[attr-defined]
        client.server_cursor_factory = server.server_cursor_factory  # type: ignore[attr-defined]
        client._autocommit = server._autocommit
        client._isolation_level = server._isolation_level
        client._read_only = server._read_only
        client._deferrable = server._deferrable
        client._begin_statement = server._begin_statement
        client._adapters = AdaptersMap(server.adapters)
        client._closed = False


def detach(client: BaseConnection[Any], standin: Any, handlers: tuple[Any, Any]) -> None:
    """Take the libpq connection away from ``client`` (leaving ``standin``) and give the
    server connection its own notice and notify callbacks back."""
    pgconn = client.pgconn
    client.pgconn = standin
    pgconn.notice_handler, pgconn.notify_handler = handlers


def prepared_settings(conn: BaseConnection[Any]) -> tuple[int | None, int]:
    """A server connection's prepare_threshold and prepared_max, which psycopg keeps on its
    prepared-statement manager: a client borrowing the manager can change them."""
    prepared = conn._prepared
    return (prepared.prepare_threshold, prepared.prepared_max)


def restore_prepared_settings(conn: BaseConnection[Any], saved: tuple[int | None, int]) -> None:
    prepared = conn._prepared
    if (prepared.prepare_threshold, prepared.prepared_max) != saved:
        prepared.prepare_threshold, prepared.prepared_max = saved


def forget_prepared(conn: BaseConnection[Any]) -> None:
    """DISCARD ALL dropped the backend's prepared statements: psycopg must forget them too.

    psycopg clears its cache when it sees DISCARD ALL, but only the first time it runs that
    query's text (later runs hit its cache of seen queries), so a statement it prepared after
    the first reset would be used again after the next one: "prepared statement does not
    exist". The pool clears the cache itself, with nothing left to deallocate.
    """
    prepared = conn._prepared
    prepared.clear()
    prepared._to_flush.clear()


def drop_client_handlers(conn: BaseConnection[Any], notice_handlers: tuple[Any, ...]) -> None:
    """What a client left on a psycopg connection goes with it: its notify and notice
    handlers (they would hear the next clients' notifications and notices) and the
    notifications received for its LISTEN that it did not read."""
    notify_handlers = getattr(conn, "_notify_handlers", None)
    if notify_handlers:
        notify_handlers.clear()
    handlers = getattr(conn, "_notice_handlers", None)
    if handlers is not None and len(handlers) != len(notice_handlers):
        handlers[:] = notice_handlers
    backlog = getattr(conn, "_notifies_backlog", None)
    if backlog:
        backlog.clear()
