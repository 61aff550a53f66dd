"""AsyncPooledConnection: what an AsyncPool hands out, a psycopg AsyncConnection.

``pgpoolkit/connection.py`` is generated from ``pgpoolkit/aio/connection.py`` by
``tools/async_to_sync.py``: edit the aio one.

A pooled connection is an instance of ``psycopg.AsyncConnection`` (of the pool's
``connection_class``, generic ``AsyncConnection[Row]`` included), so every library that takes a
psycopg connection takes it: ``TypeInfo.fetch``, adapters, row factories, SQLAlchemy. It is a
connection object of its own that borrows the libpq connection and the prepared statements of a
server connection of the pool (``_psycopg.attach``) while it is bound to one. What a client
changes on its connection object (autocommit, isolation level, row and cursor factories,
adapters, handlers, a two-phase transaction) goes with the object and never reaches the next
client; what it changes on the server (SET, LISTEN, temporary tables...) is seen by its cursors
(``cursor.py``) and reset before the server connection is reused.

This class is session mode's: bound from ``connect()`` (or entering a ``connection()`` block)
until ``close()``, with nothing of the pool's on the statement path but the cursors' look at
the query. Transaction and statement modes bind per transaction: ``transaction_mode.py``.
"""

from __future__ import annotations

import weakref
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, cast, get_origin

from psycopg import AsyncConnection
from psycopg import adapters as global_adapters
from psycopg.adapt import AdaptersMap
from psycopg.pq import TransactionStatus
from psycopg.rows import Row

from .._client import ClientRules, HandBack
from .._core import Slot
from .._psycopg import (
    FORKED,
    RETURNED,
    UNOPENED,
    ClientPrototype,
    adopted_settings,
    apply_prepared_settings,
    attach,
    check_connection_ok,
    detach,
    mark_closed,
    prepared_settings,
)
from .._session_state import HELD, PLAIN, inspect_query, merge_info
from ..policies import ClientState, Event, Policy
from .cursor import AsyncWatchedCursor, AsyncWatchedServerCursor, watched

if TYPE_CHECKING:
    from .pool import AsyncPool

__all__ = ["AsyncPooledConnection", "pooled_class"]

_IDLE = TransactionStatus.IDLE
_UNKNOWN = TransactionStatus.UNKNOWN


class AsyncPooledConnection(AsyncConnection[Row]):
    """A psycopg AsyncConnection whose server connection comes from an :class:`AsyncPool`.

    Use it as any psycopg connection; ``close()`` (or the end of its ``async with`` block:
    commit on success, rollback on error) gives the server connection back to the pool. A
    closed pooled connection behaves as a closed psycopg connection: any use raises
    ``OperationalError``, and its cursors can no longer run.
    """

    # attributes of the pool's own in slots: psycopg's stay few enough for Python to share
    # their keys between instances, which keeps an idle client small (benchmarks: memory)
    __slots__ = (
        "_adapters_from",
        "_box",
        "_chosen_prepared",
        "_cursor_factory",
        "_owner",
        "_pgpoolkit_handlers",
        "_pool",
        "_ref",
        "_released",
        "_rules",
        "_server_cursor_factory",
        "_statements",
        "_timeout",
        "_transactions",
        "_unopened",
    )

    #: what this class's cursors add to the cursor classes a user chooses (cursor.py)
    _cursor_mixin: type = AsyncWatchedCursor
    _server_cursor_mixin: type = AsyncWatchedServerCursor
    #: cursor class -> its watched subclass, for this class's mixins (see __init_subclass__)
    _watched_classes: dict[Any, Any] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._watched_classes = {}  # a subclass may have other mixins

    # psycopg's own attributes, plus the pool's:
    _owner: AsyncPool
    #: the bound server connection, or nothing (a list: one pop() claims it, whichever thread)
    _box: list[Slot[AsyncConnection[Any]]]
    _timeout: float | None
    #: made by pool.connection(), not opened yet: it opens on entering its block
    _unopened: bool
    #: closed: its server connection went back to the pool for good
    _released: bool
    #: the adapters the client's own are copied from, at first use (its pool's)
    _adapters_from: AdaptersMap
    #: what the policy decides for this client, and what it decided (_client.py)
    _rules: ClientRules
    #: prepare_threshold and prepared_max as the client set them (None: the pool's)
    _chosen_prepared: tuple[int | None, int] | None
    _statements: int
    _transactions: int
    #: its notice and notify callbacks, set on the server connection it binds (_psycopg.attach)
    _pgpoolkit_handlers: tuple[Any, Any]
    #: its own weak reference: its entry in pool._clients (once opened), its handlers'
    _ref: weakref.ref[AsyncPooledConnection[Any]]
    #: holding a parked server connection (only a transaction-mode client parks one)
    _parked: bool = False

    @classmethod
    def _for_pool(cls, pool: AsyncPool, timeout: float | None) -> AsyncPooledConnection[Any]:
        """A new, unopened client of ``pool`` (``pool._open_client()`` opens it)."""
        prototype = _prototypes.get(cls)
        if prototype is None and ClientPrototype.applies_to(cls, AsyncConnection):
            prototype = _prototypes[cls] = ClientPrototype(cls, _FACTORY_SLOTS)
        self = cls(UNOPENED) if prototype is None else prototype.new(cls)
        self._ref = weakref.ref(self, _own_weakref)
        self._join(pool, timeout)
        return self

    def _renew(self, pool: AsyncPool, timeout: float | None) -> None:
        """Made anew for ``pool.connection()`` or ``connect()``: a closed client nothing refers
        to any more (``pool._spare_client()``), as if ``_for_pool()`` had made it."""
        _prototypes[type(self)].renew(self)
        self._join(pool, timeout)

    def _join(self, pool: AsyncPool, timeout: float | None) -> None:
        """Become an unopened client of ``pool``."""
        mark_closed(self, True)  # not "broken": closed until opened
        self._released = False
        self._owner = pool
        # psycopg's mark of a connection that belongs to a pool (what psycopg_pool sets):
        # libraries look at it; psycopg's own uses of it (close(), __exit__) are overridden
        self._pool = cast(Any, pool)
        self._adapters_from = global_adapters
        self._box = []
        self._timeout = timeout
        self._unopened = True
        self._rules = ClientRules(pool.policy, pool._answers, pool._slots is not None)
        self._chosen_prepared = None
        self._statements = self._transactions = 0

    @property
    def adapters(self) -> AdaptersMap:
        """The connection's adapters (psycopg's): a copy of its pool's, made at first use (an
        idle client holds none)."""
        adapters = self._adapters
        if adapters is None:
            adapters = self._adapters = AdaptersMap(self._adapters_from)
        return adapters

    # -- the cursor factories: psycopg's or the user's classes, watched (cursor.py) ---------------

    @property
    def cursor_factory(self) -> Any:
        return self._cursor_factory

    @cursor_factory.setter
    def cursor_factory(self, factory: Any) -> None:
        self._cursor_factory = self._watched(factory)

    @property
    def server_cursor_factory(self) -> Any:
        return self._server_cursor_factory

    @server_cursor_factory.setter
    def server_cursor_factory(self, factory: Any) -> None:
        self._server_cursor_factory = self._watched(factory)

    @classmethod
    def _watched(cls, factory: Any) -> Any:
        """``factory`` (a cursor class) with this class's cursor mixins."""
        watched_cls = cls._watched_classes.get(factory)  # made once per cursor class
        if watched_cls is None:
            watched_cls = cls._watched_classes[factory] = watched(
                factory, cls._cursor_mixin, cls._server_cursor_mixin
            )
        return watched_cls

    _check_connection_ok = check_connection_ok

    # -- prepared statements: the client's choice, applied to whichever server it borrows ------

    @property
    def prepare_threshold(self) -> int | None:
        return cast("int | None", self._prepared_setting(0))

    @prepare_threshold.setter
    def prepare_threshold(self, value: int | None) -> None:
        self._choose_prepared(0, value)

    @property
    def prepared_max(self) -> int | None:
        return cast("int | None", self._prepared_setting(1))

    @prepared_max.setter
    def prepared_max(self, value: int | None) -> None:
        self._choose_prepared(1, 0 if value is None else value)

    def _prepared_setting(self, index: int) -> Any:
        chosen = self._chosen_prepared
        if chosen is not None:
            return chosen[index]
        return prepared_settings(self)[index]  # the server's, or psycopg's default

    def _choose_prepared(self, index: int, value: Any) -> None:
        current = self._chosen_prepared or prepared_settings(self)
        chosen = (value, current[1]) if index == 0 else (current[0], value)
        self._chosen_prepared = chosen
        if self._box:
            apply_prepared_settings(self, chosen)

    # -- the pool's side --------------------------------------------------------------------------

    @property
    def pool(self) -> AsyncPool:
        """The pool this connection belongs to."""
        return self._owner

    @property
    def state(self) -> ClientState:
        """Where the client stands: idle (holding no server connection), bound, in transaction,
        or pinned."""
        bound = bool(self._box) and not self._parked  # (parked: idle between transactions)
        return self._rules.state(bound, bound and self.pgconn.transaction_status != _IDLE)

    @property
    def _slot(self) -> Slot[AsyncConnection[Any]] | None:
        box = self._box
        return box[0] if box else None

    @classmethod
    def _start_from(cls, template: AsyncConnection[Any], policy: Policy) -> ClientStart:
        """What the clients of this class and ``policy`` start with, taken from ``template``
        (a server connection of the pool, as the pool made it): the pool keeps it, and each
        new client takes it in one step (``_opened``)."""
        return ClientStart(
            cls,
            policy,
            adopted_settings(template, policy.autocommit),
            cls._watched(template.cursor_factory),
            cls._watched(template.server_cursor_factory),
            template.adapters,
        )

    def _opened(self, start: ClientStart) -> None:
        """Counted in by the pool: take the pool's settings (``_start_from()``)."""
        self._unopened = False
        self.__dict__.update(start.fields)  # (psycopg's "closed by close()" flag too)
        self._cursor_factory = start.cursor_factory
        self._server_cursor_factory = start.server_cursor_factory
        self._adapters_from = start.adapters

    def _forget_after_fork(self) -> None:
        """This process was forked: the server connection the client holds is the parent's.
        Let go of it without a word to the server (the parent still uses it): the client is
        closed for the child."""
        self._box.clear()
        self._released = True
        mark_closed(self, True)
        self.pgconn = FORKED

    def _close_at_exit(self) -> None:
        """The interpreter exits with the client open between transactions: it lets go of its
        stand-in (see pool._drop_stand_ins_at_exit), without a word to any server."""
        self._released = True
        mark_closed(self, True)
        self.pgconn = RETURNED

    async def _abandon(self) -> None:
        """Opening failed: give back the server connection bound meanwhile, if any."""
        if self._box:
            self._unopened = False
            await self.close()

    async def _bind(self, timeout: float | None = None) -> Slot[AsyncConnection[Any]]:
        pool = self._owner
        slot = await pool._acquire(timeout)
        try:  # (no call between the acquire and here: an interrupt cannot fall in between)
            attach(self, slot.conn)
            if self._chosen_prepared is not None:
                apply_prepared_settings(self, self._chosen_prepared)
            self._box.append(slot)
        except BaseException:
            if self._box and self._box[-1] is slot:
                self._box.pop()
            await pool._release(slot)
            raise
        return slot

    def _saw(self, query: Any, held: bool = False) -> None:
        """A statement is about to run (called by the cursors): count it, and note the session
        state it changes (or refuse it, if the policy says so)."""
        self._statements += 1
        if self.autocommit:
            self._transactions += 1
        info = inspect_query(query)
        if info is not PLAIN or held:
            self._rules.before(
                merge_info(info, HELD) if held else info,
                Event.STATEMENT,
                "",
                True,
                self.pgconn.transaction_status != _IDLE,
            )

    def _refuse_begin(self, detail: str) -> None:
        """Ask the policy about a transaction starting (it raises PolicyViolation if refused)."""
        self._rules.before(
            PLAIN,
            Event.BEGIN,
            detail,
            bool(self._box),
            bool(self._box) and self.pgconn.transaction_status != _IDLE,
        )

    def transaction(self, *args: Any, **kwargs: Any) -> Any:
        if self._owner._begin_refused:
            self._refuse_begin("transaction()")
        return super().transaction(*args, **kwargs)

    def _set_autocommit_gen(self, value: bool) -> Any:
        if not value and self._owner._begin_refused:
            self._refuse_begin("autocommit = False")
        return super()._set_autocommit_gen(value)

    def _hand_back(self) -> tuple[HandBack, int, int]:
        """The server connection goes back: what the pool must do with it, the statements and
        transactions run on it; the client starts afresh."""
        back = self._rules.hand_back()
        statements, transactions = self._statements, self._transactions
        self._statements = self._transactions = 0
        return back, statements, transactions

    async def commit(self) -> None:
        self._transactions += 1
        await super().commit()

    async def rollback(self) -> None:
        self._transactions += 1
        await super().rollback()

    # -- life cycle -------------------------------------------------------------------------------

    async def close(self) -> None:
        """Give the server connection back to the pool (rolled back if a transaction is open,
        reset if the session was changed). Closing twice does nothing."""
        if self._released or self._unopened:
            return
        self._released = True
        rules = self._rules
        if rules.answers.close_may_reset:
            bound = bool(self._box)
            rules.on_close(bound, bound and self.pgconn.transaction_status != _IDLE)
        mark_closed(self, True)
        pool = self._owner
        slot = None
        try:
            slot = self._take_slot(RETURNED)
            lease = slot.checked_out_at if slot is not None else 0.0
            if slot is not None:
                await pool._release_client(self, slot, False)
        except BaseException:  # interrupted while giving it back: the pool takes it, closed
            if slot is not None:
                pool._settle(slot, lease)
            raise
        finally:
            pool._clients.pop(id(self), None)
        if type(self) is pool._spare_class and not pool._core.closed:
            pool._spare_clients.append(self)  # to be made anew, once nothing refers to it

    def _take_slot(self, standin: Any) -> Slot[AsyncConnection[Any]] | None:
        """Claim the bound server connection (one pop: whichever thread claims it first) and
        leave ``standin`` in its place."""
        try:
            slot = self._box.pop()
        except IndexError:
            self.pgconn = standin
            return None
        detach(self, standin, slot.defaults.callbacks)
        return slot

    async def __aenter__(self) -> AsyncPooledConnection[Row]:
        if self._unopened:  # pool.connection(): open for the block
            await self._owner._open_client(self, self._timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        """As psycopg: commit if the block succeeded, roll back if it raised; then close (the
        pool rolls back what is still open)."""
        if self._released:
            return
        try:
            if exc_type is None and self._box:
                status = self.pgconn.transaction_status
                if status != _IDLE and status != _UNKNOWN:
                    await self.commit()
        finally:
            await self.close()

    def __repr__(self) -> str:
        # psycopg's, with the pool's name and mode
        text = super().__repr__()
        at = text.rfind(" at 0x")
        owner = self._owner
        return f"{text[:at]} pool={owner.name!r} mode={owner.policy.name}{text[at:]}"

    def __del__(self) -> None:  # type: ignore[override]
        # dropped without close(): the pool takes the server connection back all the same
        box = getattr(self, "_box", None)
        if box is None:  # not made by a pool
            return
        pool = self._owner
        clients = pool._clients
        held = clients.get(id(self))
        if held is not None:
            client = held()
            if client is self or client is None:  # (None: collected in a cycle)
                clients.pop(id(self), None)
                if pool._parked_clients.get(id(self)) is held:
                    pool._parked_clients.pop(id(self), None)
        if box:  # (parked, it is clean and idle: reused)
            pool._client_lost(box[0], self._rules.pinned, self._parked)


def _own_weakref(ref: object) -> None:
    """The callback of a client's own weak reference (``_ref``). It does nothing, but a weak
    reference with a callback is never the one ``weakref.ref(client)`` returns elsewhere, so
    the pool can count the weak references that others hold (``pool._spare_client``)."""


class ClientStart(NamedTuple):
    """What a new client takes of a server connection: its settings, factories and adapters
    (``AsyncPooledConnection._start_from``)."""

    #: the client class and policy it was made for (a mode change makes a new one)
    cls: type[Any]
    policy: Policy
    #: entries of the client's ``__dict__`` (_psycopg.adopted_settings)
    fields: dict[str, Any]
    cursor_factory: Any
    server_cursor_factory: Any
    #: the adapters the client's own are copied from, at first use
    adapters: AdaptersMap


_pooled_classes: dict[tuple[type, type], type[AsyncPooledConnection[Any]]] = {}


#: client class -> the prototype its clients are copied from (_psycopg.ClientPrototype)
_prototypes: dict[type[Any], ClientPrototype] = {}
#: the slots psycopg's __init__ fills in (through the cursor factory properties)
_FACTORY_SLOTS = ("_cursor_factory", "_server_cursor_factory")


def pooled_class(
    connection_class: Any, mode_class: type[AsyncPooledConnection[Any]] = AsyncPooledConnection
) -> type[AsyncPooledConnection[Any]]:
    """The class of a pool's pooled connections: ``mode_class`` (AsyncPooledConnection, or its
    transaction-mode subclass) mixed with the pool's ``connection_class`` (a subclass of
    AsyncConnection, or a generic alias of one such as ``AsyncConnection[DictRow]``), so that
    they are instances of both."""
    base = get_origin(connection_class) or connection_class
    if base is AsyncConnection or issubclass(mode_class, base):
        return mode_class
    if issubclass(base, AsyncPooledConnection):
        return cast("type[AsyncPooledConnection[Any]]", base)
    cls = _pooled_classes.get((base, mode_class))
    if cls is None:
        cls = type(
            f"Pooled{base.__name__}",
            (mode_class, base),
            {"__module__": base.__module__, "__qualname__": f"Pooled{base.__qualname__}"},
        )
        _pooled_classes[base, mode_class] = cls
    return cls
