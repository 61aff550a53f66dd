"""Every use of psycopg's private attributes, in one place.

A pooled connection (``connection.py``) is a real psycopg connection object that borrows the
libpq connection (``pgconn``) and the prepared-statement manager (``_prepared``) of the server
connection it is bound to: psycopg has no public way to do that, nor to list or drop a
connection's handlers, nor to make it forget prepared statements that a ``DISCARD ALL`` dropped
on the server. Those reaches into psycopg live here, and ``tests/test_psycopg_internals.py``
fails loudly on a psycopg release that moved any of them (supported: psycopg 3.2 and 3.3).
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn

import psycopg
from psycopg import BaseConnection
from psycopg.pq import ConnStatus, TransactionStatus

from .errors import PolicyViolation

if TYPE_CHECKING:
    from psycopg.pq.abc import PGconn

__all__ = [
    "ALONE",
    "CAN_RENEW",
    "FORKED",
    "RETURNED",
    "SPARE_CLIENTS",
    "UNOPENED",
    "BetweenTransactions",
    "ClientPrototype",
    "ServerDefaults",
    "adopted_settings",
    "apply_prepared_settings",
    "attach",
    "check_connection_ok",
    "close_locally",
    "cursor_pgconn",
    "detach",
    "drop_client_handlers",
    "forget_declared",
    "forget_prepared",
    "forget_transaction_blocks",
    "mark_closed",
    "point_at",
    "prepared_settings",
    "reported_changed",
    "reported_parameters",
    "restore_prepared_settings",
    "run_setting",
    "server_defaults",
    "tpc_begun",
]


class _StandIn:
    """What the stand-ins for a libpq connection share: a message, and every attribute they
    lack raises an error with it."""

    __slots__ = ()
    message: str

    def __getattr__(self, name: str) -> NoReturn:
        raise psycopg.OperationalError(self.message)

    def refuse(self) -> NoReturn:
        """Raise the error for any I/O attempted with this stand-in."""
        raise psycopg.OperationalError(self.message)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.message}>"


class DetachedPGconn(_StandIn):
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


#: psycopg's C implementation (psycopg[binary], psycopg[c]) takes only its own PGconn where a
#: connection's ``pgconn`` is read by C code; the Python one takes any object. Before 3.3 its C
#: code crashes on a PGconn with no libpq connection: there it gets a TypeError instead
_C_IMPLEMENTATION = psycopg.pq.__impl__ != "python" and tuple(
    int(part) for part in psycopg.__version__.split(".")[:2]
) >= (3, 3)
_PGconnBase: Any = psycopg.pq.PGconn if _C_IMPLEMENTATION else object


class BetweenTransactions(_StandIn, _PGconnBase):  # type: ignore[misc]
    """What a transaction- or statement-mode client holds between transactions: psycopg sees
    an open, idle connection (``closed`` is False, ``info.transaction_status`` is IDLE, the
    encoding and the server's version and parameters are those of the pool's connections);
    whatever needs a server connection raises ``PolicyViolation`` with ``message``.

    It is a ``PGconn`` of psycopg's implementation with no libpq connection under it: psycopg's
    C code (the loaders it makes while reading rows, such as records', and its escaping) takes
    nothing else; what it reads of it then is libpq's default for no connection (UTF-8)."""

    __slots__ = (
        "_encoding",
        "_parameters",
        "db",
        "host",
        "message",
        "mode",
        "port",
        "protocol_version",
        "server_version",
        "user",
        *(() if _C_IMPLEMENTATION else ("notice_handler", "notify_handler")),
    )

    status = ConnStatus.OK
    transaction_status = TransactionStatus.IDLE
    pipeline_status = 0

    def __new__(cls, *args: Any) -> BetweenTransactions:
        return _PGconnBase.__new__(cls)  # type: ignore[no-any-return]

    def __init__(self, mode: str, template: PGconn) -> None:
        self.message = (
            "{mode} pooling mode: this connection holds no server connection between "
            "transactions, and {what} needs one: use it inside a transaction() block, set it "
            "up in the pool's configure callback, or use mode='session'"
        )
        #: the pool's mode, for the messages (a pool manager may change it live)
        self.mode = mode
        self._encoding = template._encoding
        self.server_version = template.server_version
        self.protocol_version = template.protocol_version
        self.host, self.port, self.user, self.db = (
            template.host,
            template.port,
            template.user,
            template.db,
        )
        self._parameters = {name: template.parameter_status(name) for name in SNAPSHOT_PARAMETERS}

    def parameter_status(self, name: bytes) -> bytes | None:
        return self._parameters.get(name)

    def __getattr__(self, name: str) -> NoReturn:
        raise PolicyViolation(self.message.format(mode=self.mode, what=repr(name)))

    def refuse(self) -> NoReturn:
        raise PolicyViolation(self.message.format(mode=self.mode, what="this"))


def _refusing(name: str) -> property:
    def refuse(self: BetweenTransactions) -> NoReturn:
        raise PolicyViolation(self.message.format(mode=self.mode, what=repr(name)))

    return property(refuse)


# what the C PGconn offers beyond what the stand-in answers itself (its libpq calls) is refused
# as what the stand-in lacks is: with PolicyViolation, naming it
for _name in dir(_PGconnBase):
    if (
        not _name.startswith("_")
        and _name not in BetweenTransactions.__dict__
        and _name
        not in (
            "finish",  # PGconn's finalizer calls it: nothing to finish
            "notice_handler",
            "notify_handler",
        )
    ):
        setattr(BetweenTransactions, _name, _refusing(_name))


#: the parameters a client between transactions can read (those the server reports at startup)
SNAPSHOT_PARAMETERS = (
    b"application_name",
    b"client_encoding",
    b"DateStyle",
    b"integer_datetimes",
    b"IntervalStyle",
    b"is_superuser",
    b"server_encoding",
    b"server_version",
    b"session_authorization",
    b"standard_conforming_strings",
    b"TimeZone",
)

#: a connection from ``pool.connection()`` before its block is entered
UNOPENED: Any = DetachedPGconn(
    "this connection comes from pool.connection() and opens when its block is entered: use "
    "it as '[async] with pool.connection() as conn:', or call pool.connect() for a "
    "connection to keep"
)
#: a pooled connection of a process's parent, in a forked child
FORKED: Any = DetachedPGconn(
    "the connection was opened before this process was forked: its server connection is the "
    "parent's; open a new one (pool.connect()) in the child"
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


#: session parameters the server reports to the client when they change (ParameterStatus): a
#: change the statement's text did not show (a function running SET ROLE or set_config, a DO
#: block) is caught by comparing them with the connection's values when it was opened
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


def reported_parameters(pgconn: PGconn) -> tuple[bytes | None, ...]:
    """The values of REPORTED_PARAMETERS as the server last reported them (no round trip)."""
    return tuple(map(pgconn.parameter_status, REPORTED_PARAMETERS))


def reported_changed(slot: Any) -> bool:
    """The server reported a session parameter changing since the connection was opened (or
    since the pool last set its clients' settings on it)."""
    try:
        return bool(reported_parameters(slot.conn.pgconn) != slot.reported)
    except Exception:  # a closed connection: it will not be reused anyway
        return False


@dataclass(frozen=True, slots=True)
class ServerDefaults:
    """What a server connection was like when the pool opened it: what the pool restores when
    a client, or a getconn() user, gives it back."""

    #: autocommit, isolation level, read-only, deferrable (psycopg keeps them on the object)
    settings: tuple[Any, ...]
    #: REPORTED_PARAMETERS' values: a session change no statement showed differs from them
    reported: tuple[bytes | None, ...]
    #: the pool's notice handlers on the object (the liveness probe's)
    notice_handlers: tuple[Any, ...]
    #: the libpq connection's notice and notify callbacks, pointed at a client while it
    #: borrows the connection
    callbacks: tuple[Any, Any]
    #: prepare_threshold and prepared_max
    prepared: tuple[int | None, int]


def server_defaults(conn: BaseConnection[Any]) -> ServerDefaults:
    """Take a new server connection's ServerDefaults."""
    pgconn = conn.pgconn
    return ServerDefaults(
        settings=(conn.autocommit, conn.isolation_level, conn.read_only, conn.deferrable),
        reported=reported_parameters(pgconn),
        notice_handlers=tuple(conn._notice_handlers),
        callbacks=(pgconn.notice_handler, pgconn.notify_handler),
        prepared=prepared_settings(conn),
    )


def mark_closed(conn: BaseConnection[Any], closed: bool) -> None:
    """psycopg's "closed by close()" flag, which tells ``closed`` from ``broken``."""
    conn._closed = closed


def tpc_begun(conn: BaseConnection[Any]) -> bool:
    """A two-phase transaction was begun and not prepared yet."""
    return conn._tpc is not None and not conn._tpc[1]


def adopted_settings(template: BaseConnection[Any], autocommit: bool | None) -> dict[str, Any]:
    """What a new client takes of a server connection (the settings the pool's ``kwargs`` and
    ``configure`` gave it; ``autocommit``, if not None, the policy's), as entries of the
    client's ``__dict__``: its starting point, set in one update. What the client changes
    after that is its own. (The cursor factories and adapters, which the client class keeps
    in slots, are its ``_start_from()``'s.)"""
    return {
        "_closed": False,
        "row_factory": template.row_factory,  # type: ignore[attr-defined]
        "_autocommit": template._autocommit if autocommit is None else autocommit,
        "_isolation_level": template._isolation_level,
        "_read_only": template._read_only,
        "_deferrable": template._deferrable,
        "_begin_statement": template._begin_statement,
        "_adapters": None,  # a copy of the template's at first use (the client's adapters)
    }


_THREAD_LOCK = type(threading.Lock())
#: the notifications backlog new clients share until a notification arrives for one of them
#: (then it gets its own): nothing is ever appended to it
_SHARED_BACKLOG: deque[Any] = deque()


class ClientPrototype:
    """What psycopg's connection ``__init__`` gives a connection, made once per client class
    (a real ``__init__``, so that what a psycopg version adds comes along) and copied into
    each new client: psycopg's ``__init__`` costs more than the rest of a checkout, and
    allocates what a client holding no server connection never uses.

    Each copy gets its own handler lists and lock. It shares the prototype's prepared-statement
    manager (a bound client uses its server connection's; ``attach``) and an empty
    notifications backlog (its own at its first notification; ``_client_notify_handler``).
    Only for classes whose ``__init__`` is psycopg's: a subclass's own ``__init__`` could make
    state that must not be shared, so its clients are made by calling it."""

    __slots__ = ("lock_type", "slots", "state")

    def __init__(self, cls: type[Any], slots: tuple[str, ...]) -> None:
        proto = cls(UNOPENED)
        state = dict(proto.__dict__)
        for name in ("_notice_handlers", "_notify_handlers", "lock"):
            del state[name]
        if "_notifies_backlog" in state:  # (psycopg 3.2.x has none)
            state["_notifies_backlog"] = _SHARED_BACKLOG
        self.state = state
        lock_type = type(proto.lock)
        self.lock_type: Any = threading.Lock if lock_type is _THREAD_LOCK else lock_type
        #: values the prototype's __init__ left in the client class's slots (the cursor
        #: factories), copied too
        self.slots = tuple((name, getattr(proto, name)) for name in slots)

    @staticmethod
    def applies_to(cls: type[Any], base: type[Any]) -> bool:
        """Clients of ``cls`` can be copied (its ``__init__`` is psycopg's ``base``'s)."""
        return cls.__init__ is base.__init__

    def new(self, cls: type[Any]) -> Any:
        client: Any = object.__new__(cls)
        fields = client.__dict__
        fields.update(self.state)
        fields["_notice_handlers"] = []
        fields["_notify_handlers"] = []
        fields["lock"] = self.lock_type()
        for name, value in self.slots:
            setattr(client, name, value)
        return client

    def renew(self, client: Any) -> None:
        """Make a closed client of this prototype's class as new (``new()``), in place: what
        its user set on it (settings, factories, adapters, handlers, attributes of its own)
        is gone; its handler lists and lock are kept if empty and free."""
        fields = client.__dict__
        notice, notify = fields["_notice_handlers"], fields["_notify_handlers"]
        lock = fields["lock"]
        fields.clear()
        fields.update(self.state)
        fields["_notice_handlers"] = [] if notice else notice
        fields["_notify_handlers"] = [] if notify else notify
        fields["lock"] = self.lock_type() if lock.locked() else lock
        for name, value in self.slots:
            setattr(client, name, value)


def _refs_of_a_lone_local() -> int:
    spares = deque([object()])
    client = spares.popleft()
    return sys.getrefcount(client)


#: what ``sys.getrefcount()`` says of an object that one local variable alone refers to, as
#: this interpreter counts (measured with the code of the pool's ``_spare_client``): a closed
#: client is made anew only if nothing else refers to it
ALONE = _refs_of_a_lone_local()
#: reference counts tell who refers to an object: CPython, with the GIL (a free-threaded build
#: makes no client anew)
CAN_RENEW = sys.implementation.name == "cpython" and getattr(sys, "_is_gil_enabled", lambda: True)()
#: closed clients a pool keeps to make anew (enough for a thread or task each that keeps its
#: last one in a variable, as a loop of ``with pool.connection() as conn`` does)
SPARE_CLIENTS = 8


def _client_notify_handler(wself: Any, pgn: Any) -> None:
    client = wself()
    if client is not None and client.__dict__.get("_notifies_backlog") is _SHARED_BACKLOG:
        client._notifies_backlog = deque()
    BaseConnection._notify_handler(wself, pgn)


def attach(client: BaseConnection[Any], server: BaseConnection[Any]) -> None:
    """Bind ``client`` to ``server``'s libpq connection and prepared statements: notices and
    notifications the server sends go to the client from now on (its handlers, its
    ``notifies()``)."""
    pgconn = server.pgconn
    client.pgconn = pgconn
    client._prepared = server._prepared
    handlers = getattr(client, "_pgpoolkit_handlers", None)
    if handlers is None:  # made once per client, as psycopg makes them once per connection
        wself = client._ref  # type: ignore[attr-defined]  # (its own: see _own_weakref)
        handlers = client._pgpoolkit_handlers = (  # type: ignore[attr-defined]
            partial(BaseConnection._notice_handler, wself),
            partial(_client_notify_handler, wself),
        )
    pgconn.notice_handler, pgconn.notify_handler = handlers


def detach(client: BaseConnection[Any], standin: Any, handlers: tuple[Any, Any]) -> None:
    """Take the libpq connection away from ``client`` (leaving ``standin``) and give the
    server connection its own notice and notify callbacks back."""
    pgconn = client.pgconn
    client.pgconn = standin
    pgconn.notice_handler, pgconn.notify_handler = handlers


def apply_prepared_settings(conn: BaseConnection[Any], chosen: tuple[int | None, int]) -> None:
    """Give a server connection's prepared-statement manager a client's prepare_threshold and
    prepared_max."""
    prepared = conn._prepared
    prepared.prepare_threshold, prepared.prepared_max = chosen


def prepared_settings(conn: BaseConnection[Any]) -> tuple[int | None, int]:
    """A server connection's prepare_threshold and prepared_max, which psycopg keeps on its
    prepared-statement manager: a client borrowing the manager can change them."""
    prepared = conn._prepared
    return (prepared.prepare_threshold, prepared.prepared_max)


def restore_prepared_settings(conn: BaseConnection[Any], saved: tuple[int | None, int]) -> None:
    prepared = conn._prepared
    if (prepared.prepare_threshold, prepared.prepared_max) != saved:
        prepared.prepare_threshold, prepared.prepared_max = saved


#: psycopg's generators that change a connection's settings: with no transaction open and no
#: pipeline (a client between transactions) they end without any I/O
_SETTING_GENERATORS = frozenset(
    getattr(BaseConnection, name).__code__
    for name in (
        "_set_autocommit_gen",
        "_set_isolation_level_gen",
        "_set_read_only_gen",
        "_set_deferrable_gen",
    )
)


def run_setting(gen: Any) -> tuple[bool, Any]:
    """Run a settings generator of psycopg to its end without a server connection: (True, its
    value), or (False, None) if ``gen`` is anything else (and must not run)."""
    if getattr(gen, "gi_code", None) not in _SETTING_GENERATORS:
        return False, None
    try:
        gen.send(None)
    except StopIteration as ex:
        return True, ex.value
    gen.close()  # it wanted I/O after all
    return False, None


def cursor_pgconn(cursor: Any) -> Any:
    """The libpq connection a cursor runs on (psycopg takes its connection's at creation)."""
    return cursor._pgconn


def point_at(cursor: Any, pgconn: Any) -> None:
    """Make a cursor run on ``pgconn``: its client's server connection now, which may not be
    the one the cursor was made with (transaction mode)."""
    cursor._pgconn = pgconn


def forget_declared(cursor: Any) -> None:
    """A server-side cursor declared in a transaction that ended (on a server connection its
    client gave back): psycopg must not try to CLOSE it on the next one."""
    cursor._described = False


def close_locally(cursor: Any) -> None:
    """Mark a cursor closed without a round trip (its server-side cursor went with its
    transaction)."""
    cursor._close()


def forget_transaction_blocks(conn: BaseConnection[Any]) -> None:
    """The pool rolled back a client's transaction (idle_in_transaction_timeout): psycopg's
    count of its open transaction() blocks must not forbid its next commit()."""
    conn._num_transactions = 0


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
