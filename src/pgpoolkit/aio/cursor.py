"""The cursors of a pooled connection: psycopg's own cursor classes, watched.

``pgpoolkit/cursor.py`` is generated from ``pgpoolkit/aio/cursor.py`` by
``tools/async_to_sync.py``: edit the aio one.

A pooled connection's cursors are instances of the classes its ``cursor_factory`` and
``server_cursor_factory`` name (psycopg's, or the user's own), each with one addition: before a
query runs, the connection hears of it (``AsyncPooledConnection._saw``), so that it counts the
statement and sees the session state the statement leaves (SET, LISTEN, temporary tables...,
reset before the next client gets the server connection) or refuses it, as the policy says. For
a query seen before that is one lookup in a cache per query text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from psycopg import AsyncServerCursor

from .._psycopg import close_locally, cursor_pgconn, forget_declared, point_at
from .._session_state import HELD, inspect_query, merge_info
from ..errors import PolicyViolation
from ..policies import Event

STATEMENT = Event.STATEMENT
#: what closing a WITH HOLD cursor does to the session: it may undo a pin
_CLOSE_HELD = inspect_query("CLOSE held")

if TYPE_CHECKING:
    from psycopg import AsyncCursor
    from psycopg.abc import Params, Query

    from .connection import AsyncPooledConnection
    from .transaction_mode import AsyncTransactionModeConnection

    _CursorBase = AsyncCursor[Any]
    _ServerCursorBase = AsyncServerCursor[Any]
else:
    _CursorBase = _ServerCursorBase = object

__all__ = [
    "AsyncBindingCursor",
    "AsyncBindingServerCursor",
    "AsyncWatchedCursor",
    "AsyncWatchedServerCursor",
    "watched",
]

C = TypeVar("C")


class AsyncWatchedCursor(_CursorBase):
    """Mixed into a client-side cursor class: each query is shown to the connection first."""

    __slots__ = ()
    _conn: AsyncPooledConnection[Any]

    async def execute(self, query: Any, params: Params | None = None, **kwargs: Any) -> Any:
        self._conn._saw(query)
        return await super().execute(query, params, **kwargs)

    async def executemany(self, query: Query, params_seq: Any, **kwargs: Any) -> None:
        self._conn._saw(query)
        await super().executemany(query, params_seq, **kwargs)

    async def stream(
        self, query: Query, params: Params | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        self._conn._saw(query)
        async for row in super().stream(query, params, **kwargs):
            yield row

    def copy(self, statement: Query, params: Params | None = None, **kwargs: Any) -> Any:
        self._conn._saw(statement)
        return super().copy(statement, params, **kwargs)


class AsyncWatchedServerCursor(_ServerCursorBase):
    """Mixed into a server-side cursor class: its DECLARE is shown to the connection first (a
    ``withhold=True`` cursor outlives its transaction: session state)."""

    __slots__ = ()
    _conn: AsyncPooledConnection[Any]

    async def execute(self, query: Any, params: Params | None = None, **kwargs: Any) -> Any:
        self._conn._saw(query, self.withhold)
        return await super().execute(query, params, **kwargs)


class AsyncBindingCursor(_CursorBase):
    """Mixed into a client-side cursor class in transaction and statement modes: each query
    takes a server connection for the client first (if it holds none), runs on it, and lets
    the client give it back when the server reports the transaction over. ``stream()`` and
    ``copy()`` keep it for their iteration or block. The cursor's results stay readable after."""

    __slots__ = ()
    _conn: AsyncTransactionModeConnection[Any]

    async def execute(self, query: Any, params: Params | None = None, **kwargs: Any) -> Any:
        conn = self._conn
        await conn._use(inspect_query(query), STATEMENT, "", query, params)
        try:
            point_at(self, conn.pgconn)
            result = await super().execute(query, params, **kwargs)
            if conn._replay is not None:
                conn._kept_setting()
            return result
        finally:
            await conn._done()

    async def executemany(self, query: Query, params_seq: Any, **kwargs: Any) -> None:
        conn = self._conn
        await conn._use(inspect_query(query))
        try:
            point_at(self, conn.pgconn)
            await super().executemany(query, params_seq, **kwargs)
        finally:
            await conn._done()

    async def stream(
        self, query: Query, params: Params | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        conn = self._conn
        await conn._use(inspect_query(query))
        conn._hold(1)
        try:
            point_at(self, conn.pgconn)
            async for row in super().stream(query, params, **kwargs):
                yield row
        finally:
            conn._hold(-1)
            await conn._done()

    @asynccontextmanager
    async def copy(
        self, statement: Query, params: Params | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        conn = self._conn
        await conn._use(inspect_query(statement))
        conn._hold(1)
        try:
            point_at(self, conn.pgconn)
            async with super().copy(statement, params, **kwargs) as copy:
                yield copy
        finally:
            conn._hold(-1)
            await conn._done()


class AsyncBindingServerCursor(_ServerCursorBase):
    """Mixed into a server-side cursor class in transaction and statement modes. A named
    cursor lives in its transaction, on one server connection: it is read while the client
    holds that connection, and reading it after the transaction ended raises PolicyViolation
    instead of touching a server connection another client may hold now. Executed again, it
    is declared anew on whichever server connection the client holds then."""

    __slots__ = ()
    _conn: AsyncTransactionModeConnection[Any]

    async def execute(self, query: Any, params: Params | None = None, **kwargs: Any) -> Any:
        conn = self._conn
        info = inspect_query(query)
        if self.withhold:
            info = merge_info(info, HELD)
        await conn._use(info)
        try:
            if cursor_pgconn(self) is not conn.pgconn:
                forget_declared(self)  # it went with the transaction that declared it
                point_at(self, conn.pgconn)
            return await super().execute(query, params, **kwargs)
        finally:
            await conn._done()

    def _check_alive(self) -> None:
        conn = self._conn
        if not conn._box or cursor_pgconn(self) is not conn.pgconn:
            conn._check_connection_ok()  # closed: psycopg's error
            raise PolicyViolation(
                f"{conn._owner.policy.name} pooling mode: the server-side cursor "
                f"{self.name!r} went with the transaction that declared it (the client gave "
                "its server connection back): read it inside that transaction, or declare "
                "it withhold=True, which pins the client to its server connection"
            )

    async def fetchone(self) -> Any:
        self._check_alive()
        return await super().fetchone()

    async def fetchmany(self, size: int = 0) -> list[Any]:
        self._check_alive()
        return await super().fetchmany(size)

    async def fetchall(self) -> list[Any]:
        self._check_alive()
        return await super().fetchall()

    async def scroll(self, value: int, mode: str = "relative") -> None:
        self._check_alive()
        await super().scroll(value, mode)

    async def __anext__(self) -> Any:
        self._check_alive()
        return await super().__anext__()

    async def close(self) -> None:
        conn = self._conn
        if not conn._box or cursor_pgconn(self) is not conn.pgconn:
            close_locally(self)  # nothing left on any server connection the client holds
            return
        if not self.withhold or self.closed:
            await super().close()
            return
        # psycopg sends CLOSE itself: seen as the statement it is, it may unpin the client
        await conn._use(_CLOSE_HELD)
        try:
            await super().close()
        finally:
            await conn._done()


_watched: dict[tuple[type, type], type] = {}


def watched(factory: C, mixin: type, server_mixin: type) -> C:
    """The watched subclass of a cursor class: ``mixin`` (``server_mixin`` for a server-side
    cursor class) mixed in, made once per class and mixin, with the same name and module, so
    that it shows as the class the user chose. Anything but a class is left as it is."""
    if not isinstance(factory, type):
        return factory
    if issubclass(factory, AsyncServerCursor):
        mixin = server_mixin
    if issubclass(factory, mixin):
        return factory
    cls = _watched.get((factory, mixin))
    if cls is None:
        cls = type(
            factory.__name__,
            (mixin, factory),
            {
                "__slots__": (),
                "__module__": factory.__module__,
                "__qualname__": factory.__qualname__,
            },
        )
        _watched[factory, mixin] = cls
    return cls  # type: ignore[return-value]
