"""AsyncTransactionModeConnection: a pooled connection that borrows a server connection per
transaction (transaction mode) or per statement (statement mode).

``pgpoolkit/transaction_mode.py`` is generated from ``pgpoolkit/aio/transaction_mode.py`` by
``tools/async_to_sync.py``: edit the aio one.

Still a psycopg AsyncConnection (``connection.py``): between transactions it holds a stand-in
libpq connection (``_psycopg.BetweenTransactions``) that psycopg sees as open and idle, and
that raises ``PolicyViolation`` for anything that needs a server. Before a statement, a
``transaction()`` or ``pipeline()`` block or a two-phase transaction, the client asks its policy
(``policies.py``) and binds to a server connection of the pool; after it, when the server
reports no transaction open (PgBouncer's release rule) and nothing else holds it (another
thread's statement, a block, a stream or COPY, a pin), it gives it back, or, while no request
waits for one, parks it: it keeps it, clean and idle, until its next transaction or until the
pool takes it back for another client (``pool._reclaim``). A statement that
changes session state pins the client to its server connection, or is refused, as the policy
says. psycopg's cursors read their libpq connection at creation: the cursors of this class
(``cursor.py``) point theirs at the client's current one at every execute, and every I/O of
psycopg goes through ``wait()``, which refuses to run while the client holds no server
connection, so that no cursor runs on a server connection its client gave back.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from time import monotonic
from typing import TYPE_CHECKING, Any, cast

import psycopg
from psycopg import AsyncConnection
from psycopg.abc import PQGen
from psycopg.pq import ConnStatus, TransactionStatus
from psycopg.rows import Row

from .._acompat import NO_GUARD, ABindLock, AGuard, ALock, NoGuard
from .._core import Slot
from .._probe import is_alive
from .._psycopg import (
    detach,
    forget_transaction_blocks,
    reported_changed,
    reported_parameters,
    run_setting,
    tpc_begun,
)
from .._session_state import (
    PLAIN,
    SETTING_ONLY,
    StatementInfo,
    plain_setting,
)
from ..errors import IdleInTransactionTimeout
from ..policies import Event
from .connection import AsyncPooledConnection, ClientStart
from .cursor import AsyncBindingCursor, AsyncBindingServerCursor

if TYPE_CHECKING:
    from .pool import AsyncPool

__all__ = ["AsyncTransactionModeConnection"]

logger = logging.getLogger("pgpoolkit")

_IDLE = TransactionStatus.IDLE
_BAD = ConnStatus.BAD


class AsyncTransactionModeConnection(AsyncPooledConnection[Row]):
    """A pooled connection of a transaction- or statement-mode :class:`AsyncPool`."""

    __slots__ = (
        "_aborted",
        "_aborted_error",
        "_aborted_holds",
        "_bind_lock",
        "_guard",
        "_parked",
        "_replay",
        "_state_lock",
        "_wanted",
    )

    _cursor_mixin = AsyncBindingCursor
    _server_cursor_mixin = AsyncBindingServerCursor

    #: protects the rules' users and holds and the bound slot between threads (never held
    #: across I/O)
    _state_lock: Any
    #: one binder at a time (held while the pool is waited for)
    _bind_lock: Any
    #: held while the client runs something: the pool's idle_in_transaction_timeout only takes
    #: a transaction from a client that runs nothing
    _guard: AGuard | NoGuard
    #: why the client lost its transaction (idle_in_transaction_timeout), for its next use
    _aborted: str | None
    #: the error that tells it (IdleInTransactionTimeout, or OperationalError for a server
    #: connection that broke under the transaction)
    _aborted_error: type[Exception]
    #: the blocks open when it was lost: each raises at its exit, the last one clears _aborted
    _aborted_holds: int
    #: the session settings the client keeps (name -> SQL value): set on every server
    #: connection it borrows, instead of pinning it to one
    _wanted: dict[str, str]
    #: the setting the statement under way makes, kept if it succeeds
    _replay: tuple[str, str | None] | None
    #: the server connection the client holds is parked: idle between transactions, its
    #: release deferred while no request waits; the pool may take it back (under _state_lock)
    _parked: bool

    def _join(self, pool: AsyncPool, timeout: float | None) -> None:
        super()._join(pool, timeout)
        self._state_lock = ALock()
        self._bind_lock = ABindLock()
        self._guard = AGuard() if pool.idle_in_transaction_timeout else NO_GUARD
        self._aborted = None
        self._aborted_error = IdleInTransactionTimeout
        self._aborted_holds = 0
        self._wanted = {}
        self._replay = None
        self._parked = False

    def _opened(self, start: ClientStart) -> None:
        super()._opened(start)
        self.pgconn = self._owner._between

    # -- binding per transaction ------------------------------------------------------------------

    def _enter(self) -> None:
        """Start an operation: the guard, and the news of a transaction taken away."""
        if self._released:
            self._check_connection_ok()  # raises psycopg's "closed"
        self._guard.acquire()
        message = self._aborted
        if message is not None:
            if not self._aborted_holds:  # raised once; the blocks' exits raise it too
                self._aborted = None
            self._guard.release()
            raise self._aborted_error(message)

    async def _use(
        self,
        info: StatementInfo = PLAIN,
        event: Event = Event.STATEMENT,
        detail: str = "",
        query: Any = None,
        params: Any = None,
    ) -> None:
        """Before running ``info`` (the scan of ``query``) on the server: ask the policy, and
        bind if holding no server connection. The caller ends with ``_done()``, whatever
        happens."""
        self._enter()
        rules = self._rules
        with self._state_lock:
            rules.users += 1
            parked = self._parked
            self._parked = False
        try:
            if parked:  # the common case when no request waits: its last server connection
                slot = self._box[0]  # (taken up: _unparked, and the client's handlers)
                slot.unpark(monotonic())
                self.pgconn = pgconn = slot.conn.pgconn
                pgconn.notice_handler, pgconn.notify_handler = self._pgpoolkit_handlers
                if not is_alive(slot.conn, slot.probe):
                    await self._parked_died()
            plain = info is PLAIN and event is Event.STATEMENT
            if plain and rules.answers.statement_allowed_when_idle:
                if not self._box:  # the common case: a plain statement, to bind for
                    await self._bind_once()
            elif info is not PLAIN or event is not Event.STATEMENT or not self._box:
                kept = bool(info.changes) and self._keeps_setting(info, query, params)
                pinned_now = rules.before(  # (parked, it is idle for the policy, as unbound)
                    info,
                    event,
                    detail,
                    bool(self._box) and not parked,
                    self._in_transaction(),
                    kept,
                )
                if not self._box:
                    await self._bind_once()
                if pinned_now is not None:
                    self._owner._client_pinned(pinned_now)
        except BaseException:
            await self._done(False)
            raise

    def _in_transaction(self) -> bool:
        return bool(self._box) and self.pgconn.transaction_status != _IDLE

    def _keeps_setting(self, info: StatementInfo, query: Any, params: Any) -> bool:
        """A plain setting run in autocommit (it is committed as it runs): the client keeps it
        and sets it on each server connection it borrows, instead of being pinned."""
        if (
            info.changes != SETTING_ONLY
            or info.begins
            or not self._owner.policy.replays_settings
            or not self.autocommit
            or self._rules.holds
            or self._in_transaction()
        ):
            return False
        self._replay = plain_setting(query, params)
        return self._replay is not None

    def _kept_setting(self) -> None:
        """The setting statement succeeded: the client and its server connection have it."""
        replay, self._replay = self._replay, None
        if replay is None or not self._box:
            return
        name, value = replay
        slot = self._box[0]
        if value is None:
            self._wanted.pop(name, None)
            slot.session.pop(name, None)
        else:
            self._wanted[name] = value
            slot.session[name] = value
        slot.reported = reported_parameters(slot.conn.pgconn)  # as the server reports it now

    async def _bind(self, timeout: float | None = None) -> Slot[AsyncConnection[Any]]:
        slot = await super()._bind(timeout)
        if self._wanted != slot.session:  # the settings the client keeps, where they differ
            try:
                await self._owner._apply_session(slot, self._wanted)
            except BaseException:
                taken = self._take_slot(self._owner._between)
                if taken is not None:
                    self._rules.dirty = True
                    await self._owner._release_client(self, taken, False)
                raise
        return slot

    def _use_bound(self) -> bool:
        """Start an operation that needs no server connection unless one is held (commit,
        rollback); False (and nothing to end) if the client holds none."""
        self._enter()
        with self._state_lock:
            if self._box and not self._parked:  # (parked: no transaction to end)
                self._rules.users += 1
                return True
        self._guard.release()
        return False

    async def _bind_once(self) -> None:
        async with self._bind_lock:  # another thread or task of this client may be binding
            if not self._box:
                await self._bind(self._timeout)  # connect(timeout=) bounds every bind

    def _hold(self, delta: int) -> None:
        with self._state_lock:
            self._rules.holds += delta

    async def _done(self, ran: bool = True) -> None:
        """After a statement, commit or rollback (``ran``), or a block's end: count it, and
        give the server connection back if the policy says so."""
        self._replay = None
        slot = None
        lease = 0.0
        try:
            broken = False
            pool = self._owner
            rules = self._rules
            if rules.undo_pending and rules.pins and rules.users == 1 and not rules.holds:
                await self._recheck_pins()
            with self._state_lock:
                rules.users -= 1
                if self._box and self.pgconn.status == _BAD and not rules.users:
                    broken = True  # the server connection broke under the client
                elif self._box:
                    idle = self.pgconn.transaction_status == _IDLE
                    if ran:
                        self._statements += 1
                        if idle:
                            self._transactions += 1
                    if not rules.releases(idle):
                        pass
                    elif not rules.dirty and pool._parks and self._park():
                        pass  # (the reported parameters are compared when it leaves the client)
                    elif (
                        rules.dirty
                        or not reported_changed(self._box[0])
                        or not self._unseen_session_change()
                    ):
                        slot = self._take_slot(pool._between)
                        lease = slot.checked_out_at if slot is not None else 0.0
            if slot is not None:
                await pool._release_client(self, slot, True)
            elif broken:
                await self._lost_server()
        except BaseException:  # interrupted while giving it back: the pool takes it, closed
            if slot is not None:
                self._owner._settle(slot, lease)
            raise
        finally:
            self._guard.release()

    def _park(self) -> bool:
        """Keep the clean, idle server connection instead of giving it back (the caller holds
        _state_lock), unless a request waits for one or the pool needs it back; True if parked.
        Registered before the pool's state is read: a request that queues meanwhile finds it
        (``pool._reclaim``), or this finds the request. A session change the server reported
        and no statement showed is looked for when the connection leaves the client (it is the
        client's own until then): ``pool._take_back``, ``close()``."""
        if self._released:  # (closing, in another thread)
            return False
        pool = self._owner
        slot = self._box[0]
        parked = pool._parked_clients
        parked[id(self)] = self._ref  # (there already if it parked before, not popped since)
        core = pool._core
        budget = pool._shared_budget
        now = monotonic()
        if (
            core.waiters
            or core.paused
            or core.closed
            or slot.generation != core.generation
            or slot.expires_at <= now
            or (budget is not None and budget.should_surrender(pool))
        ):
            parked.pop(id(self), None)
            return False
        slot.parked_at = now
        detach(self, pool._between, slot.defaults.callbacks)  # between transactions, as before
        self._parked = True
        return True

    def _unparked(self, slot: Slot[AsyncConnection[Any]]) -> None:
        """The pool takes the parked server connection back, or the client closes (either
        cleared _parked under _state_lock): the time it was parked was not use; the client's
        pgconn is the server connection's again, for ``_take_slot``. (A client taking it up
        for a statement does the same in ``_use``, and sets its own handlers again, and leaves
        its entry in ``pool._parked_clients``: whoever finds it there finds it not parked.)"""
        slot.unpark(monotonic())
        self.pgconn = slot.conn.pgconn

    async def _parked_died(self) -> None:
        """The backend of the parked server connection went away meanwhile (terminated, a
        server restart): the pool replaces it, unseen; the client binds another one, as it
        would have."""
        with self._state_lock:
            if self._rules.users != 1:  # another thread's statement runs on it: it tells
                return
            taken = self._take_slot(self._owner._between)
            statements, transactions = self._hand_back()[1:]
        if taken is not None:
            await self._owner._parked_lost(taken, statements, transactions)

    async def close(self) -> None:
        """Give the server connection back to the pool (a parked one too), as
        :meth:`AsyncPooledConnection.close` does. Closing twice does nothing."""
        with self._state_lock:
            parked = self._parked
            self._parked = False
        if parked and self._box:  # (not in a forked child: it let go of the parent's)
            self._unparked(self._box[0])
        self._owner._parked_clients.pop(id(self), None)
        await super().close()

    async def _lost_server(self) -> None:
        """The server connection broke under the client (the server restarted, its backend was
        terminated, the network failed): it goes back to the pool at once, which replaces it,
        whatever the client does next. A transaction, block or pin it held is lost: its next
        use says so, once (psycopg raised the break itself already)."""
        rules = self._rules
        if not self.autocommit or rules.holds or rules.pinned:
            await self._abort_transaction(
                "the server connection broke under this connection's transaction (the "
                "server restarted, the backend was terminated or the network failed): its "
                "work is lost; run the transaction again",
                psycopg.OperationalError,
            )
            return
        with self._state_lock:
            slot = self._take_slot(self._owner._between)
        if slot is not None:
            await self._owner._release_client(self, slot, False)

    async def _recheck_pins(self) -> None:
        """Statements that may undo what pinned the client ran (UNLISTEN, DISCARD TEMP, RESET
        ALL...): for settings and roles the text is enough; for the rest the server is asked
        (one query, only now). A client left with no reason to be pinned is unpinned: its next
        release resets the session (DISCARD ALL) and it borrows per transaction again."""
        rules = self._rules
        was = rules.pinned
        to_check = rules.undo_to_check()
        if to_check and self._box and self.pgconn.transaction_status == _IDLE:
            left = await self._owner._session_state_left(self._box[0], self.lock)
            if left is not None:  # (None: could not ask now; they stay)
                rules.still_there(to_check, left)
        if was and not rules.pinned:
            self._owner._client_unpinned()

    def _unseen_session_change(self) -> bool:
        """The server reported a session parameter changing that no statement showed (a
        function calling set_config, SET ROLE in a DO block): reset before another client
        gets the server connection, and pinned if the policy says so. True if pinned now."""
        pinned_now, refused = self._rules.unseen_change(self._in_transaction())
        if refused is not None:
            logger.warning(
                "pool %r: %s; it already ran: the session is reset now", self._owner.name, refused
            )
        if pinned_now:
            self._owner._client_pinned("a session parameter changed, as the server reported")
        return self._rules.pinned

    async def _abort_transaction(
        self, message: str, error: type[Exception] = IdleInTransactionTimeout
    ) -> None:
        """Take the transaction away from a client (idle in it too long: the pool's
        idle_in_transaction_timeout; or its server connection broke; the caller holds the
        guard): rolled back, the server connection released (kept if pinned and sound), and
        the client told at its next use with ``error``."""
        rules = self._rules
        self._aborted = message
        self._aborted_error = error
        self._aborted_holds = rules.holds
        forget_transaction_blocks(self)
        pool = self._owner
        with self._state_lock:
            slot = self._box[0] if self._box else None
            if slot is None:
                return
            keep = rules.pinned and self.pgconn.status != _BAD
            if not keep:
                rules.holds = 0
                slot = self._take_slot(pool._between)
        if not keep:
            if slot is not None:
                await pool._release_client(self, slot, False)
            return
        assert slot is not None
        try:
            await slot.conn.rollback()
        except Exception:  # a COPY or pipeline under way: the connection must go
            with self._state_lock:
                rules.holds = 0
                rules.dirty = True
                slot = self._take_slot(pool._between)
            if slot is not None:
                await pool._release_client(self, slot, False)

    # -- what needs a server connection -----------------------------------------------------------

    async def wait(self, gen: PQGen[Any], *args: Any, **kwargs: Any) -> Any:
        # (*args: psycopg 3.2 takes a timeout, 3.3 an interval and a timeout)
        if self._aborted_holds and self._aborted is not None:
            gen.close()  # a block whose transaction was taken away: it ends with the news
            raise self._aborted_error(self._aborted)
        # every I/O of psycopg passes here: none between transactions (parked or not bound)
        if not self._box or self._parked:
            done, value = run_setting(gen)  # autocommit = ...: no I/O between transactions
            if done:
                return value
            gen.close()
            cast(Any, self.pgconn).refuse()  # raises: closed, or between transactions
        return await super().wait(gen, *args, **kwargs)

    async def commit(self) -> None:
        if self._use_bound():
            try:
                await super(AsyncPooledConnection, self).commit()  # not its counting
            finally:
                await self._done()

    async def rollback(self) -> None:
        if self._use_bound():
            try:
                await super(AsyncPooledConnection, self).rollback()
            finally:
                await self._done()

    @asynccontextmanager
    async def transaction(
        self, savepoint_name: str | None = None, force_rollback: bool = False
    ) -> AsyncIterator[Any]:
        """A transaction block (a savepoint if one is already open): the client holds its
        server connection for the block."""
        await self._use(PLAIN, Event.BEGIN, "transaction()")
        async with (
            self._holding(),
            super(AsyncPooledConnection, self).transaction(savepoint_name, force_rollback) as tx,
        ):
            self._guard.release()  # idle inside the block counts as idle in transaction
            try:
                yield tx
            finally:
                self._guard.acquire()

    @asynccontextmanager
    async def pipeline(self) -> AsyncIterator[Any]:
        """A pipeline block: the client holds its server connection for the block."""
        await self._use()
        async with self._holding(), super().pipeline() as pipeline:
            self._guard.release()
            try:
                yield pipeline
            finally:
                self._guard.acquire()

    @asynccontextmanager
    async def _holding(self) -> AsyncIterator[None]:
        """Keep the server connection bound by ``_use()`` until the block ends."""
        self._hold(1)
        try:
            yield
        finally:
            self._hold(-1)
            if self._aborted_holds:
                self._aborted_holds -= 1
                if not self._aborted_holds:
                    self._aborted = None
            await self._done()  # the block's COMMIT (or ROLLBACK) counts as a statement

    async def tpc_begin(self, xid: Any) -> None:
        """Begin a two-phase transaction: the client holds its server connection until it is
        prepared, committed or rolled back."""
        await self._use(PLAIN, Event.BEGIN, "tpc_begin()")
        try:
            await super().tpc_begin(xid)
            self._hold(1)
        finally:
            await self._done(False)

    async def tpc_prepare(self) -> None:
        await self._use()
        try:
            await super().tpc_prepare()
            self._hold(-1)
        finally:
            await self._done()

    async def tpc_commit(self, xid: Any = None) -> None:
        await self._tpc_end(xid, True)

    async def tpc_rollback(self, xid: Any = None) -> None:
        await self._tpc_end(xid, False)

    async def _tpc_end(self, xid: Any, commit: bool) -> None:
        held = tpc_begun(self)  # begun, not prepared: held
        await self._use()
        try:
            if commit:
                await super().tpc_commit(xid)
            else:
                await super().tpc_rollback(xid)
            if held:
                self._hold(-1)
        finally:
            await self._done()

    async def cancel_safe(self, timeout: float = 30.0) -> None:
        if self._box and not self._parked:  # between transactions it runs nothing to cancel
            await super().cancel_safe(timeout=timeout)

    def cancel(self) -> None:
        if self._box and not self._parked:
            super().cancel()
