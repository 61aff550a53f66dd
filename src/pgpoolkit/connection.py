# WARNING: generated from pgpoolkit/aio/connection.py by tools/async_to_sync.py:
# edit the source, not this file.
"""PooledConnection: a pool client with the API of psycopg's Connection.

``pgpoolkit/connection.py`` is generated from ``pgpoolkit/aio/connection.py``
by ``tools/async_to_sync.py``: edit the aio one.

A pooled connection is what ``pool.connect()`` returns and ``pool.connection()`` yields. Code
written for ``psycopg.Connection.connect()`` runs on it unchanged: the methods below are
psycopg's, and any other attribute (``info``, ``adapters``, ``notifies``, ``pipeline``, ...) is
the bound server connection's. ``close()`` gives the server connection back to the pool.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import psycopg
from psycopg import Connection, Cursor, IsolationLevel, Transaction
from psycopg.abc import Params, Query
from psycopg.pq import TransactionStatus

from ._core import Slot

if TYPE_CHECKING:
    from .pool import Pool

__all__ = ["PooledConnection"]


class PooledConnection:
    """A client of an :class:`Pool` (threads), used like a psycopg Connection."""

    __slots__ = ("__weakref__", "_closed", "_conn", "_pool", "_slot")

    def __init__(self, pool: Pool, slot: Slot[Connection[Any]]) -> None:
        self._pool = pool
        self._slot = slot
        self._conn = slot.conn
        self._closed = False

    def _server(self) -> Connection[Any]:
        if self._closed:
            raise psycopg.OperationalError("the connection is closed")
        return self._conn

    # -- queries --------------------------------------------------------------------------------

    def execute(
        self,
        query: Query,
        params: Params | None = None,
        *,
        prepare: bool | None = None,
        binary: bool = False,
    ) -> Cursor[Any]:
        """Run a query and return a cursor to read its result (psycopg's
        ``Connection.execute``)."""
        if self._closed:
            raise psycopg.OperationalError("the connection is closed")
        # cast: psycopg's overloads split t-string templates (3.3) from other queries
        return self._conn.execute(cast(Any, query), params, prepare=prepare, binary=binary)

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        """A cursor on the server connection (client-side, or server-side with ``name=``)."""
        return self._server().cursor(*args, **kwargs)

    def transaction(
        self, savepoint_name: str | None = None, force_rollback: bool = False
    ) -> AbstractContextManager[Transaction]:
        """A transaction block (a savepoint if one is already open)."""
        return self._server().transaction(savepoint_name, force_rollback)

    def commit(self) -> None:
        self._server().commit()

    def rollback(self) -> None:
        self._server().rollback()

    # -- the settings a client may change: the pool restores them on return ---------------------

    @property
    def autocommit(self) -> bool:
        return self._server().autocommit

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        self._server().autocommit = value

    def set_autocommit(self, value: bool) -> None:
        self._server().set_autocommit(value)

    @property
    def isolation_level(self) -> IsolationLevel | None:
        return self._server().isolation_level

    @isolation_level.setter
    def isolation_level(self, value: IsolationLevel | None) -> None:
        self._server().isolation_level = value

    def set_isolation_level(self, value: IsolationLevel | None) -> None:
        self._server().set_isolation_level(value)

    @property
    def read_only(self) -> bool | None:
        return self._server().read_only

    @read_only.setter
    def read_only(self, value: bool | None) -> None:
        self._server().read_only = value

    def set_read_only(self, value: bool | None) -> None:
        self._server().set_read_only(value)

    @property
    def deferrable(self) -> bool | None:
        return self._server().deferrable

    @deferrable.setter
    def deferrable(self, value: bool | None) -> None:
        self._server().deferrable = value

    def set_deferrable(self, value: bool | None) -> None:
        self._server().set_deferrable(value)

    # -- life cycle -----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once closed (returned to the pool), or if the server connection died."""
        return self._closed or self._conn.closed

    @property
    def broken(self) -> bool:
        return self._conn.broken

    @property
    def pool(self) -> Pool:
        """The pool this client belongs to."""
        return self._pool

    def close(self) -> None:
        """Give the server connection back to the pool (rolled back if a transaction is
        open). Closing twice does nothing."""
        if self._closed:
            return
        self._closed = True
        self._pool._release(self._slot)

    def __enter__(self) -> PooledConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        """As psycopg: commit if the block succeeded, roll back if it raised; then close."""
        if self._closed:
            return
        try:
            if exc_type is None and not self._conn.closed:
                self._conn.commit()
        finally:
            # a failed commit or an exception: the pool rolls back what is still open
            self.close()

    def __getattr__(self, name: str) -> Any:
        # everything else of psycopg's API (info, pgconn, adapters, notifies, pipeline, ...)
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._server(), name)

    def __dir__(self) -> Iterable[str]:
        return sorted(set(super().__dir__()) | set(dir(self._conn)))

    def __repr__(self) -> str:
        status = TransactionStatus(self._conn.pgconn.transaction_status)
        state = "closed" if self._closed else status.name
        return (
            f"<{type(self).__name__} pool={self._pool.name!r} mode={self._pool.policy.name} "
            f"[{state}] at 0x{id(self):x}>"
        )
