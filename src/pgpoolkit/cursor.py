# WARNING: generated from pgpoolkit/aio/cursor.py by tools/async_to_sync.py:
# edit the source, not this file.
"""The cursors of a pooled connection: psycopg's own cursor classes, watched.

``pgpoolkit/cursor.py`` is generated from ``pgpoolkit/aio/cursor.py`` by
``tools/async_to_sync.py``: edit the aio one.

A pooled connection's cursors are instances of the classes its ``cursor_factory`` and
``server_cursor_factory`` name (psycopg's, or the user's own), each with one addition: before a
query runs, the connection hears of it (``PooledConnection._saw``), so that it counts the
statement and sees the session state the statement leaves (SET, LISTEN, temporary tables...,
reset before the next client gets the server connection) or refuses it, as the policy says. For
a query seen before that is one lookup in a cache per query text.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from psycopg import ServerCursor

if TYPE_CHECKING:
    from psycopg import Cursor
    from psycopg.abc import Params, Query

    from .connection import PooledConnection

    _CursorBase = Cursor[Any]
    _ServerCursorBase = ServerCursor[Any]
else:
    _CursorBase = _ServerCursorBase = object

__all__ = ["WatchedCursor", "WatchedServerCursor", "watched"]

C = TypeVar("C")


class WatchedCursor(_CursorBase):
    """Mixed into a client-side cursor class: each query is shown to the connection first."""

    __slots__ = ()
    _conn: PooledConnection[Any]

    def execute(self, query: Any, params: Params | None = None, **kwargs: Any) -> Any:
        self._conn._saw(query)
        return super().execute(query, params, **kwargs)

    def executemany(self, query: Query, params_seq: Any, **kwargs: Any) -> None:
        self._conn._saw(query)
        super().executemany(query, params_seq, **kwargs)

    def stream(
        self, query: Query, params: Params | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        self._conn._saw(query)
        yield from super().stream(query, params, **kwargs)

    def copy(self, statement: Query, params: Params | None = None, **kwargs: Any) -> Any:
        self._conn._saw(statement)
        return super().copy(statement, params, **kwargs)


class WatchedServerCursor(_ServerCursorBase):
    """Mixed into a server-side cursor class: its DECLARE is shown to the connection first (a
    ``withhold=True`` cursor outlives its transaction: session state)."""

    __slots__ = ()
    _conn: PooledConnection[Any]

    def execute(self, query: Any, params: Params | None = None, **kwargs: Any) -> Any:
        self._conn._saw(query, self.withhold)
        return super().execute(query, params, **kwargs)


_watched: dict[type, type] = {}


def watched(factory: C) -> C:
    """The watched subclass of a cursor class (made once per class; same name and module, so
    that it shows as the class the user chose). Anything but a class is left as it is."""
    if not isinstance(factory, type):
        return factory
    cls = _watched.get(factory)
    if cls is None:
        if issubclass(factory, (WatchedCursor, WatchedServerCursor)):
            return factory
        server_side = issubclass(factory, ServerCursor)
        mixin = WatchedServerCursor if server_side else WatchedCursor
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
