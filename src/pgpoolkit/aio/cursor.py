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
from typing import TYPE_CHECKING, Any, TypeVar

from psycopg import AsyncServerCursor

if TYPE_CHECKING:
    from psycopg import AsyncCursor
    from psycopg.abc import Params, Query

    from .connection import AsyncPooledConnection

    _CursorBase = AsyncCursor[Any]
    _ServerCursorBase = AsyncServerCursor[Any]
else:
    _CursorBase = _ServerCursorBase = object

__all__ = ["AsyncWatchedCursor", "AsyncWatchedServerCursor", "watched"]

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


_watched: dict[type, type] = {}


def watched(factory: C) -> C:
    """The watched subclass of a cursor class (made once per class; same name and module, so
    that it shows as the class the user chose). Anything but a class is left as it is."""
    if not isinstance(factory, type):
        return factory
    cls = _watched.get(factory)
    if cls is None:
        if issubclass(factory, (AsyncWatchedCursor, AsyncWatchedServerCursor)):
            return factory
        server_side = issubclass(factory, AsyncServerCursor)
        mixin = AsyncWatchedServerCursor if server_side else AsyncWatchedCursor
        cls = type(
            factory.__name__,
            (mixin, factory),
            {
                "__slots__": (),
                "__module__": factory.__module__,
                "__qualname__": factory.__qualname__,
            },
        )
        _watched[factory] = cls
    return cls  # type: ignore[return-value]
