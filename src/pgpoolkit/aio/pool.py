"""AsyncPool: the asyncio shell around the pool core.

``pgpoolkit/pool.py`` is generated from ``pgpoolkit/aio/pool.py`` by
``tools/async_to_sync.py``: edit the aio one. Every decision is taken by ``PoolCore``
(``_core.py``); this shell only connects, cleans, closes and wakes.
"""

from __future__ import annotations

import asyncio  # async-only
import atexit
import logging
import os
import random
import traceback
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import replace
from inspect import isawaitable  # async-only
from sys import getrefcount
from time import monotonic
from types import TracebackType
from typing import Any
from weakref import getweakrefcount

from psycopg import AsyncConnection  # sync: from psycopg import Connection
from psycopg import errors as e
from psycopg.pq import TransactionStatus

from .._acompat import (
    ADeadlines,
    AEvent,
    ALock,
    AWaiter,
    AWorker,
    agather,
    aspawn,
    aspawn_detached,
    wait_for_lock,
)
from .._client import Answers, HandBack, binds_for_the_session
from .._config import (
    PACKAGE_DIR,
    PoolConfig,
    check_callback,
    check_connection_class,
    check_conninfo,
    check_kwargs,
    check_timeout,
    make_config,
    redact,
    resized,
    resolve,
)
from .._core import PoolCore, Slot
from .._probe import is_alive, make_probe
from .._psycopg import (
    ALONE,
    CAN_RENEW,
    SPARE_CLIENTS,
    BetweenTransactions,
    ClientPrototype,
    attach,
    drop_client_handlers,
    forget_prepared,
    reported_changed,
    reported_parameters,
    restore_prepared_settings,
    server_defaults,
)
from .._session_state import SESSION_STATE_COLUMNS, SESSION_STATE_QUERY, SessionChange
from .._shared_budget import TAKE_SLOT, TAKE_THIS_SLOT, SharedBudget, slot_namespace
from ..errors import NoFreeSlot, PoolTimeout, TooManyClients
from ..policies import Action, ClientState, Policy, policy_for_mode
from ..policies import Event as ClientEvent
from ..stats import PoolStats
from .connection import AsyncPooledConnection, ClientStart, pooled_class
from .transaction_mode import AsyncTransactionModeConnection

__all__ = ["AsyncPool"]

OPEN_IN_CONSTRUCTOR = (  # async-only
    "AsyncPool(open=True) can't open in the constructor: "  # async-only
    "use 'async with AsyncPool(...) as pool' or 'await pool.open()'"  # async-only
)  # async-only

logger = logging.getLogger("pgpoolkit")

#: the liveness poll keeps the GIL in threads only (see _probe.py)
_PROBE_HOLDS_GIL = False  # sync: _PROBE_HOLDS_GIL = True
_IDLE = TransactionStatus.IDLE
_INTRANS = TransactionStatus.INTRANS
_INERROR = TransactionStatus.INERROR

#: configure, check and reset: called with a connection (coroutine functions in AsyncPool)
ConnectionCallback = Callable[[AsyncConnection[Any]], Awaitable[None]]
#: seconds between two looks at the idle connections' sockets (no round trip): a pool left idle
#: through a server restart is back to min_size within about this long
IDLE_PROBE_INTERVAL = 0.5
#: what a conninfo callable returns (a coroutine function's result is awaited in AsyncPool)
ConninfoResult = str | Awaitable[str]  # sync: ConninfoResult = str
#: a client of the pool: a pooled connection (of either mode)
Client = AsyncPooledConnection[Any]
#: reconnect_failed: called with the pool (a function or a coroutine function in AsyncPool)
ReconnectFailedCallback = Callable[["AsyncPool"], Any]


class AsyncPool:
    """A pool of PostgreSQL server connections shared by many clients (asyncio).

    The constructor takes psycopg_pool's parameters under psycopg_pool's names, plus ``mode``
    (``"session"``, ``"transaction"``, ``"statement"`` or a Policy), ``max_clients`` (a cap
    on open pooled connections, PgBouncer's max_client_conn; 0: none) and
    ``idle_in_transaction_timeout`` (seconds a pooled connection may sit idle inside a
    transaction before the pool rolls it back and takes its server connection; None: never).
    Use it as a context manager (``async with``), or call :meth:`open` and :meth:`close`::

        async with AsyncPool("dbname=app", max_size=10) as pool:
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")

    ``conninfo`` and ``kwargs`` may be callables returning them, called at every new
    connection (for rotating credentials). ``configure(conn)`` runs on every new connection,
    ``check(conn)`` on every checkout (raise to have the connection replaced), ``reset(conn)``
    on every return after the rollback (coroutine functions in AsyncPool).
    """

    #: a returned connection is closed, not kept idle (psycopg_pool's null pools: compat.py)
    _closes_on_return = False

    def __init__(
        self,
        conninfo: str | Callable[[], ConninfoResult] = "",
        *,
        open: bool | None = None,
        connection_class: type[AsyncConnection[Any]] = AsyncConnection,
        kwargs: Mapping[str, Any] | Callable[[], Any] | None = None,
        min_size: int = 4,
        max_size: int | None = None,
        name: str | None = None,
        mode: str | Policy = "session",
        max_clients: int = 0,
        idle_in_transaction_timeout: float | None = None,
        reset_always: bool = False,
        leak_timeout: float | None = None,
        timeout: float = 30.0,
        max_waiting: int = 0,
        max_lifetime: float = 60 * 60.0,
        max_idle: float = 10 * 60.0,
        reconnect_timeout: float = 5 * 60.0,
        reconnect_failed: ReconnectFailedCallback | None = None,
        num_workers: int = 3,
        configure: ConnectionCallback | None = None,
        check: ConnectionCallback | None = None,
        reset: ConnectionCallback | None = None,
        close_returns: bool = False,
    ) -> None:
        check_conninfo(conninfo)
        check_kwargs(kwargs)
        check_connection_class(connection_class, AsyncConnection)
        for cb_name, cb in (
            ("reconnect_failed", reconnect_failed),
            ("configure", configure),
            ("check", check),
            ("reset", reset),
        ):
            check_callback(cb_name, cb)
        self._config: PoolConfig = make_config(
            name=name,
            mode=mode,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            max_waiting=max_waiting,
            max_lifetime=max_lifetime,
            max_idle=max_idle,
            reconnect_timeout=reconnect_timeout,
            num_workers=num_workers,
            max_clients=max_clients,
            idle_in_transaction_timeout=idle_in_transaction_timeout,
            close_returns=close_returns,
            reset_always=reset_always,
            leak_timeout=leak_timeout,
        )
        self.conninfo = conninfo
        self.kwargs = kwargs
        self.connection_class = connection_class
        self.policy: Policy = self._config.policy
        self.max_clients = self._config.max_clients
        self.idle_in_transaction_timeout = self._config.idle_in_transaction_timeout
        #: psycopg's close() of a getconn() connection calls putconn() when this is True
        self.close_returns = self._config.close_returns
        #: reset every server connection that goes back (multi-tenant), whatever the scan saw
        self._reset_always = self._config.reset_always
        #: report a server connection held longer than this, with the stack that took it
        self._leak_timeout = self._config.leak_timeout
        #: the first server connection opened: where new clients take their settings from
        self._template: AsyncConnection[Any] | None = None
        #: what the clients of a transaction-mode pool start with (taken from _template)
        self._template_start: ClientStart | None = None
        #: what transaction-mode clients hold between transactions (made with the template)
        self._between: Any = None
        #: closed clients to make anew for connection() and connect(), once nothing refers to
        #: them (_spare_client): the oldest first
        self._spare_clients: deque[AsyncPooledConnection[Any]] = deque(maxlen=SPARE_CLIENTS)
        self._use_policy(self.policy)
        #: an overcommitted PoolManager's budget, shared with the sibling pools (None: alone)
        self._shared_budget: SharedBudget | None = None
        #: (namespace, N): every server connection holds one of N advisory-lock slots, a budget
        #: PostgreSQL enforces across processes (a PoolManager's across_processes=True)
        self._slots: tuple[int, int] | None = None
        #: the connections handed out by getconn() and not yet given back to putconn()
        self._lent: dict[AsyncConnection[Any], Slot[AsyncConnection[Any]]] = {}
        #: the open clients (pooled connections), for max_clients and the client stats: by id,
        #: a weak reference each (a client dropped without close() is collected, and its
        #: finalizer removes it), which costs less than a WeakSet's add and discard
        self._clients: dict[int, weakref.ref[Client]] = {}
        #: the transaction-mode clients that parked their server connection between
        #: transactions (their weak references of _clients, by id()), to take back when a
        #: request finds none idle; one that took its connection up again stays until someone
        #: finds it not parked (_take_back)
        self._parked_clients: dict[int, weakref.ref[Client]] = {}
        self._pinned_logged = False
        self._loop: asyncio.AbstractEventLoop | None = None  # sync: self._loop: object = None
        self._configure = configure
        self._check = check
        self._reset = reset
        self._reconnect_failed = reconnect_failed
        #: transaction-mode clients may park their server connection between transactions:
        #: not when every checkout is checked, every return reset or closed, or leaks tracked
        #: (a lease per transaction)
        self._parks = (
            check is None
            and reset is None
            and not self._reset_always
            and not self._closes_on_return
            and self._leak_timeout is None
        )

        self._core: PoolCore[AsyncConnection[Any]] = PoolCore(self._config)
        self._deadlines = ADeadlines(self._core.waiters)
        self._lock = ALock()
        self._workers: set[AWorker] = set()
        self._closing = AEvent()
        self._ready = AEvent()
        self._quiet = AEvent()  # paused, and no server connection in use
        _pools.add(self)  # for the fork handler

        if open:  # sync: if open or open is None:
            raise TypeError(OPEN_IN_CONSTRUCTOR)  # sync: self.open()

    def _use_policy(self, policy: Policy) -> None:
        """Decide once what the clients of ``policy`` need (and, on a live mode change, what
        the clients opened from now on need: those open keep their own until they close, so
        that no client loses its transaction)."""
        self.policy = policy
        #: the policy binds a client from connect to close (session pooling): its clients are
        #: psycopg connections borrowing one server connection (connection.py); otherwise they
        #: borrow one per transaction or statement (transaction_mode.py)
        self._session_clients = binds_for_the_session(policy)
        #: the policy's answers for every statement, asked once (_client.Answers)
        self._answers = Answers.of(policy)
        #: the policy may refuse a multi-statement transaction to a session-mode client (a
        #: flag, so that transaction() asks it only then)
        self._begin_refused = policy.decide(ClientState.BOUND, ClientEvent.BEGIN) is Action.REFUSE
        #: what pool.connect() hands out: a psycopg connection, of connection_class too
        self._client_class = pooled_class(
            self.connection_class,
            AsyncPooledConnection if self._session_clients else AsyncTransactionModeConnection,
        )
        #: the class of the closed clients made anew (_spare_client): copies of a prototype
        #: (_psycopg.ClientPrototype); None: none
        self._spare_class = (
            self._client_class
            if CAN_RENEW and ClientPrototype.applies_to(self._client_class, AsyncConnection)
            else None
        )
        self._spare_clients.clear()
        if self._between is not None:
            self._between.mode = policy.name

    def set_mode(self, mode: str | Policy) -> None:
        """Change the pooling mode while the pool runs: the connections opened from now on
        follow it; those open keep theirs until they close, so that no client loses its
        transaction."""
        self._config = replace(self._config, policy=policy_for_mode(mode))
        self._use_policy(self._config.policy)
        logger.info("pool %r: mode changed to %s", self.name, self.policy.name)

    def _after_fork_in_child(self) -> None:
        """This process is a child forked from the one that opened the pool: every server
        connection is the parent's (the same sockets, the same backends), so the child forgets
        them all and starts afresh, never touching them (psycopg's own finalizers skip a
        connection made in another process). Pooled connections bound in the parent are closed
        for the child. A pool that was open reopens itself when it runs in threads; on an
        event loop, whose tasks did not survive the fork, await open() again."""
        was_open = self._core.opened and not self._core.closed
        for client in _snapshot(self._clients.values()):
            client._forget_after_fork()
        self._clients = {}
        self._parked_clients = {}
        self._spare_clients.clear()
        self._lent = {}
        self._core = PoolCore(self._config)
        self._deadlines = ADeadlines(self._core.waiters)
        self._lock = ALock()  # another thread may have held it at the fork
        self._workers = set()
        self._closing = AEvent()
        self._ready = AEvent()
        self._quiet = AEvent()
        if was_open:  # threads reopen it now; on an event loop, the application awaits open()
            pass  # sync: self.open()

    # -- properties -----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The pool's name, used in logs, errors and stats."""
        return self._config.name

    @property
    def min_size(self) -> int:
        return self._core.min_size

    @property
    def max_size(self) -> int:
        return self._core.max_size

    @property
    def max_waiting(self) -> int:
        """Queued requests beyond which TooManyRequests is raised (0: no limit)."""
        return self._core.max_waiting

    @property
    def max_lifetime(self) -> float:
        """Seconds after which a connection is replaced."""
        return self._core.max_lifetime

    @property
    def max_idle(self) -> float:
        """Seconds an idle connection is kept above min_size."""
        return self._core.max_idle

    @property
    def reconnect_timeout(self) -> float:
        """Seconds of failed attempts after which reconnect_failed is called."""
        return self._core.reconnect_timeout

    @property
    def num_workers(self) -> int:
        """Connection attempts under way at once, at most."""
        return self._config.num_workers

    @property
    def timeout(self) -> float:
        """Default seconds a checkout waits before PoolTimeout."""
        return self._config.timeout

    @property
    def paused(self) -> bool:
        """True between :meth:`pause` and :meth:`resume`."""
        return self._core.paused

    @property
    def closed(self) -> bool:
        """True until the pool is opened, and again once it is closed."""
        return self._core.closed or not self._core.opened

    def __repr__(self) -> str:
        # the conninfo may hold a password: it never appears here
        state = "closed" if self._core.closed else "open" if self._core.opened else "not open"
        return (
            f"<{type(self).__name__} {self.name!r} mode={self.policy.name} "
            f"size={self._core.size}/{self._core.max_size} {state} at 0x{id(self):x}>"
        )

    # -- life cycle -----------------------------------------------------------------------------

    async def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        """Start the pool: fill it to min_size in the background.

        With ``wait=True``, return only when min_size connections are open, or raise
        PoolTimeout (and close the pool) after ``timeout`` seconds. Opening an open pool does
        nothing; a closed pool cannot be opened again.
        """
        with self._lock:
            if self._core.opened and not self._core.closed:
                return
            self._core.open()
            if self._core.ready:
                self._ready.set()
        self._loop = asyncio.get_running_loop()  # async-only
        aspawn(
            self._workers,
            _maintenance_worker,
            weakref.ref(self),
            self._closing,
            name=f"{self.name}-maintenance",
        )
        await self._do_work()
        if wait:
            await self.wait(timeout)

    async def wait(self, timeout: float = 30.0) -> None:
        """Wait until min_size connections are open; on timeout close the pool and raise
        PoolTimeout (as psycopg_pool does). A closed pool raises PoolClosed at once."""
        check_timeout(timeout)
        if self._core.closed or not self._core.opened:
            raise self._core.closed_error()
        if not await self._ready.wait_timeout(timeout):
            with self._lock:
                state = self._core.describe()
            await self.close()
            raise PoolTimeout(
                f"pool {self.name!r} was not ready after {timeout:.1f} s "
                f"(min_size={self._core.min_size}): {state}"
            )

    async def close(self, timeout: float = 5.0) -> None:
        """Close the pool.

        Waiting requests fail at once with PoolClosed; idle connections close now; connections
        in use close when they are returned. Waits up to ``timeout`` seconds for the background
        workers to end.
        """
        with self._lock:
            if self._core.closed:
                return
            for waiter in self._core.close():
                waiter.wake()
            self._deadlines.cancel()
            self._spare_clients.clear()
        await self._reclaim(every=True)
        self._closing.set()
        await self._do_work()
        await agather(self._workers, timeout)

    async def __aenter__(self) -> AsyncPool:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _share_budget(self, shared: SharedBudget | None, across_processes: bool) -> None:
        """A PoolManager's budget: ``shared`` with the sibling pools (overcommitted), and/or
        held ``across_processes`` by advisory-lock slots, as many as max_size."""
        self._shared_budget = shared
        self._slots = (slot_namespace(self.name), self.max_size) if across_processes else None

    async def resize(self, min_size: int, max_size: int | None = None) -> None:
        """Change min_size and max_size while the pool runs."""
        config = self._config = resized(self._config, min_size, max_size)
        if self._slots is not None:  # the connections opened from now on take one of these
            self._slots = (self._slots[0], config.max_size)
        with self._lock:
            self._core.resize(config.min_size, config.max_size)
        await self._reclaim(every=True)
        await self._do_work()

    async def drain(self) -> None:
        """Replace every connection with a new one (after a password rotation, a failover):
        idle connections close now, those in use when they are returned."""
        with self._lock:
            self._core.drain()
        await self._reclaim(every=True)
        await self._do_work()

    async def reconnect(self) -> None:
        """Replace every server connection, each as it comes back (after a failover or a
        credential change): idle ones close now, those in use when their client gives them
        back; no client loses its transaction. The same as :meth:`drain` (psycopg_pool's name).
        """
        await self.drain()

    async def pause(self, timeout: float | None = None) -> None:
        """PgBouncer's PAUSE: hand out nothing until :meth:`resume`, and wait until no server
        connection is in use. Running transactions (and session-mode clients) finish as usual;
        new requests wait in the queue, their own timeouts running. Raise PoolTimeout if
        connections are still in use after ``timeout`` seconds (None: the pool's timeout): the
        pool stays paused then."""
        limit = self._config.timeout if timeout is None else check_timeout(timeout)
        with self._lock:
            if self._core.closed or not self._core.opened:
                raise self._core.closed_error()
            self._core.pause()
            self._quiet.clear()
        await self._reclaim(every=True)
        with self._lock:
            quiet = not self._core.in_use
        if quiet or await self._quiet.wait_timeout(limit):
            logger.info("pool %r: paused", self.name)
            return
        with self._lock:
            state = self._core.describe()
        raise PoolTimeout(
            f"pool {self.name!r} is paused but its clients did not give back their connections "
            f"within {limit:.1f} s: {state}"
        )

    async def resume(self) -> None:
        """Serve again after :meth:`pause`: the waiting requests get connections, oldest
        first."""
        with self._lock:
            self._core.resume(monotonic())
        logger.info("pool %r: resumed", self.name)
        await self._do_work()

    async def check(self) -> None:
        """Check every idle connection now with a round trip; replace those that fail."""
        await self._reclaim(every=True)
        with self._lock:
            slots = self._core.take_idle(monotonic())
        try:
            while slots:
                slot = slots[-1]
                try:
                    await self.check_connection(slot.conn)
                except Exception:
                    with self._lock:
                        self._core.lost(slot)
                else:
                    with self._lock:
                        self._core.checkin(slot, monotonic(), True)
                slots.pop()
        except BaseException:  # cancelled: the one being checked goes, the others go back
            with self._lock:
                now = monotonic()
                if slots:
                    self._core.checkin(slots.pop(), now, False)
                for slot in slots:
                    self._core.checkin(slot, now, True)
            await self._do_work()
            raise
        await self._do_work()

    @staticmethod
    async def check_connection(conn: AsyncConnection[Any]) -> None:
        """A ``check`` callback that runs an empty query (a round trip, no work)."""
        if conn.autocommit:
            await conn.execute("")
        else:
            await conn.set_autocommit(True)
            try:
                await conn.execute("")
            finally:
                await conn.set_autocommit(False)

    # -- checkout and return ----------------------------------------------------------------------

    def connection(self, timeout: float | None = None) -> AsyncPooledConnection[Any]:
        """A pooled connection for an ``async with`` block: committed at the end of the block,
        rolled back if it raises, then returned to the pool. (It opens on entering the
        block, where ``timeout`` applies.)"""
        return self._new_client(timeout)

    def _spare_client(self) -> AsyncPooledConnection[Any] | None:
        """A closed client to make anew, if nothing refers to it any more (no variable, cursor
        or weak reference of anyone's: no old reference reaches the new client). The oldest two
        are looked at; one still referred to waits for a later call (a loop of ``with
        pool.connection() as conn`` refers to its last one until the next block opens)."""
        spares = self._spare_clients
        try:
            client = spares.popleft()
            if getrefcount(client) != ALONE or getweakrefcount(client) != 1:  # (1: its _ref)
                spares.append(client)
                client = spares.popleft()
                if getrefcount(client) != ALONE or getweakrefcount(client) != 1:
                    spares.append(client)
                    return None
        except IndexError:  # (another thread took the last one)
            return None
        return client

    async def connect(self, timeout: float | None = None) -> AsyncPooledConnection[Any]:
        """A pooled connection, held until its ``close()``: a drop-in for
        ``psycopg.AsyncConnection.connect()``.

        In session mode it takes its server connection now (``timeout`` applies here); in
        transaction and statement modes it takes one for each transaction or statement.
        """
        client = self._new_client(timeout)
        await self._open_client(client, timeout)
        return client

    def _new_client(self, timeout: float | None) -> AsyncPooledConnection[Any]:
        """An unopened client: a closed one made anew if one is free (_spare_client), or a new
        one."""
        if timeout is not None:  # it bounds every bind of a transaction-mode client: now
            timeout = check_timeout(timeout)
        if self._spare_clients:
            client = self._spare_client()
            if client is not None:
                client._renew(self, timeout)
                return client
        return self._client_class._for_pool(self, timeout)

    async def _open_client(self, client: Client, timeout: float | None) -> None:
        """Count a new client in, and bind it if the policy binds at connect."""
        core = self._core
        if core.closed or not core.opened:
            raise core.closed_error()
        if self.max_clients:
            with self._lock:  # counted from now: a client waiting for its server is open
                if len(self._clients) >= self.max_clients:
                    raise TooManyClients(
                        f"pool {self.name!r} refused a new client: {len(self._clients)} of "
                        f"max_clients={self.max_clients} are open. Close the clients you are "
                        "done with, or raise max_clients"
                    )
                self._clients[id(client)] = client._ref
        else:
            self._clients[id(client)] = client._ref
        try:
            cls, policy = type(client), client._rules.policy  # (as the pool was when it made it)
            if self._session_clients:
                slot = await client._bind(timeout)
                start = slot.client_start
                if start is None or start.cls is not cls or start.policy is not policy:
                    start = slot.client_start = cls._start_from(slot.conn, policy)
            else:
                start = self._template_start
                if start is None or start.cls is not cls or start.policy is not policy:
                    if self._template is None:  # no server connection yet to take it from
                        await self._release(await self._acquire(timeout))
                    assert self._template is not None
                    start = self._template_start = cls._start_from(self._template, policy)
            client._opened(start)
        except BaseException:
            self._clients.pop(id(client), None)
            await client._abandon()
            raise

    async def getconn(self, timeout: float | None = None) -> AsyncConnection[Any]:
        """Check out a raw psycopg connection; give it back with :meth:`putconn`
        (psycopg_pool's low-level API)."""
        slot = await self._acquire(None if timeout is None else check_timeout(timeout))
        if slot.session:  # settings transaction-mode clients keep: not for a raw connection
            try:
                await self._apply_session(slot, {})
            except BaseException:
                await self._discard(slot)
                raise
        self._lent[slot.conn] = slot
        return slot.conn

    async def putconn(self, conn: AsyncConnection[Any]) -> None:
        """Give back a connection from :meth:`getconn`: rolled back if a transaction is open,
        reset, and reused, or closed if it is broken."""
        # one pop claims it: of two threads returning the same connection at once, one fails
        slot = self._lent.pop(conn, None)
        if slot is None:
            raise ValueError(
                f"can't return connection {conn!r} to pool {self.name!r}: it did not come from "
                "this pool's getconn(), or it was returned already"
            )
        await self._release(slot)

    async def _release_client(
        self,
        client: AsyncPooledConnection[Any],
        slot: Slot[AsyncConnection[Any]],
        checked: bool,
        handed: tuple[HandBack, int, int] | None = None,
    ) -> None:
        """Take back a server connection a client let go of (``client._take_slot()`` detached
        it): whatever the client changed on the server (its session, the prepared-statement
        settings) is undone; what it changed on its own connection object stays there.
        ``checked``: the caller compared the reported session parameters already; ``handed``:
        what ``client._hand_back()`` said, if the caller asked it already."""
        conn = slot.conn
        if client._chosen_prepared is not None:  # (what else changes them is psycopg's)
            restore_prepared_settings(conn, slot.defaults.prepared)
        back, statements, transactions = client._hand_back() if handed is None else handed
        dirty, discard, pinned = back
        if statements and not dirty and not checked and reported_changed(slot):
            dirty = True
        if conn.pgconn.pipeline_status:  # closed in a pipeline: can't be reused
            discard = True
        await self._release(slot, dirty, False, pinned, statements, transactions, discard)

    async def _reclaim(self, every: bool = False, parked_for: float = 0.0) -> None:
        """Take back a server connection a transaction-mode client parked between transactions
        (for a request that found none idle, or a sibling pool), or, ``every``, all of them
        (parked for ``parked_for`` seconds at least: the maintenance round; all: the pool
        pauses, drains, resizes, closes or checks its connections). Each goes back as its
        client would have given it back: to the oldest waiting request, or idle."""
        if every:
            for client in _snapshot(self._parked_clients.values()):
                await self._take_back(client, parked_for)
            return
        parked = self._parked_clients
        while parked:
            try:
                ref = parked.popitem()[1]
            except KeyError:  # (another thread took the last one)
                return
            found = ref()  # (None: dropped; its finalizer gives the connection back)
            if found is not None and await self._take_back(found):
                return

    async def _take_back(self, client: Client, parked_for: float = 0.0) -> bool:
        """Take back the server connection ``client`` parked, if it still has it parked (for
        ``parked_for`` seconds at least); True if taken. Its entry in _parked_clients goes,
        unless it stays parked."""
        assert isinstance(client, AsyncTransactionModeConnection)
        taken = None
        try:
            with client._state_lock:  # not while it runs something: then it is not parked
                parked = client._parked
                if parked and parked_for and monotonic() - client._box[0].parked_at < parked_for:
                    return False
                registry = self._parked_clients  # (nobody adds it meanwhile: we hold its lock)
                if registry.get(id(client)) is client._ref:
                    registry.pop(id(client), None)
                if not parked:
                    return False
                client._parked = False
                slot = client._box[0]
                client._unparked(slot)
                if reported_changed(slot) and client._unseen_session_change():
                    attach(client, slot.conn)  # a function changed the session, and the
                    return False  # policy pins the client: it keeps its server connection
                taken = client._take_slot(self._between)
                lease = taken.checked_out_at if taken is not None else 0.0
                handed = client._hand_back()
            if taken is not None:
                await self._release_client(client, taken, True, handed)
        except BaseException:  # interrupted while taking it back: the pool takes it, closed
            if taken is not None:
                self._settle(taken, lease)
            raise
        return True

    async def _parked_lost(
        self, slot: Slot[AsyncConnection[Any]], statements: int, transactions: int
    ) -> None:
        """A parked server connection was found dead when its client took it up again."""
        with self._lock:
            self._core.client_released(False, statements, transactions)
            self._core.lost(slot)
        await self._do_work()

    async def _acquire(self, timeout: float | None) -> Slot[AsyncConnection[Any]]:
        """Check out a live connection: from the idle stack, or by waiting in the queue.

        ``timeout`` bounds the whole request, including the retries after a connection found
        dead. Interrupted (cancelled) while holding a connection, it gives the connection back.
        """
        core = self._core
        if timeout is None:  # (a per-call one was checked where it came in: NaN waits for ever)
            timeout = self._config.timeout
        t0 = monotonic()
        deadline = t0 + timeout
        retry = queued = False
        while True:
            lock = self._lock  # (not "with": a contended lock is waited for in wait_for_lock)
            if not lock.acquire(False):
                wait_for_lock(lock)
            try:
                slot = core.checkout(t0, retry)
                if slot is None:
                    waiter: AWaiter[AsyncConnection[Any]] = AWaiter(deadline)
                    core.enqueue(waiter, queued)
                    self._deadlines.watch(deadline)
            finally:
                lock.release()
            if slot is None:
                queued = True
                slot = await self._wait(waiter, t0, timeout)
            try:
                if core.work:
                    await self._do_work()
                if is_alive(slot.conn, slot.probe) and (
                    self._check is None or await self._passes_check(slot)
                ):
                    if self._leak_timeout is not None:
                        slot.leak_stack = traceback.extract_stack()
                    return slot
            except BaseException:  # cancelled, maybe in the middle of the check: discard it
                await self._discard(slot)
                raise
            with self._lock:
                core.lost(slot)
            await self._do_work()
            retry = True
            t0 = monotonic()

    async def _wait(
        self,
        waiter: AWaiter[AsyncConnection[Any]],
        t0: float,
        timeout: float,
    ) -> Slot[AsyncConnection[Any]]:
        try:
            if self._parked_clients and not self._core.paused:  # one for the oldest waiter
                await self._reclaim()
            if self._core.work:  # start the connection attempts the request may need
                await self._do_work()
            woken = await waiter.wait()
        except BaseException:  # cancelled: give back what may have been handed over meanwhile
            with self._lock:
                slot = self._core.abandon(waiter, timed_out=False)
                if slot is not None:
                    self._core.checkin(slot, monotonic(), True)
            if self._core.work:
                await self._do_work()
            raise
        with self._lock:
            self._core.waited(monotonic() - t0)
            if waiter.error is not None:
                raise waiter.error
            slot = waiter.slot if woken else self._core.abandon(waiter, timed_out=True)
            if slot is not None:
                return slot
            state = self._core.describe()
        raise PoolTimeout(
            f"pool {self.name!r} could not give a connection after waiting {timeout:.1f} s: {state}"
        )

    async def _passes_check(self, slot: Slot[AsyncConnection[Any]]) -> bool:
        assert self._check is not None
        try:
            await self._check(slot.conn)
        except Exception as ex:
            logger.warning("pool %r: connection failed its check, replacing it: %s", self.name, ex)
            with self._lock:  # new connections are checked as they open, with backoff
                self._core.check_failed(f"check failed: {_describe_error(ex)}")
            return False
        if self._core.check_failures:
            with self._lock:
                self._core.check_failures = 0
        return True

    async def _release(
        self,
        slot: Slot[AsyncConnection[Any]],
        dirty: bool = False,
        touched: bool = True,
        unpin: bool = False,
        statements: int = 0,
        transactions: int = 0,
        discard: bool = False,
    ) -> None:
        """Take a connection back (``dirty``: a client changed its session; ``touched``: the
        client may have changed the psycopg connection's settings or handlers, which a pooled
        connection knows, and getconn() users don't say; ``unpin``: the client was pinned;
        ``statements``, ``transactions``: what the client ran on it; ``discard``: the client
        changed its session beyond what a reset undoes: close it)."""
        if self._reset_always:
            dirty = True
        try:
            if discard or self._closes_on_return:
                reusable = False
            elif (
                not dirty
                and not touched
                and self._reset is None
                and slot.conn.pgconn.transaction_status == _IDLE
            ):  # the common return of a pooled connection: nothing to clean
                reusable = True
            else:
                reusable = await self._clean(slot, dirty, touched)
        except BaseException:  # cancelled while cleaning: its state is unknown, discard it
            await self._discard(slot)
            raise
        core = self._core
        budget = self._shared_budget
        surrender = budget is not None and reusable and budget.should_surrender(self)
        lock = self._lock
        if not lock.acquire(False):
            wait_for_lock(lock)
        try:
            core.checkin(slot, monotonic(), reusable, surrender, statements, transactions, unpin)
        finally:
            lock.release()
        if core.work:
            await self._do_work()

    def _settle(self, slot: Slot[AsyncConnection[Any]], lease: float) -> None:
        """A client was interrupted (KeyboardInterrupt, cancellation) while giving ``slot``
        back, handed out at ``lease`` (its checkout time): if the pool has not taken it back
        yet, it does now, closed (its state is unknown); if it has (and maybe lent it again),
        nothing. The maintenance worker closes it within IDLE_PROBE_INTERVAL."""
        with self._lock:
            if slot.out and slot.checked_out_at == lease:
                self._core.checkin(slot, monotonic(), False)

    async def _discard(self, slot: Slot[AsyncConnection[Any]]) -> None:
        """Close a handed-out connection whose state is unknown (a checkout or a return was
        interrupted); the core replaces it if needed."""
        with self._lock:
            self._core.checkin(slot, monotonic(), False)
        await self._do_work()

    async def _clean(
        self, slot: Slot[AsyncConnection[Any]], dirty: bool = False, touched: bool = True
    ) -> bool:
        """Make a returned connection fit for the next client; False if it must be closed.

        ``dirty``: the client changed its session (SET, LISTEN, temporary tables...), which a
        DISCARD ALL undoes (and psycopg is made to forget its prepared statements too).
        """
        conn = slot.conn
        status = conn.pgconn.transaction_status
        if conn.pgconn.pipeline_status:  # a client closed in a pipeline: can't be reused
            return False
        if status != _IDLE:
            if status != _INTRANS and status != _INERROR:  # busy (ACTIVE) or broken
                return False
            try:
                await conn.rollback()
            except Exception as ex:
                logger.warning("pool %r: rollback on return failed: %s", self.name, ex)
                return False
        if dirty:
            try:
                await conn.set_autocommit(True)
                await conn.execute("DISCARD ALL", prepare=False)
                forget_prepared(conn)
                slot.session.clear()
                slot.reported = slot.defaults.reported
                if self._slots is not None:  # DISCARD ALL released the slot's lock
                    slot.budget_slot = await self._take_budget_slot(conn, slot.budget_slot)
                    if slot.budget_slot is None:
                        return False  # another process took it meanwhile: this one goes
                if self._configure is not None:  # DISCARD ALL undid what configure set up
                    await conn.set_autocommit(slot.defaults.settings[0])
                    await self._configure(conn)
                    if conn.pgconn.transaction_status != _IDLE:
                        raise e.ProgrammingError("configure left a transaction open")
            except Exception as ex:
                logger.warning("pool %r: session reset failed, discarding: %s", self.name, ex)
                return False
        try:
            # a pooled connection that changed no setting has nothing to restore
            if touched or dirty:
                await _restore_settings(conn, slot.settings)
                restore_prepared_settings(conn, slot.defaults.prepared)
        except Exception as ex:  # e.g. a transaction() block still open: can't reuse it
            logger.warning("pool %r: could not restore connection settings: %s", self.name, ex)
            return False
        if self._reset is not None:
            try:
                await self._reset(conn)
            except Exception as ex:
                logger.warning(
                    "pool %r: reset failed, discarding connection %r: %s", self.name, conn, ex
                )
                return False
            if conn.pgconn.transaction_status != _IDLE:
                logger.warning(
                    "pool %r: reset left a transaction open, discarding %r", self.name, conn
                )
                return False
        if touched or dirty:  # last: the reset may receive some
            drop_client_handlers(conn, slot.defaults.notice_handlers)
        return True

    # -- background work ------------------------------------------------------------------------

    async def _do_work(self) -> None:
        """Carry out what the core decided: close connections, start connection attempts."""
        pending = 0  # attempts the core counts as under way and no worker carries yet
        starting: _Attempt | None = None  # the attempt whose worker is being started
        try:
            with self._lock:
                to_close, pending = self._core.take_work()
                if self._core.paused and not self._core.in_use:
                    self._quiet.set()  # pause() is waiting for this
            # close first: a replacement never overlaps on the server with the one it replaces
            for conn in to_close:
                await self._close_connection(conn)
            budget = self._shared_budget
            while pending:
                if budget is not None:  # a manager's overcommitted budget: a ticket first
                    granted, victim = budget.take(self)
                    if not granted:
                        with self._lock:
                            self._core.attempt_abandoned(False)
                        pending -= 1
                        if victim is not None:  # a sibling's idle connection makes room
                            await victim._evict_one()
                        continue
                starting = _Attempt()
                pending -= 1
                aspawn(self._workers, self._connect_worker, starting, name=f"{self.name}-connect")
                starting = None
        except BaseException:  # interrupted (KeyboardInterrupt, cancelled): no attempt is lost
            with self._lock:
                if starting is not None and not starting.claimed:  # its worker never ran
                    starting.abandoned = True
                    pending += 1
                for _ in range(pending):
                    self._core.attempt_abandoned(False)
            raise

    async def _close_connection(self, conn: AsyncConnection[Any]) -> None:
        conn._pool = None  # so that psycopg really closes it
        try:
            await conn.close()
        except Exception as ex:  # closing a broken connection: nothing left to do
            logger.debug("pool %r: error closing a connection: %s", self.name, ex)
        await self._give_back_ticket()

    async def _give_back_ticket(self) -> None:
        """Under a manager's shared budget: a connection of this pool closed (or an attempt
        gave up); the starved siblings try to take the ticket it frees."""
        budget = self._shared_budget
        if budget is not None:
            for pool in budget.give_back(self):
                await pool._do_work()

    def _has_evictable_idle(self) -> bool:
        """An idle connection could be closed for a sibling (above min_size)."""
        core = self._core
        return bool(core.idle or self._parked_clients) and core.size > core.min_size

    async def _evict_one(self) -> None:
        """Close the connection idle the longest, for a sibling pool under a shared budget."""
        if not self._core.idle:
            await self._reclaim()
        with self._lock:
            evicted = self._core.evict_idle()
        if evicted:
            logger.info("pool %r: an idle connection closed for a sibling pool", self.name)
            await self._do_work()

    async def _connect_worker(self, attempt_claim: _Attempt) -> None:
        """Open one connection, retrying with backoff while the server is unreachable."""
        with self._lock:  # _do_work() may have given the attempt up, interrupted as it started us
            if attempt_claim.abandoned:
                return
            attempt_claim.claimed = True
        attempt = 0
        counted = True  # the core counts this attempt as in progress (``connecting``)
        ticket = True  # under a shared budget, this attempt holds a ticket
        retrier = False  # this attempt is the one retrying an unreachable server
        try:
            while True:
                t0 = monotonic()
                generation = self._core.generation
                try:
                    conn, slot_number = await self._connect()
                except Exception as ex:
                    now = monotonic()
                    with self._lock:
                        delay = self._core.connect_failed(now, _describe_error(ex), attempt)
                        gave_up = delay is not None and self._core.retry_gave_up(now)
                    counted = retrier = delay is not None
                    if attempt == 0:
                        logger.warning(
                            "pool %r: connection attempt failed: %s",
                            self.name,
                            _describe_error(ex),
                        )
                    if gave_up:
                        await self._call_reconnect_failed()
                    if delay is None:
                        ticket = False
                        await self._give_back_ticket()
                        await self._do_work()
                        return
                    if await self._closing.wait_timeout(delay):
                        with self._lock:
                            self._core.attempt_abandoned(retrier)
                        counted = ticket = False
                        await self._give_back_ticket()
                        return
                    attempt += 1
                    continue
                probe = make_probe(conn, _PROBE_HOLDS_GIL)
                defaults = server_defaults(conn)
                # what clients start with: the connection as the pool made it, not as a
                # getconn() user may leave it
                start = self._client_class._start_from(conn, self.policy)
                if self._template is None:
                    self._template = conn
                    self._template_start = start
                    self._between = BetweenTransactions(self.policy.name, conn.pgconn)
                now = monotonic()
                with self._lock:
                    slot = self._core.new_slot(conn, now, now - t0, retrier, generation)
                    counted = ticket = False  # the connection holds it now
                    slot.probe = probe
                    slot.defaults = defaults
                    slot.client_start = start
                    slot.settings = defaults.settings
                    slot.reported = defaults.reported
                    slot.budget_slot = slot_number
                    self._core.place(slot, now)
                    if self._core.ready:
                        self._ready.set()
                await self._do_work()
                return
        except BaseException:  # cancelled (the pool closing, the event loop ending)
            if counted:
                with self._lock:
                    self._core.attempt_abandoned(retrier)
            if ticket and self._shared_budget is not None:
                self._shared_budget.give_back(self, wake=False)
            raise

    async def _connect(self) -> tuple[AsyncConnection[Any], int | None]:
        """A new server connection, configured, and the slot it holds (across processes)."""
        conninfo = resolve(self.conninfo)
        kwargs = resolve(self.kwargs)
        if isawaitable(conninfo):  # async-only
            conninfo = await conninfo  # async-only
        if isawaitable(kwargs):  # async-only
            kwargs = await kwargs  # async-only
        conn = await self.connection_class.connect(conninfo, **(kwargs or {}))
        try:
            if self._configure is not None:
                await self._configure(conn)
                if conn.pgconn.transaction_status != _IDLE:
                    raise e.ProgrammingError(
                        f"configure left the connection in status "
                        f"{TransactionStatus(conn.pgconn.transaction_status).name}: "
                        "commit or roll back in configure"
                    )
            if self._check is not None and self._core.check_failures:
                # checks keep failing: a failure here backs off as a failed attempt does,
                # instead of opening connection after connection for the waiting clients
                await self._check(conn)
                with self._lock:
                    self._core.check_failures = 0
            slot_number = None
            if self._slots is not None:
                slot_number = await self._take_budget_slot(conn, None)
                if slot_number is None:
                    raise NoFreeSlot(
                        f"pool {self.name!r}: all {self._slots[1]} connection slots it shares "
                        "with the other processes are taken"
                    )
        except BaseException:
            await conn.close()
            raise
        conn._pool = self  # type: ignore[assignment]  # psycopg: 'with conn' won't close it
        return conn, slot_number

    async def _take_budget_slot(self, conn: AsyncConnection[Any], wanted: int | None) -> int | None:
        """Take an advisory-lock slot of the pool's budget across processes (``wanted``
        first, if given): its number, or None if every slot is taken. One round trip."""
        assert self._slots is not None
        namespace, n = self._slots
        if wanted is not None and wanted < n:
            row = await _outside_transaction(
                conn, TAKE_THIS_SLOT, {"namespace": namespace, "slot": wanted}
            )
            if row is not None and row[0]:
                return wanted
        row = await _outside_transaction(
            conn, TAKE_SLOT, {"namespace": namespace, "n": n, "start": random.randrange(n)}
        )
        return None if row is None else int(row[0])

    async def _call_reconnect_failed(self) -> None:
        logger.error(
            "pool %r: could not connect for reconnect_timeout=%.1f s; still retrying",
            self.name,
            self._core.reconnect_timeout,
        )
        if self._reconnect_failed is None:
            return
        try:
            result = self._reconnect_failed(self)  # sync: self._reconnect_failed(self)
            if isawaitable(result):  # async-only
                await result  # async-only
        except Exception as ex:
            logger.warning("pool %r: reconnect_failed callback raised: %s", self.name, ex)

    async def _maintain(self) -> float:
        """One round of maintenance: replace the idle connections found dead (so that the pool
        is back to min_size after a server restart without waiting for a request), expire idle
        and old ones, roll back idle transactions, report leaks. Returns the seconds until the
        next round. The server connections parked since the last round come back first: for
        the pool, they are idle."""
        await self._reclaim(every=True, parked_for=IDLE_PROBE_INTERVAL)
        with self._lock:
            delay = min(self._core.maintain(monotonic(), _alive), IDLE_PROBE_INTERVAL)
        await self._do_work()
        limit = self.idle_in_transaction_timeout
        if limit is not None:
            await self._reap_idle_transactions(limit)
            delay = min(delay, max(0.05, limit / 4))
        if self._leak_timeout is not None:
            self._report_leaks(self._leak_timeout)
            delay = min(delay, max(0.05, self._leak_timeout / 4))
        return delay

    def __del__(self) -> None:
        """Dropped without close(): the maintenance worker stops (it holds no reference to the
        pool) and the server connections close with their objects, as psycopg_pool's do."""
        core = self.__dict__.get("_core")
        if core is None or core.closed or not core.opened:
            return
        core.closed = True
        aspawn_detached(self._loop, set(), _wake, self._closing, name=f"{self.name}-dropped")

    def _report_leaks(self, limit: float) -> None:
        """Log, once per checkout, each server connection held longer than ``limit``: who took
        it (the stack), and what its client is doing (HikariCP's leak detection)."""
        now = monotonic()
        with self._lock:
            held = self._core.held_longer_than(limit, now)
            stacks = []
            for slot in held:
                stacks.append((slot, slot.leak_stack, now - slot.checked_out_at))
                slot.leak_stack = None
        for slot, stack, seconds in stacks:
            while stack and stack[-1].filename.startswith(PACKAGE_DIR):
                stack.pop()  # the pool's own frames: the application's are what matter
            client = next((c for c in _snapshot(self._clients.values()) if c._slot is slot), None)
            status = TransactionStatus(slot.conn.pgconn.transaction_status).name
            holder = (
                f"{type(client).__name__} in state {client.state.name}"
                if client is not None
                else "a connection from getconn()"
            )
            logger.warning(
                "pool %r: a server connection has been held for %.1f s "
                "(leak_timeout=%g s), possibly leaked: held by %s, transaction status %s; "
                "it was taken at:\n%s",
                self.name,
                seconds,
                limit,
                holder,
                status,
                "".join(traceback.format_list(stack)).rstrip(),
            )

    async def _reap_idle_transactions(self, limit: float) -> None:
        """Roll back the transactions of clients idle in them longer than ``limit``."""
        now = monotonic()
        for client in _snapshot(self._clients.values()):
            if not isinstance(client, AsyncTransactionModeConnection):
                continue  # session mode: the server's idle_in_transaction_session_timeout
            slot = client._slot
            if slot is None or now - client._guard.active_at < limit:
                continue
            status = slot.conn.pgconn.transaction_status
            if (status != _INTRANS and status != _INERROR) or not client._guard.try_acquire():
                continue  # no transaction, or the client is running something right now
            try:
                if client._slot is slot:
                    await client._abort_transaction(
                        f"pool {self.name!r}: this connection's transaction was rolled back "
                        f"after {now - client._guard.active_at:.1f} s idle in transaction "
                        f"(idle_in_transaction_timeout={limit:g} s); its work is lost: "
                        "run the transaction again, without pausing inside it"
                    )
            except Exception as ex:
                logger.warning("pool %r: could not abort an idle transaction: %s", self.name, ex)
            finally:
                client._guard.release()

    # -- clients --------------------------------------------------------------------------------

    def _client_pinned(self, detail: str) -> None:
        with self._lock:
            self._core.clients_pinned += 1
            first = not self._pinned_logged
            self._pinned_logged = True
        if first:  # once per pool: pinning is a design choice of the application, not an event
            logger.warning(
                "pool %r (%s mode): a client changed session state (%s) and is pinned to its "
                "server connection until that state is undone or it closes; this is logged "
                "once per pool, see stats().clients_pinned",
                self.name,
                self.policy.name,
                detail,
            )

    async def _apply_session(
        self, slot: Slot[AsyncConnection[Any]], wanted: dict[str, str]
    ) -> None:
        """Give a server connection the session settings a client keeps (``wanted``): SET
        what differs, RESET what the client does not set; one round trip, none if they match.
        The names and values come from statements the client ran itself (_session_state's
        plain_setting: names are identifiers)."""
        current = slot.session
        statements = [
            f"SET {name} = {value}" for name, value in wanted.items() if current.get(name) != value
        ]
        statements += [f"RESET {name}" for name in current if name not in wanted]
        if not statements:
            return
        conn = slot.conn
        await _outside_transaction(conn, "; ".join(statements))
        slot.session = dict(wanted)
        slot.reported = reported_parameters(conn.pgconn)

    def _client_unpinned(self) -> None:
        """A pinned client undid the session state that pinned it."""
        with self._lock:
            self._core.client_released(True, 0, 0)

    async def _session_state_left(
        self, slot: Slot[AsyncConnection[Any]], client_lock: Any
    ) -> set[SessionChange] | None:
        """Which kinds of session state a client's server connection holds now (one query,
        outside any transaction; None if it cannot be asked now). ``client_lock`` is the
        client's psycopg lock: no statement of the client runs meanwhile."""
        conn = slot.conn
        async with client_lock:
            if conn.pgconn.transaction_status != _IDLE:
                return None
            try:
                row = await _outside_transaction(
                    conn, SESSION_STATE_QUERY, {"namespace": self._slots[0] if self._slots else -1}
                )
            except Exception as ex:
                logger.debug("pool %r: could not look at the session state: %s", self.name, ex)
                return None
        if row is None:
            return None
        return {kind for kind, present in zip(SESSION_STATE_COLUMNS, row, strict=True) if present}

    def _client_lost(
        self, slot: Slot[AsyncConnection[Any]] | None, pinned: bool, parked: bool = False
    ) -> None:
        """A client was garbage-collected without close(): its server connection, whose state
        is unknown, is closed and replaced (``parked``: clean and idle, it is reused). Called
        from a finalizer, in whatever thread collected the client: the asynchronous pool hands
        the work to its event loop."""
        if slot is None:
            return
        aspawn_detached(self._loop, self._workers, self._recover, slot, pinned, parked, name="lost")

    async def _recover(
        self, slot: Slot[AsyncConnection[Any]], pinned: bool, parked: bool = False
    ) -> None:
        reusable = parked and not reported_changed(slot)
        with self._lock:
            now = monotonic()
            if parked:
                slot.unpark(now)
            self._core.checkin(slot, now, reusable)
            if pinned:
                self._core.client_released(True, 0, 0)
        # a replacement for the waiters: none of them would start it while they wait
        await self._do_work()

    # -- stats ----------------------------------------------------------------------------------

    def stats(self) -> PoolStats:
        """Live figures: gauges of now and counters since creation."""
        core = self._core
        clients = idle = parked = 0
        pending = [0, 0]
        for client in _snapshot(self._clients.values()):
            clients += 1
            if client._parked:  # its server connection is idle, kept for it
                parked += 1
                idle += 1
            elif client._slot is None:
                idle += 1
            pending[0] += client._statements
            pending[1] += client._transactions
        with self._lock:
            return PoolStats(
                name=self.name,
                mode=self.policy.name,
                min_size=core.min_size,
                max_size=core.max_size,
                clients_open=clients,
                clients_idle=idle,
                clients_active=core.in_use - parked,
                clients_waiting=len(core.waiters),
                clients_pinned=core.clients_pinned,
                servers_active=core.in_use - parked,
                servers_idle=len(core.idle) + parked,
                servers_connecting=core.connecting,
                requests_total=core.requests,
                requests_queued_total=core.requests_queued,
                wait_ms_total=round(core.wait_ms),
                timeouts_total=core.timeouts,
                rejected_total=core.rejected,
                usage_ms_total=round(core.usage_ms),
                connections_opened_total=core.connections_opened,
                connections_failed_total=core.connections_failed,
                connect_ms_total=round(core.connect_ms),
                connections_lost_total=core.connections_lost,
                connections_closed_total=core.connections_closed,
                returns_bad_total=core.returns_bad,
                statements_total=core.statements + pending[0],
                transactions_total=core.transactions + pending[1],
            )

    def get_stats(self) -> dict[str, int]:
        """The stats with psycopg_pool's keys."""
        return self.stats().psycopg_pool_dict()

    def pop_stats(self) -> dict[str, int]:
        """The stats with psycopg_pool's keys, then reset the counters."""
        stats = self.get_stats()
        with self._lock:
            self._core.reset_counters()
        return stats


async def _outside_transaction(conn: AsyncConnection[Any], query: Any, params: Any = None) -> Any:
    """Run ``query`` on an idle server connection of the pool in autocommit (no transaction
    left open, whatever the connection's own setting), and return its first row, if it
    returns rows. The pool's own statements: never prepared."""
    autocommit = conn.autocommit
    if not autocommit:
        await conn.set_autocommit(True)
    try:
        cursor = await conn.execute(query, params, prepare=False)
        return await cursor.fetchone() if cursor.description is not None else None
    finally:
        if not autocommit and conn.pgconn.transaction_status == _IDLE:
            await conn.set_autocommit(False)


async def _restore_settings(conn: AsyncConnection[Any], settings: tuple[Any, ...]) -> None:
    """Give a connection back the settings it had when it was opened (autocommit, isolation
    level, read-only, deferrable): a getconn() user may have changed them."""
    autocommit, isolation_level, read_only, deferrable = settings
    if conn.autocommit is not autocommit:
        await conn.set_autocommit(autocommit)
    if conn.isolation_level is not isolation_level:
        await conn.set_isolation_level(isolation_level)
    if conn.read_only is not read_only:
        await conn.set_read_only(read_only)
    if conn.deferrable is not deferrable:
        await conn.set_deferrable(deferrable)


#: every pool of this process, for the fork handler
_pools: weakref.WeakSet[AsyncPool] = weakref.WeakSet()


async def _maintenance_worker(pool_ref: weakref.ref[AsyncPool], closing: AEvent) -> None:
    """Maintain the pool until it closes; between rounds it holds no reference to the pool, so
    that a pool dropped without close() is collected (its finalizer sets ``closing``)."""
    delay = 0.0
    while not await closing.wait_timeout(delay):
        pool = pool_ref()
        if pool is None:
            return
        delay = await pool._maintain()
        del pool


class _Attempt:
    """A connection attempt handed to a worker: claimed by the worker when it runs, or
    abandoned by _do_work() if starting the worker was interrupted first."""

    __slots__ = ("abandoned", "claimed")

    def __init__(self) -> None:
        self.claimed = False
        self.abandoned = False


async def _wake(event: AEvent) -> None:
    event.set()


def _alive(slot: Slot[AsyncConnection[Any]]) -> bool:
    return is_alive(slot.conn, slot.probe)


def _after_fork_in_child() -> None:
    for pool in list(_pools):
        pool._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _drop_stand_ins_at_exit() -> None:
    """At interpreter exit, before the final collection: the stand-ins transaction-mode clients
    hold between transactions are psycopg PGconn objects (_psycopg.BetweenTransactions), whose
    finalizer fails once their class is torn down; the pools and clients still alive let go of
    them first (the clients are closed for good then)."""
    for pool in list(_pools):
        for client in _snapshot(pool._clients.values()):
            if client.pgconn is pool._between:
                client._close_at_exit()
        pool._between = None


atexit.register(_drop_stand_ins_at_exit)


def _snapshot(clients: Collection[weakref.ref[Client]]) -> list[Client]:
    """The clients now, of a registry's weak references (pool._clients.values(),
    pool._parked_clients.values()): a registry is added to without the pool's lock (by
    connect() in other threads), and a dict changing while it is copied raises RuntimeError:
    copy again."""
    while True:
        try:
            refs = list(clients)
        except RuntimeError:
            continue
        return [client for ref in refs if (client := ref()) is not None]


def _describe_error(ex: BaseException) -> str:
    # libpq's messages name host, port and user; but a malformed conninfo is quoted whole
    # (with its password) in some of them: they are redacted
    text = redact(str(ex).strip().replace("\n", " "))
    return f"{type(ex).__name__}: {text}" if text else type(ex).__name__
