# WARNING: generated from pgpoolkit/aio/transaction_cursor.py by tools/async_to_sync.py:
# edit the source, not this file.
"""TransactionCursor: a cursor of a pooled connection, with the API of psycopg's Cursor.

``pgpoolkit/transaction_cursor.py`` is generated from ``pgpoolkit/aio/transaction_cursor.py`` by
``tools/async_to_sync.py``: edit the aio one.

Each ``execute`` runs through the client and its policy (it may bind the client to a server
connection and release it after); the results stay readable after the release, as psycopg keeps
them on the client. ``copy()`` and ``stream()`` keep the server connection for their block.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import psycopg
from psycopg.abc import Params, Query

from ._session_state import PLAIN, SessionChange, StatementInfo, inspect_query, merge_info
from .errors import PolicyViolation
from .policies import Event

if TYPE_CHECKING:
    from .transaction_client import TransactionClient

__all__ = ["TransactionCursor"]


class TransactionCursor:
    """A cursor of a pooled connection: each execute runs through the client (and its
    policy); the results stay readable after the server connection is released.

    A server-side (named) cursor lives on the server connection, in its transaction: it is
    read while the client holds that connection, and reading it after the transaction ended
    raises PolicyViolation instead of touching a connection another client may hold now. A
    ``withhold=True`` cursor outlives its transaction: session state, as DECLARE WITH HOLD.
    """

    __slots__ = ("_args", "_attrs", "_client", "_closed", "_cursor", "_info", "_kwargs", "_name")

    def __init__(
        self, client: TransactionClient, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._client = client
        self._args = args
        self._kwargs = kwargs
        self._cursor: Any = None
        self._closed = False
        #: attributes set by the user (itersize, arraysize, row_factory...), for every cursor
        #: this one opens on a server connection
        self._attrs: dict[str, Any] = {}
        #: the server-side cursor's name ("": a client-side cursor); psycopg takes it first
        self._name: str = (args[0] if args else kwargs.get("name")) or ""
        #: what executing through this cursor adds to a statement's own effect
        self._info = (
            StatementInfo(frozenset((SessionChange.HOLD_CURSOR,)), False)
            if self._name and kwargs.get("withhold")
            else PLAIN
        )

    def _open(self, info: StatementInfo) -> Any:
        if self._closed:
            raise psycopg.InterfaceError("the cursor is closed")
        if self._info is not PLAIN:
            info = merge_info(info, self._info)
        client = self._client
        conn = client._server_for(Event.STATEMENT, info)
        cursor = self._cursor
        if cursor is None or cursor.connection is not conn:
            if cursor is not None and self._name:
                # executed again on another server connection: the cursor it declared went
                # with its transaction; declare it anew here, never touching the old one
                cursor._close()
            try:
                self._cursor = cursor = conn.cursor(*self._args, **self._kwargs)
                for name, value in self._attrs.items():
                    setattr(cursor, name, value)
            except BaseException:
                client._done()
                raise
        return cursor

    def execute(self, query: Query, params: Params | None = None, **kwargs: Any) -> Any:
        cursor = self._open(inspect_query(query))
        try:
            cursor.execute(query, params, **kwargs)
        finally:
            self._client._done()
        return self

    def executemany(self, query: Query, params_seq: Any, **kwargs: Any) -> None:
        cursor = self._open(inspect_query(query))
        try:
            cursor.executemany(query, params_seq, **kwargs)
        finally:
            self._client._done()

    def stream(self, query: Query, params: Params | None = None, **kwargs: Any
                     ) -> Iterator[Any]:
        cursor = self._open(inspect_query(query))
        self._client._holds += 1
        try:
            yield from cursor.stream(query, params, **kwargs)
        finally:
            self._client._holds -= 1
            self._client._done()

    def copy(self, statement: Query, params: Params | None = None, **kwargs: Any
             ) -> _CopyBlock:
        return _CopyBlock(self, statement, params, kwargs)

    def fetchone(self) -> Any:
        if self._name:
            return self._fetch("fetchone")
        return self._result().fetchone()

    def fetchmany(self, size: int = 0) -> list[Any]:
        if self._name:
            return cast("list[Any]", self._fetch("fetchmany", size))
        return cast("list[Any]", self._result().fetchmany(size))

    def fetchall(self) -> list[Any]:
        if self._name:
            return cast("list[Any]", self._fetch("fetchall"))
        return cast("list[Any]", self._result().fetchall())

    def scroll(self, value: int, mode: str = "relative") -> None:
        if self._name:
            self._fetch("scroll", value, mode)
        else:
            self._result().scroll(value, mode)

    def _fetch(self, method: str, *args: Any) -> Any:
        """Read a server-side cursor: a round trip on the client's server connection."""
        client = self._client
        client._enter()
        try:
            return getattr(self._server_side(), method)(*args)
        finally:
            client._leave()

    def __iter__(self) -> Iterator[Any]:
        if self._name:
            return self._iter_server_side()
        rows = iter(self._result())
        return cast("Iterator[Any]", rows)

    def _iter_server_side(self) -> Iterator[Any]:
        while True:
            rows = self._fetch("fetchmany", self._server_side().itersize)
            if not rows:
                return
            yield from rows

    def _result(self) -> Any:
        cursor = self._cursor
        if cursor is None:
            raise psycopg.ProgrammingError("no result available: execute a query first")
        return cursor

    def _server_side(self) -> Any:
        """The server-side cursor, to read it on the server connection it lives on."""
        cursor = self._result()
        if not self._owned():
            policy = self._client._policy
            raise PolicyViolation(
                f"{policy.name} pooling mode: the server-side cursor {self._name!r} ended with "
                "its transaction, and this client gave its server connection back: read it "
                "inside the transaction, or declare it with withhold=True"
            )
        return cursor

    def _owned(self) -> bool:
        """The server connection the cursor lives on is still this client's."""
        slot = self._client._slot
        return slot is not None and slot.conn is self._cursor.connection

    def close(self) -> None:
        self._closed = True
        cursor = self._cursor
        if cursor is None or cursor.closed:
            return
        if self._name and not self._owned():
            cursor._close()  # its server side is gone with the transaction: no round trip
            return
        if self._name:
            self._fetch("close")
        else:
            cursor.close()

    @property
    def closed(self) -> bool:
        return self._closed or (self._cursor is not None and bool(self._cursor.closed))

    def __enter__(self) -> TransactionCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        # description, rowcount, statusmessage, pgresult, nextset, scroll, row_factory...
        if name.startswith("__"):
            raise AttributeError(name)
        if self._cursor is None and name in self._attrs:
            return self._attrs[name]
        return getattr(self._result(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in TransactionCursor.__slots__:
            object.__setattr__(self, name, value)
            return
        self._attrs[name] = value
        if self._cursor is not None:
            setattr(self._cursor, name, value)


class _CopyBlock:
    """``cursor.copy()``: the client keeps its server connection until the COPY ends."""

    def __init__(
        self, cursor: TransactionCursor, statement: Query, params: Params | None,
        kwargs: dict[str, Any],
    ) -> None:
        self._cursor = cursor
        self._args = (statement, params)
        self._kwargs = kwargs
        self._block: Any = None

    def __enter__(self) -> Any:
        cursor = self._cursor._open(PLAIN)
        client = self._cursor._client
        client._holds += 1
        try:
            self._block = cursor.copy(*self._args, **self._kwargs)
            return self._block.__enter__()
        except BaseException:
            client._holds -= 1
            client._done()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> Any:
        client = self._cursor._client
        try:
            return self._block.__exit__(exc_type, exc_val, exc_tb)
        finally:
            client._holds -= 1
            client._done()
