"""AsyncTransactionClient: a transaction- or statement-mode client with psycopg's API.

``pgpoolkit/transaction_client.py`` is generated from ``pgpoolkit/aio/transaction_client.py``
by ``tools/async_to_sync.py``: edit the aio one.

In transaction and statement modes, this is what ``pool.connect()`` returns and
``pool.connection()`` yields: a *client* of the pool with the API of psycopg's AsyncConnection
(session mode hands out a real psycopg connection: ``connection.py``; these modes will too). It
holds a server connection as its policy says (transaction mode: while a transaction is open;
statement mode: for one statement), reports every
event to the policy (``policies.py``) and carries out the answer: bind, release, pin, reset or
refuse. The client's own settings (autocommit, isolation level, read-only, deferrable) live on
the client and are applied to whichever server connection it is bound to.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import psycopg
from psycopg import AsyncConnection, AsyncCursor, IsolationLevel
from psycopg.abc import Params, Query
from psycopg.pq import TransactionStatus

from .._acompat import NO_GUARD, AGuard, NoGuard
from .._core import Slot
from .._session_state import (
    NOT_RESETTABLE,
    PLAIN,
    StatementInfo,
    inspect_query,
)
from ..errors import IdleInTransactionTimeout, PolicyViolation
from ..policies import Action, ClientState, Event, Policy
from .transaction_cursor import AsyncTransactionCursor

if TYPE_CHECKING:
    from .pool import AsyncPool

__all__ = ["AsyncTransactionClient"]

logger = logging.getLogger("pgpoolkit")

_IDLE = TransactionStatus.IDLE
_INTRANS = TransactionStatus.INTRANS
_UNKNOWN = TransactionStatus.UNKNOWN

#: session parameters the server reports to the client when they change (ParameterStatus):
#: a change the statement's text did not show (a function running SET ROLE or set_config, a
#: DO block) is caught by comparing them with the connection's values when it was opened
REPORTED_PARAMETERS = (
    b"is_superuser",
    b"session_authorization",
    b"application_name",
    b"client_encoding",
    b"DateStyle",
    b"IntervalStyle",
    b"TimeZone",
    b"standard_conforming_strings",
    b"default_transaction_read_only",
    b"search_path",  # reported by PostgreSQL 18 and later
)


def reported_parameters(conn: AsyncConnection[Any]) -> tuple[bytes | None, ...]:
    """The values of REPORTED_PARAMETERS as the server last reported them (no round trip)."""
    return tuple(map(conn.pgconn.parameter_status, REPORTED_PARAMETERS))


class AsyncTransactionClient:
    """A client of an :class:`AsyncPool`, used like a psycopg AsyncConnection."""

    __slots__ = (
        "__weakref__",
        "_aborted",
        "_blocks",
        "_closed",
        "_dirty",
        "_discard",
        "_guard",
        "_holds",
        "_pinned",
        "_policy",
        "_pool",
        "_releases_when_idle",
        "_settings",
        "_slot",
        "_statements",
        "_timeout",
        "_touched",
        "_transactions",
        "_unopened",
    )

    def __init__(self, pool: AsyncPool, timeout: float | None = None) -> None:
        self._pool = pool
        self._policy: Policy = pool.policy
        self._slot: Slot[AsyncConnection[Any]] | None = None
        #: made by pool.connection(), not opened yet: it opens on entering its block
        self._unopened = True
        self._closed = True  # until the pool opens it
        self._timeout = timeout
        #: the session was changed (SET, LISTEN...): reset it when the server connection goes
        self._dirty = False
        #: the session was changed in a way no reset undoes (LOAD): close the server connection
        self._discard = False
        self._pinned = False
        #: open blocks that must keep the server connection (transaction(), copy, pipeline)
        self._holds = 0
        #: the open transaction() blocks, outermost first
        self._blocks: list[_AsyncTransactionBlock] = []
        #: the settings the client chose (autocommit, isolation, read-only, deferrable), or None
        self._settings: tuple[Any, ...] | None = None
        self._statements = 0
        self._transactions = 0
        #: held while the client runs something on its server connection: the pool's
        #: idle_in_transaction_timeout only takes a transaction from a client that holds none
        self._guard: AGuard | NoGuard = AGuard() if pool.idle_in_transaction_timeout else NO_GUARD
        #: the client reached into the psycopg connection (handlers, notifies) or changed its
        #: settings: the pool restores and clears them on release
        self._touched = False
        #: why the client lost its transaction (idle_in_transaction_timeout), for its next use
        self._aborted: str | None = None
        self._releases_when_idle = pool._releases_when_idle
        self._settings = pool._new_client_settings

    # -- binding --------------------------------------------------------------------------------

    @property
    def state(self) -> ClientState:
        """Where the client stands: idle, bound, in transaction or pinned."""
        if self._slot is None:
            return ClientState.IDLE
        if self._pinned:
            return ClientState.PINNED
        if self._slot.conn.pgconn.transaction_status == _IDLE:
            return ClientState.BOUND
        return ClientState.IN_TRANSACTION

    def _enter(self) -> None:
        """Start using the server connection (end with ``_leave()`` or ``_done()``)."""
        if self._closed:
            raise self._closed_error()
        self._guard.acquire()
        if self._aborted is not None:
            message, self._aborted = self._aborted, None
            self._guard.release()
            raise IdleInTransactionTimeout(message)

    def _leave(self) -> None:
        self._guard.release()  # and notes the time, when idle transactions are watched

    async def _server_for(self, event: Event, info: StatementInfo = PLAIN) -> AsyncConnection[Any]:
        """The server connection to run ``event`` on, after asking the policy. The caller
        ends with ``_done()``."""
        self._enter()
        try:
            if info is not PLAIN:
                if info.begins:
                    await self._on(Event.BEGIN, "an explicit BEGIN")
                if info.changes:
                    await self._on(Event.SESSION_STATE, info.detail)
                    if info.changes & NOT_RESETTABLE:
                        self._discard = True
            slot = self._slot
            if slot is None:
                if event in self._pool._refused_when_idle:
                    raise PolicyViolation(self._policy.refusal(event, ""))
                slot = await self._bind()
            return slot.conn
        except BaseException:
            self._guard.release()  # _leave()
            raise

    async def _on(self, event: Event, detail: str) -> None:
        action = self._policy.decide(self.state, event, detail)
        if action is Action.REFUSE:
            raise PolicyViolation(self._policy.refusal(event, detail))
        if action is Action.RESET:
            self._dirty = True
        elif action is Action.PIN and not self._pinned:
            if self._slot is None:
                await self._bind()
            self._pinned = self._dirty = True
            self._pool._client_pinned(detail)

    async def _bind(self, timeout: float | None = None) -> Slot[AsyncConnection[Any]]:
        slot = await self._pool._acquire(timeout)
        if self._settings is not None:
            try:
                await _apply_settings(slot.conn, self._settings)
            except BaseException:
                await self._pool._release(slot)
                raise
        self._slot = slot
        return slot

    async def _unbind(self, checked: bool = False) -> None:
        """Give the server connection back (``checked``: the caller compared the reported
        session parameters already)."""
        slot = self._slot
        if slot is None:
            return
        self._slot = None
        dirty, pinned, discard = self._dirty, self._pinned, self._discard
        self._dirty = self._pinned = self._discard = False
        # nothing ran since the last check, nothing can have changed: no need to look
        if not dirty and not checked and self._statements and _reported_changed(slot):
            dirty = True
        statements, transactions = self._statements, self._transactions
        self._statements = self._transactions = 0
        settings = self._settings
        touched = self._touched or (settings is not None and settings != slot.settings)
        self._touched = False
        await self._pool._release(
            slot, dirty, touched, pinned, statements, transactions, discard
        )

    async def _done(self) -> None:
        """After a statement, commit or rollback: count it, and release if the policy says."""
        try:
            slot = self._slot
            if slot is None:
                return
            self._statements += 1
            if slot.conn.pgconn.transaction_status == _IDLE:
                self._transactions += 1
                if self._releases_when_idle and not self._pinned and not self._holds:
                    if not self._dirty and _reported_changed(slot):
                        await self._unseen_session_change()
                    if not self._pinned:
                        await self._unbind(checked=True)
        finally:
            self._guard.release()  # _leave(), inlined: this runs after every statement

    async def _unseen_session_change(self) -> None:
        """The server reported a session parameter changing, which no statement's text
        showed (a function calling set_config, SET ROLE in a DO block): the policy decides as
        for any session state change, except that it is too late to refuse it; whatever it
        decides, the change is reset before another client gets the server connection."""
        detail = "a session parameter changed, as the server reported"
        try:
            await self._on(Event.SESSION_STATE, detail)
        except PolicyViolation as ex:
            logger.warning(
                "pool %r: %s; it already ran: the session is reset now", self._pool.name, ex
            )
        self._dirty = True

    async def _abort_transaction(self, message: str) -> None:
        """Take the transaction away from a client idle in it too long (the pool's
        idle_in_transaction_timeout; the caller holds the guard): rolled back, the server
        connection released (kept if pinned), and the client told at its next use."""
        self._aborted = message
        slot = self._slot
        if slot is None:
            return
        # transaction() blocks are left as psycopg leaves them on an error (rolled back), so
        # that the connection is clean and reusable; the client's exit of the block then only
        # raises IdleInTransactionTimeout
        blocks, self._blocks = self._blocks, []
        for block in reversed(blocks):
            self._holds -= 1
            try:
                await block._abandon(message)
            except Exception as ex:  # the connection goes (below)
                logger.debug("pool %r: rollback of a block failed: %s", self._pool.name, ex)
        if self._pinned:
            try:
                await slot.conn.rollback()
            except Exception:  # a transaction() block is open: the connection must go
                self._pinned = False
                self._dirty = True
                await self._unbind()
        else:
            await self._unbind()

    # -- queries --------------------------------------------------------------------------------

    async def execute(
        self,
        query: Query,
        params: Params | None = None,
        *,
        prepare: bool | None = None,
        binary: bool = False,
    ) -> AsyncCursor[Any]:
        """Run a query and return a cursor with its result (psycopg's ``execute``). The result
        stays readable after the server connection is released."""
        info = inspect_query(query)
        conn: Any  # Any: psycopg's overloads split t-string templates (3.3) from other queries
        slot = self._slot
        if info is PLAIN and slot is not None:  # _server_for()'s common case, without the call
            self._enter()
            conn = slot.conn
        else:
            conn = await self._server_for(Event.STATEMENT, info)
        try:
            cursor: AsyncCursor[Any] = await conn.execute(
                query, params, prepare=prepare, binary=binary
            )
            return cursor
        finally:
            await self._done()

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        """A cursor running its queries through this client (``name=`` for a server-side
        cursor: it needs an open transaction and keeps the server connection while it runs)."""
        if self._closed:
            raise self._closed_error()
        return AsyncTransactionCursor(self, args, kwargs)

    def transaction(
        self, savepoint_name: str | None = None, force_rollback: bool = False
    ) -> _AsyncTransactionBlock:
        """A transaction block (a savepoint if one is already open): the client holds its
        server connection for the block."""
        return _AsyncTransactionBlock(self, savepoint_name, force_rollback)

    def pipeline(self) -> _AsyncHoldBlock:
        """A pipeline block: the client holds its server connection for the block."""
        return _AsyncHoldBlock(self, "pipeline")

    async def commit(self) -> None:
        self._enter()
        try:
            if self._slot is not None:
                await self._slot.conn.commit()
        finally:
            await self._done()

    async def rollback(self) -> None:
        self._enter()
        try:
            if self._slot is not None:
                await self._slot.conn.rollback()
        finally:
            await self._done()

    # -- the settings a client may change, kept on the client ------------------------------------

    def _setting(self, index: int) -> Any:
        if self._slot is not None:
            return _read_settings(self._slot.conn)[index]
        if self._settings is not None:
            return self._settings[index]
        return self._pool._client_defaults()[index]

    async def _change_setting(self, index: int, value: Any) -> None:
        if self._closed:
            raise self._closed_error()
        if index == 0 and not value:
            await self._on(Event.BEGIN, "autocommit = False")
        current = self._settings or (
            _read_settings(self._slot.conn) if self._slot else self._pool._client_defaults()
        )
        settings = (*current[:index], value, *current[index + 1 :])
        if self._slot is not None:
            await _apply_settings(self._slot.conn, settings)
        self._settings = settings

    @property
    def autocommit(self) -> bool:
        return bool(self._setting(0))

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        _no_set_async("autocommit")  # sync: self.set_autocommit(value)

    async def set_autocommit(self, value: bool) -> None:
        await self._change_setting(0, bool(value))

    @property
    def isolation_level(self) -> IsolationLevel | None:
        return cast("IsolationLevel | None", self._setting(1))

    @isolation_level.setter
    def isolation_level(self, value: IsolationLevel | None) -> None:
        _no_set_async("isolation_level")  # sync: self.set_isolation_level(value)

    async def set_isolation_level(self, value: IsolationLevel | None) -> None:
        await self._change_setting(1, None if value is None else IsolationLevel(value))

    @property
    def read_only(self) -> bool | None:
        return cast("bool | None", self._setting(2))

    @read_only.setter
    def read_only(self, value: bool | None) -> None:
        _no_set_async("read_only")  # sync: self.set_read_only(value)

    async def set_read_only(self, value: bool | None) -> None:
        await self._change_setting(2, None if value is None else bool(value))

    @property
    def deferrable(self) -> bool | None:
        return cast("bool | None", self._setting(3))

    @deferrable.setter
    def deferrable(self, value: bool | None) -> None:
        _no_set_async("deferrable")  # sync: self.set_deferrable(value)

    async def set_deferrable(self, value: bool | None) -> None:
        await self._change_setting(3, None if value is None else bool(value))

    # -- life cycle -----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once closed, or if the server connection it holds died."""
        return self._closed or (self._slot is not None and self._slot.conn.closed)

    @property
    def broken(self) -> bool:
        return self._slot is not None and self._slot.conn.broken

    @property
    def pool(self) -> AsyncPool:
        """The pool this client belongs to."""
        return self._pool

    async def close(self) -> None:
        """Give the server connection back to the pool (rolled back if a transaction is
        open, reset if the session was changed). Closing twice does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._unbind()
        finally:
            self._pool._clients.discard(self)

    def _closed_error(self) -> psycopg.OperationalError:
        if self._unopened:
            return psycopg.OperationalError(
                "this connection comes from pool.connection() and opens when its block is "
                "entered: use it as '[async] with pool.connection() as conn:', or call "
                "pool.connect() for a connection to keep"
            )
        return psycopg.OperationalError("the connection is closed")

    async def __aenter__(self) -> AsyncTransactionClient:
        if self._unopened:  # pool.connection(): open for the block
            await self._pool._open_client(self, self._timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        """As psycopg: commit if the block succeeded, roll back if it raised; then close."""
        if self._closed:
            return
        try:
            slot = self._slot
            if exc_type is None and slot is not None:
                status = slot.conn.pgconn.transaction_status
                if status != _IDLE and status != _UNKNOWN:  # a transaction is open
                    await self.commit()
        finally:
            # a failed commit or an exception: the pool rolls back what is still open
            await self.close()

    def __del__(self) -> None:
        # a client dropped without close(): give its server connection back all the same
        if not getattr(self, "_closed", True):
            self._pool._client_lost(self._slot, self._pinned)

    def __getattr__(self, name: str) -> Any:
        # the rest of psycopg's API (info, pgconn, adapters, notifies...) is the bound server
        # connection's; an unbound client has none to offer
        if name.startswith("__"):
            raise AttributeError(name)
        if self._closed:
            raise self._closed_error()
        self._touched = True  # handlers, notifies, adapters...: the pool cleans up after it
        if self._slot is None:
            if not hasattr(AsyncConnection, name):
                raise AttributeError(name)
            raise PolicyViolation(
                f"{self._policy.name} pooling mode: '{name}' belongs to a server connection "
                "and this client holds none between transactions: use it inside a "
                "transaction(), set it up in the pool's configure callback, or use "
                "mode='session'"
            )
        return getattr(self._slot.conn, name)

    def __dir__(self) -> Iterable[str]:
        return sorted(set(super().__dir__()) | set(dir(AsyncConnection)))

    def __repr__(self) -> str:
        state = "closed" if self._closed else self.state.value
        return (
            f"<{type(self).__name__} pool={self._pool.name!r} mode={self._policy.name} "
            f"[{state}] at 0x{id(self):x}>"
        )


class _AsyncHoldBlock:
    """A block during which the client keeps its server connection (pipeline)."""

    def __init__(self, client: AsyncTransactionClient, what: str) -> None:
        self._client = client
        self._what = what
        self._block: Any = None

    async def __aenter__(self) -> Any:
        conn = await self._client._server_for(Event.STATEMENT)
        return await self._enter_block(getattr(conn, self._what)())

    async def _enter_block(self, block: Any) -> Any:
        client = self._client
        client._holds += 1
        try:
            self._block = block
            entered = await block.__aenter__()
        except BaseException:
            client._holds -= 1
            await client._done()
            raise
        client._leave()  # idle inside the block counts as idle in transaction
        return entered

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> Any:
        client = self._client
        block, self._block = self._block, None
        if block is None:  # taken away with its transaction (idle_in_transaction_timeout)
            client._enter()  # raises IdleInTransactionTimeout, unless raised in the block
            client._leave()
            return None
        client._holds -= 1
        client._enter()  # raises if the transaction was taken away (idle too long)
        try:
            return await block.__aexit__(exc_type, exc_val, exc_tb)
        finally:
            await client._done()


class _AsyncTransactionBlock(_AsyncHoldBlock):
    """``conn.transaction()``: refused by statement mode before anything reaches the server."""

    def __init__(
        self, client: AsyncTransactionClient, savepoint_name: str | None, force_rollback: bool
    ) -> None:
        super().__init__(client, "transaction")
        self._savepoint_name = savepoint_name
        self._force_rollback = force_rollback

    async def __aenter__(self) -> Any:
        client = self._client
        await client._on(Event.BEGIN, "transaction()")
        conn = await client._server_for(Event.BEGIN)
        client._blocks.append(self)  # before the guard is left: the pool may abort it then
        try:
            return await self._enter_block(
                conn.transaction(self._savepoint_name, self._force_rollback)
            )
        except BaseException:
            if self in client._blocks:
                client._blocks.remove(self)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> Any:
        blocks = self._client._blocks
        if blocks and blocks[-1] is self:
            blocks.pop()
        return await super().__aexit__(exc_type, exc_val, exc_tb)

    async def _abandon(self, message: str) -> None:
        """Roll the block back as an error leaving it would (the pool's
        idle_in_transaction_timeout; the caller holds the client's guard)."""
        block, self._block = self._block, None
        if block is not None:
            error = IdleInTransactionTimeout(message)
            await block.__aexit__(type(error), error, None)


def _read_settings(conn: AsyncConnection[Any]) -> tuple[Any, ...]:
    return (conn.autocommit, conn.isolation_level, conn.read_only, conn.deferrable)


async def _apply_settings(conn: AsyncConnection[Any], settings: tuple[Any, ...]) -> None:
    """Give a server connection these settings (autocommit, isolation level, read-only,
    deferrable), which psycopg keeps: no round trip.

    psycopg's setters cost 1.5 µs each (its lock, a generator, a check of the transaction
    status), twice per statement in transaction mode if a client's settings differ from the
    pool's. On an idle connection outside a pipeline, which is where the pool calls this, they
    come down to what is written here; anywhere else the setters run, and raise as they should.
    """
    try:
        current = (conn._autocommit, conn._isolation_level, conn._read_only, conn._deferrable)
        direct = (
            conn.pgconn.transaction_status == _IDLE
            and not conn._pipeline
            and conn._begin_statement is not None
        )
    except AttributeError:  # a psycopg whose internals moved: its public setters only
        current, direct = _read_settings(conn), False
    if current == settings:
        return
    autocommit, isolation_level, read_only, deferrable = settings
    if direct:
        conn._autocommit = autocommit
        if current[1:] != settings[1:]:
            conn._isolation_level = isolation_level
            conn._read_only = read_only
            conn._deferrable = deferrable
            conn._begin_statement = b""  # psycopg's cached BEGIN, rebuilt from the above
        return
    if conn.autocommit is not autocommit:
        await conn.set_autocommit(autocommit)
    if conn.isolation_level is not isolation_level:
        await conn.set_isolation_level(isolation_level)
    if conn.read_only is not read_only:
        await conn.set_read_only(read_only)
    if conn.deferrable is not deferrable:
        await conn.set_deferrable(deferrable)


def _reported_changed(slot: Slot[AsyncConnection[Any]]) -> bool:
    """The server reported a session parameter changing since the connection was opened."""
    try:  # reported_parameters(), inlined: this runs at every release
        now = tuple(map(slot.conn.pgconn.parameter_status, REPORTED_PARAMETERS))
        return bool(now != slot.defaults[4])
    except Exception:  # a closed connection: it will not be reused anyway
        return False


def _no_set_async(attribute: str) -> None:  # async-only
    raise AttributeError(  # async-only
        f"the {attribute!r} property is read-only on async connections: "  # async-only
        f"please use 'await .set_{attribute}()' instead"  # async-only
    )  # async-only
