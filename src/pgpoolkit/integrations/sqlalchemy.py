"""SQLAlchemy 2 on a pgpoolkit pool (``pgpoolkit[sqlalchemy]``).

::

    import pgpoolkit
    from pgpoolkit.sqlalchemy import create_async_engine, create_engine

    pool = pgpoolkit.Pool("dbname=app", mode="transaction", max_size=5)
    engine = create_engine(pool, json_serializer=orjson_dumps, isolation_level="REPEATABLE READ")

    apool = pgpoolkit.AsyncPool("dbname=app", mode="transaction", max_size=5)
    aengine = create_async_engine(apool)

The engines use the ``postgresql+pgpoolkit://`` dialect: SQLAlchemy's psycopg dialect (sync and
async), whose connections come from the pool instead of ``psycopg.connect()``:

- SQLAlchemy's own pooling is out of the way (``NullPool`` unless you choose another
  ``poolclass``): a connection SQLAlchemy closes goes back to pgpoolkit;
- what the psycopg dialect gives ``psycopg.connect()`` reaches every pooled connection, although
  the pool made it: ``json_serializer`` / ``json_deserializer``, the hstore adapters and
  ``native_inet_types=False`` (the psycopg dialect passes them as ``context=``, which a
  ``creator=`` never sees);
- ``isolation_level`` (``"AUTOCOMMIT"`` included) and ``connect_args`` with the settings of a
  client (``autocommit``, ``prepare_threshold``, ``cursor_factory``, and ``timeout``: how long to
  wait for the pool). The server a connection goes to, and its startup parameters, are the
  pool's: give them to the pool (``conninfo``, ``kwargs=``);
- in statement mode, which refuses multi-statement transactions, the one lookup the dialect makes
  in a transaction (the hstore type) runs on a server connection of its own.

A URL names a pool registered with :func:`register_pool`: ``postgresql+pgpoolkit:///?pool=app``
(for configuration that only takes a URL: ``sqlalchemy.create_engine(url)``, Alembic's
``sqlalchemy.url``). The dialect is registered when this module is imported, and through the
``sqlalchemy.dialects`` entry point when pgpoolkit is installed.

In transaction mode a Session's unit of work borrows one server connection, from its first
statement to its commit or rollback; between units of work the client holds none.
"""

from __future__ import annotations

import weakref
from typing import Any, ClassVar

try:
    import sqlalchemy
    from sqlalchemy.dialects import registry
    from sqlalchemy.dialects.postgresql.psycopg import (
        PGDialect_psycopg,
        PGDialectAsync_psycopg,
    )
    from sqlalchemy.engine import URL, Engine
    from sqlalchemy.exc import ArgumentError
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.ext.asyncio import create_async_engine as _sa_create_async_engine
    from sqlalchemy.pool import NullPool
    from sqlalchemy.pool import Pool as _SAPool
    from sqlalchemy.util import await_only
except ImportError as ex:  # pragma: no cover - the extra is not installed
    raise ImportError(
        "the SQLAlchemy integration needs SQLAlchemy 2: pip install 'pgpoolkit[sqlalchemy]'"
    ) from ex

from psycopg import AsyncConnection, Connection
from psycopg.types import TypeInfo

from ..aio.pool import AsyncPool
from ..policies import Action, ClientState, Event
from ..pool import Pool

__all__ = [
    "PGDialectAsync_pgpoolkit",
    "PGDialect_pgpoolkit",
    "create_async_engine",
    "create_engine",
    "register_pool",
    "unregister_pool",
]

#: the dialect's URL: the server and its parameters come from the pool
URL_PREFIX = "postgresql+pgpoolkit://"

#: what ``connect_args`` may hold: the settings of a client, applied to each pooled connection
CLIENT_SETTINGS = frozenset({"autocommit", "prepare_threshold", "cursor_factory", "timeout"})

_pools: weakref.WeakValueDictionary[str, Pool | AsyncPool] = weakref.WeakValueDictionary()


def register_pool(pool: Pool | AsyncPool, name: str | None = None) -> str:
    """Make ``pool`` reachable from a URL: ``postgresql+pgpoolkit:///?pool=<name>``.

    ``name`` defaults to the pool's own name (``Pool(..., name="app")``). The registry holds the
    pool weakly: a pool dropped by the application leaves it. Returns the name.
    """
    if not isinstance(pool, (Pool, AsyncPool)):
        raise TypeError(f"register_pool() takes a pgpoolkit Pool or AsyncPool, got {pool!r}")
    key = pool.name if name is None else name
    if not isinstance(key, str) or not key:
        raise ValueError(f"name must be a non-empty string, got {key!r}")
    current = _pools.get(key)
    if current is not None and current is not pool:
        raise ValueError(
            f"name {key!r} is registered already for another pool ({current!r}): "
            "unregister_pool() it first, or choose another name"
        )
    _pools[key] = pool
    return key


def unregister_pool(name: str) -> None:
    """Forget the pool registered as ``name`` (nothing if there is none)."""
    _pools.pop(name, None)


def create_engine(pool: Pool, **kwargs: Any) -> Engine:
    """A SQLAlchemy :class:`~sqlalchemy.engine.Engine` whose connections come from ``pool``.

    ``kwargs`` are :func:`sqlalchemy.create_engine`'s: ``json_serializer``,
    ``json_deserializer``, ``isolation_level`` (``"AUTOCOMMIT"`` included), ``connect_args``
    (client settings: ``autocommit``, ``prepare_threshold``, ``cursor_factory``, ``timeout``),
    ``echo``, ``execution_options``... SQLAlchemy keeps no connections of its own
    (``poolclass=NullPool``) unless ``poolclass`` says otherwise; ``pool_pre_ping`` is not
    needed (the pool checks every connection it hands out).
    """
    if not isinstance(pool, Pool):
        raise TypeError(
            f"create_engine() takes a pgpoolkit.Pool, got {pool!r}"
            + (": for an AsyncPool, create_async_engine()" if isinstance(pool, AsyncPool) else "")
        )
    return sqlalchemy.create_engine(URL_PREFIX, pgpoolkit_pool=pool, **kwargs)


def create_async_engine(pool: AsyncPool, **kwargs: Any) -> AsyncEngine:
    """A SQLAlchemy :class:`~sqlalchemy.ext.asyncio.AsyncEngine` whose connections come from
    ``pool``; ``kwargs`` as for :func:`create_engine`."""
    if not isinstance(pool, AsyncPool):
        raise TypeError(
            f"create_async_engine() takes a pgpoolkit.AsyncPool, got {pool!r}"
            + (": for a Pool, create_engine()" if isinstance(pool, Pool) else "")
        )
    return _sa_create_async_engine(URL_PREFIX, pgpoolkit_pool=pool, **kwargs)


def _refuses_transactions(pool: Pool | AsyncPool) -> bool:
    """Statement mode (or a policy like it): a multi-statement transaction is refused."""
    return pool.policy.decide(ClientState.IDLE, Event.BEGIN, "") is Action.REFUSE


def _client_settings(cparams: dict[str, Any]) -> tuple[float | None, dict[str, Any]]:
    """``connect_args`` split into the pool's wait timeout and the client settings; anything
    else (a server's address, a startup parameter) is the pool's to decide."""
    unknown = sorted(set(cparams) - CLIENT_SETTINGS)
    if unknown:
        raise ArgumentError(
            f"connect_args {', '.join(map(repr, unknown))} can't be set on a pooled connection: "
            "the server and its connection parameters are the pool's (give them to the Pool: "
            "conninfo, kwargs=). connect_args takes " + ", ".join(sorted(CLIENT_SETTINGS))
        )
    settings = dict(cparams)
    return settings.pop("timeout", None), settings


class _PgpoolkitDialect:
    """What the sync and async dialects add to SQLAlchemy's psycopg ones."""

    driver = "pgpoolkit"
    supports_statement_cache = True
    #: the pool class the pool expects of its connections
    _pool_class: ClassVar[type[Pool] | type[AsyncPool]]

    pgpoolkit_pool: Pool | AsyncPool | None
    _pool_name: str | None
    _hstore_info: TypeInfo | None

    # attributes of SQLAlchemy's dialect
    _json_serializer: Any
    _json_deserializer: Any

    def __init__(
        self,
        pgpoolkit_pool: Pool | AsyncPool | None = None,
        client_encoding: str | None = None,
        **kwargs: Any,
    ) -> None:
        psycopg_dialect: Any = super()  # (SQLAlchemy's psycopg dialect is not annotated)
        psycopg_dialect.__init__(**kwargs)
        self._init_pgpoolkit(pgpoolkit_pool, client_encoding)

    def _init_pgpoolkit(
        self, pgpoolkit_pool: Pool | AsyncPool | None, client_encoding: str | None
    ) -> None:
        if pgpoolkit_pool is not None and not isinstance(pgpoolkit_pool, self._pool_class):
            raise ArgumentError(
                f"pgpoolkit_pool must be a pgpoolkit.{self._pool_class.__name__} for this "
                f"engine, got {pgpoolkit_pool!r}"
            )
        if client_encoding is not None:
            raise ArgumentError(
                "client_encoding is a parameter of the server connections: give it to the pool "
                "(kwargs={'client_encoding': ...})"
            )
        self.pgpoolkit_pool = pgpoolkit_pool
        self._pool_name = None
        self._hstore_info = None

    @classmethod
    def get_pool_class(cls, url: URL) -> type[_SAPool]:
        """NullPool: the pgpoolkit pool does the pooling."""
        return NullPool

    def create_connect_args(self, url: URL) -> tuple[list[Any], dict[str, Any]]:
        """The URL names nothing but, optionally, a registered pool (``?pool=name``)."""
        if url.host or url.port or url.username or url.password or url.database:
            raise ArgumentError(
                f"{URL_PREFIX} takes its server from the pool: give host, port, user, password "
                "and database to the pgpoolkit pool's conninfo, and the pool to the engine "
                "(pgpoolkit.sqlalchemy.create_engine(pool)) or its name to the URL "
                f"({URL_PREFIX}/?pool=name, after register_pool(pool))"
            )
        query = dict(url.query)
        name = query.pop("pool", None)
        if query:
            raise ArgumentError(
                f"{URL_PREFIX} takes no parameter but pool=name, got {', '.join(sorted(query))}: "
                "connection parameters are the pool's"
            )
        if isinstance(name, tuple):
            raise ArgumentError(f"{URL_PREFIX}: pool= given more than once")
        if name is not None and self.pgpoolkit_pool is not None:
            raise ArgumentError("give the engine a pool, or a URL naming one: not both")
        self._pool_name = name
        return [], {}

    def _pool(self) -> Any:
        pool = self.pgpoolkit_pool
        if pool is not None:
            return pool
        name = self._pool_name
        if name is None:
            raise ArgumentError(
                f"{URL_PREFIX} has no pool: use pgpoolkit.sqlalchemy.create_engine(pool) (or "
                f"create_async_engine(pool)), or register_pool(pool) and {URL_PREFIX}/?pool=name"
            )
        pool = _pools.get(name)
        if pool is None:
            known = ", ".join(map(repr, sorted(_pools))) or "none"
            raise ArgumentError(
                f"no pgpoolkit pool is registered as {name!r} (registered: {known}): call "
                "pgpoolkit.sqlalchemy.register_pool(pool) before the engine connects"
            )
        if not isinstance(pool, self._pool_class):
            raise ArgumentError(
                f"the pool registered as {name!r} is a {type(pool).__name__}: this engine "
                f"needs a pgpoolkit.{self._pool_class.__name__}"
            )
        return pool

    def on_connect(self) -> Any:
        """psycopg's dialect's on_connect (the notice logger, the isolation level), after the
        client's adapters (``_adapt``); the same for the sync and async dialects."""
        psycopg_dialect: Any = super()
        psycopg_on_connect = psycopg_dialect.on_connect()

        def on_connect(conn: Any) -> None:
            self._adapt(psycopg_dialect.get_driver_connection(conn))
            psycopg_on_connect(conn)

        return on_connect

    def _adapt(self, conn: Connection[Any] | AsyncConnection[Any]) -> None:
        """Give a new pooled connection the adapters the psycopg dialect gives the connections
        it makes itself (through ``context=``): JSON functions, hstore, inet as text. They go on
        the client's own adapters: nothing reaches the server connection or other clients."""
        if self._json_serializer:
            from psycopg.types.json import set_json_dumps

            set_json_dumps(self._json_serializer, conn)
        if self._json_deserializer:
            from psycopg.types.json import set_json_loads

            set_json_loads(self._json_deserializer, conn)
        if getattr(self, "_native_inet_types", None) is False:
            from psycopg.types.string import TextLoader

            conn.adapters.register_loader("inet", TextLoader)
            conn.adapters.register_loader("cidr", TextLoader)
        if self._hstore_info is not None:
            from psycopg.types.hstore import register_hstore

            register_hstore(self._hstore_info, conn)


class PGDialect_pgpoolkit(_PgpoolkitDialect, PGDialect_psycopg):
    """``postgresql+pgpoolkit://``: SQLAlchemy's psycopg dialect on a :class:`pgpoolkit.Pool`
    (``create_engine(url, pgpoolkit_pool=pool)``, or ``?pool=name`` in the URL)."""

    supports_statement_cache = True
    _pool_class = Pool

    @classmethod
    def get_async_dialect_cls(cls, url: URL) -> type[PGDialectAsync_pgpoolkit]:
        return PGDialectAsync_pgpoolkit

    def connect(self, *cargs: Any, **cparams: Any) -> Any:
        """A pooled connection: ``pool.connect()`` with the ``connect_args`` settings."""
        pool: Pool = self._pool()
        timeout, settings = _client_settings(cparams)
        conn = pool.connect(timeout)
        try:
            for name, value in settings.items():
                setattr(conn, name, value)
        except BaseException:
            conn.close()
            raise
        return conn

    def _type_info_fetch(self, connection: Any, name: str) -> TypeInfo | None:
        pool: Pool = self._pool()
        if _refuses_transactions(pool):  # TypeInfo.fetch() opens a transaction: not here
            raw = pool.getconn()
            try:
                info = TypeInfo.fetch(raw, name)
            finally:
                pool.putconn(raw)
        else:
            psycopg_dialect: Any = super()
            info = psycopg_dialect._type_info_fetch(connection, name)
        if name == "hstore":
            self._hstore_info = info
        return info


class PGDialectAsync_pgpoolkit(_PgpoolkitDialect, PGDialectAsync_psycopg):
    """``postgresql+pgpoolkit://`` under ``create_async_engine()``: SQLAlchemy's async psycopg
    dialect on a :class:`pgpoolkit.AsyncPool`."""

    supports_statement_cache = True
    _pool_class = AsyncPool

    def connect(self, *cargs: Any, **cparams: Any) -> Any:
        """A pooled connection: ``await pool.connect()`` with the ``connect_args`` settings,
        in SQLAlchemy's adapter."""
        pool: AsyncPool = self._pool()
        timeout, settings = _client_settings(cparams)

        async def connect() -> AsyncConnection[Any]:
            conn = await pool.connect(timeout)
            try:
                for name, value in settings.items():
                    if name == "autocommit":
                        await conn.set_autocommit(value)
                    else:
                        setattr(conn, name, value)
            except BaseException:
                await conn.close()
                raise
            return conn

        return self.loaded_dbapi.connect(async_creator_fn=connect)

    def _type_info_fetch(self, connection: Any, name: str) -> TypeInfo | None:
        pool: AsyncPool = self._pool()
        if _refuses_transactions(pool):
            info = await_only(self._fetch_outside(pool, name))
        else:
            psycopg_dialect: Any = super()
            info = psycopg_dialect._type_info_fetch(connection, name)
        if name == "hstore":
            self._hstore_info = info
        return info

    @staticmethod
    async def _fetch_outside(pool: AsyncPool, name: str) -> TypeInfo | None:
        raw = await pool.getconn()
        try:
            return await TypeInfo.fetch(raw, name)
        finally:
            await pool.putconn(raw)


registry.register("postgresql.pgpoolkit", __name__, "PGDialect_pgpoolkit")
