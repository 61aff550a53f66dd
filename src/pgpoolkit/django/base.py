"""Django's PostgreSQL backend on a pgpoolkit pool (``ENGINE: "pgpoolkit.django"``).

Everything is Django's ``django.db.backends.postgresql`` backend (features, operations,
introspection, schema editor, ``vendor = "postgresql"`` so that ``django.contrib.postgres``
works) except where a connection comes from and goes back to:

- ``pool``: one :class:`pgpoolkit.Pool` per database alias per process, built on first use
  from the alias's settings and ``OPTIONS["pool"]`` (Django's keys, which are psycopg_pool's,
  plus pgpoolkit's: ``mode``, ``max_clients``, ``idle_in_transaction_timeout``...), closed by
  ``close_pool()`` as Django's is;
- ``get_new_connection()``: ``pool.connect()``, a pooled ``psycopg.Connection`` that in
  transaction mode holds a server connection only while a transaction (or an autocommit
  statement) runs; ``_close()`` closes it, which gives its server connection back;
- the per-connection settings Django applies with ``SET`` on every connection it opens (the
  time zone, ``OPTIONS["assume_role"]``) are startup parameters of the server connections
  instead (``options="-c TimeZone=... -c role=..."``): each server connection has them from the
  start, a reset (``DISCARD ALL``) keeps them, and a request never changes session state, so it
  never pays a reset. With ``OPTIONS["pool"]["startup_parameters"] = False`` (for a proxy that
  refuses startup parameters) the pool's ``configure`` callback SETs them instead, on each new
  server connection and again after a reset: never on a request either;
- named (server-side) cursors are made through the pooled connection, so that the pool sees
  them (a ``WITH HOLD`` cursor is session state) and, in transaction mode, they run on the
  server connection their transaction holds;
- SQL composed with literals outside a transaction (``ops.compose_sql()``: the debug cursor's
  log with ``server_side_binding``, ``sqlmigrate``; ``schema_editor.quote_value()``: check
  constraints, partial indexes), which libpq escapes with a server connection, is escaped
  without one by a transaction-mode connection holding none (quotes and backslashes escaped as
  psycopg does for SQL written to a file), instead of failing.

Without ``OPTIONS["pool"]`` the backend pools with pgpoolkit's defaults (session mode,
``min_size=4``); ``"pool": False`` turns pooling off (Django's plain backend).
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import psycopg
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql import base as postgresql
from django.db.backends.postgresql.operations import DatabaseOperations as PostgresOperations
from django.db.backends.postgresql.psycopg_any import IsolationLevel, register_tzloader
from django.db.backends.postgresql.schema import DatabaseSchemaEditor as PostgresSchemaEditor
from django.utils.asyncio import async_unsafe
from psycopg import ClientCursor
from psycopg.pq import Format
from psycopg.sql import SQL, Literal, quote

from ..connection import PooledConnection
from ..policies import ClientState
from ..pool import Pool

__all__ = ["DatabaseWrapper"]

#: Pool parameters the backend sets itself, and where the setting goes instead
_RESERVED = {
    "conninfo": "the connection comes from NAME, USER, PASSWORD, HOST, PORT and OPTIONS",
    "kwargs": "connection parameters go in OPTIONS, beside 'pool'",
    "open": "the pool opens at the first connection",
}


def startup_option(name: str, value: str) -> str:
    """One ``-c name=value`` of libpq's ``options`` (spaces and backslashes escaped)."""
    escaped = value.replace("\\", "\\\\").replace(" ", "\\ ")
    return f"-c {name}={escaped}"


def _configure_with(settings: dict[str, str], then: Any) -> Any:
    """A pool ``configure`` callback that SETs ``settings`` (what differs from what the server
    reports, the role always) on each new server connection and after each reset, then calls
    ``then`` (the user's callback), if any."""
    statements = {
        "TimeZone": SQL("SET TIME ZONE {}"),
        "role": SQL("SET ROLE {}"),
    }

    def configure(conn: psycopg.Connection[Any]) -> None:
        for name, value in settings.items():
            if name == "role" or conn.info.parameter_status(name) != value:
                conn.execute(statements[name].format(Literal(value)))
        if then is not None:
            then(conn)

    return configure


def between_transactions(connection: Any) -> bool:
    """A transaction-mode pooled connection holding no server connection now (libpq's escaping
    needs one)."""
    return isinstance(connection, PooledConnection) and connection.state is ClientState.IDLE


class _NoServerCursor(ClientCursor[Any]):
    """A client-side-binding cursor whose adapters see no connection: it merges parameters
    into a query as psycopg does for SQL written to a file (``mogrify()`` only)."""

    @property
    def connection(self) -> Any:
        return None


class DatabaseOperations(PostgresOperations):
    """Django's PostgreSQL operations; ``compose_sql()`` works between transactions."""

    def compose_sql(self, sql: str, params: Any) -> str:
        self.connection.ensure_connection()
        connection = self.connection.connection
        if between_transactions(connection):
            return _NoServerCursor(connection).mogrify(sql, params)
        return str(super().compose_sql(sql, params))


class DatabaseSchemaEditor(PostgresSchemaEditor):
    """Django's PostgreSQL schema editor; ``quote_value()`` works between transactions."""

    def quote_value(self, value: Any) -> str:
        self.connection.ensure_connection()
        connection = self.connection.connection
        if not between_transactions(connection):
            return str(super().quote_value(value))
        if isinstance(value, str):
            value = value.replace("%", "%%")  # as Django's
        return quote(value, connection.adapters)  # the client's adapters, no connection


class DatabaseWrapper(postgresql.DatabaseWrapper):
    """Django's PostgreSQL ``DatabaseWrapper`` whose connections come from a pgpoolkit pool.

    ``connections[alias].pool`` is the alias's :class:`pgpoolkit.Pool` (``pool.stats()``), or
    None when pooling is off (``OPTIONS["pool"] = False``).
    """

    display_name = "PostgreSQL (pgpoolkit)"
    ops_class = DatabaseOperations
    SchemaEditorClass = DatabaseSchemaEditor

    #: alias -> its pool, in this process (Django's own dict is its backend's)
    _connection_pools: ClassVar[dict[str, Pool]] = {}
    #: alias -> the database (NAME) its pool connects to
    _pool_databases: ClassVar[dict[str, Any]] = {}
    _pools_lock: ClassVar[threading.Lock] = threading.Lock()

    # -- the pool ---------------------------------------------------------------------------------

    @property
    def pool(self) -> Pool | None:
        """The alias's pool (made at first use, opened at the first connection), or None.

        A pool follows its alias to another database: when ``NAME`` changes (Django's test
        runner points the alias at the test database), the old pool is closed and a new one
        made.
        """
        alias = self.alias
        if alias == NO_DB_ALIAS:
            return None
        options = self.settings_dict["OPTIONS"].get("pool", True)
        if options is False or options is None:
            return None
        name = self.settings_dict["NAME"]
        pool = self._connection_pools.get(alias)
        if pool is not None and self._pool_databases.get(alias) == name:
            return pool
        with self._pools_lock:
            pool = self._connection_pools.get(alias)
            if pool is not None and self._pool_databases.get(alias) == name:
                return pool
            old = pool
            pool = self._connection_pools[alias] = self._make_pool(options)
            self._pool_databases[alias] = name
        if old is not None:
            old.close()
        return pool

    def _make_pool(self, options: Any) -> Pool:
        where = f"DATABASES[{self.alias!r}]['OPTIONS']['pool']"
        if self.settings_dict.get("CONN_MAX_AGE", 0) != 0:
            raise ImproperlyConfigured(
                f"DATABASES[{self.alias!r}]: pooling doesn't support persistent connections: "
                "set CONN_MAX_AGE to 0 (the pool keeps the server connections open), or "
                "'pool': False"
            )
        if options is True:
            options = {}
        if not isinstance(options, dict):
            raise ImproperlyConfigured(
                f"{where} must be a dict of pool parameters or True, not {options!r}"
            )
        options = dict(options)
        for key, instead in _RESERVED.items():
            if key in options:
                raise ImproperlyConfigured(f"{where}: {key!r} is not accepted here: {instead}")
        startup = options.pop("startup_parameters", True)
        if not isinstance(startup, bool):
            raise ImproperlyConfigured(f"{where}: 'startup_parameters' must be True or False")
        settings = self._session_settings()
        if not startup and settings:
            options["configure"] = _configure_with(settings, options.get("configure"))
        if "check" not in options and self.settings_dict["CONN_HEALTH_CHECKS"]:
            options["check"] = Pool.check_connection
        options.setdefault("name", f"django-{self.alias}")
        try:
            return Pool(
                kwargs=self._pool_kwargs(settings if startup else {}), open=False, **options
            )
        except (TypeError, ValueError) as ex:
            raise ImproperlyConfigured(f"{where}: {ex}") from ex

    def _session_settings(self) -> dict[str, str]:
        """What Django would SET on each connection: the time zone, the role to assume."""
        settings = {}
        if self.timezone_name:
            settings["TimeZone"] = self.timezone_name
        role = self.settings_dict["OPTIONS"].get("assume_role")
        if role:
            settings["role"] = role
        return settings

    def _pool_kwargs(self, startup: dict[str, str]) -> dict[str, Any]:
        """The server connections' parameters: Django's, with ``startup`` (the settings Django
        would SET on each connection) as startup parameters."""
        kwargs = self.get_connection_params()
        # Server connections idle in autocommit: the pool's configure callback (if any) runs
        # outside a transaction, and Django sets each connection's autocommit itself.
        kwargs["autocommit"] = True
        # prepare_threshold: Django's default (None, psycopg's prepared statements off, which
        # only server_side_binding cursors use), or OPTIONS["prepare_threshold"]. Safe in
        # every mode: a client uses the prepared statements of the server connection it holds.
        options = [kwargs["options"]] if kwargs.get("options") else []
        options += [startup_option(name, value) for name, value in startup.items()]
        if options:
            kwargs["options"] = " ".join(options)
        return kwargs

    def close_pool(self) -> None:
        """Close the alias's pool, if it was made (the next connection makes a new one)."""
        with self._pools_lock:
            pool = self._connection_pools.pop(self.alias, None)
            self._pool_databases.pop(self.alias, None)
        if pool is not None:
            pool.close()

    # -- connections ------------------------------------------------------------------------------

    @async_unsafe
    def get_new_connection(self, conn_params: Any) -> Any:
        pool = self.pool
        if pool is None:
            return super().get_new_connection(conn_params)
        # As Django's: self.isolation_level is what OPTIONS says, or READ COMMITTED.
        options = self.settings_dict["OPTIONS"]
        chosen = "isolation_level" in options
        if chosen:
            try:
                self.isolation_level = IsolationLevel(options["isolation_level"])
            except ValueError:
                raise ImproperlyConfigured(
                    f"Invalid transaction isolation level {options['isolation_level']} "
                    "specified. Use one of the psycopg.IsolationLevel values."
                ) from None
        else:
            self.isolation_level = IsolationLevel.READ_COMMITTED
        pool.open()  # opening an open pool does nothing
        connection = pool.connect()
        try:
            if options.get("server_side_binding") is not True:
                # the cursor class Django instantiates itself for named cursors: made by the
                # connection instead (create_cursor), so that the pool sees them
                connection.server_cursor_factory = postgresql.ServerSideCursor
            if chosen:
                # a setting of the client's connection object, sent with each BEGIN: nothing
                # on the server connection to reset
                connection.isolation_level = psycopg.IsolationLevel(self.isolation_level)
        except BaseException:
            connection.close()
            raise
        return connection

    @async_unsafe
    def create_cursor(self, name: str | None = None) -> Any:
        connection = self.connection
        if not name or not isinstance(connection, PooledConnection):
            return super().create_cursor(name)
        # Django's named cursor (QuerySet.iterator()), from the pooled connection's
        # server_cursor_factory (see get_new_connection); WITH HOLD in autocommit, as Django's.
        cursor = connection.cursor(name, scrollable=False, withhold=connection.autocommit)
        tzloader = connection.adapters.get_loader(postgresql.TIMESTAMPTZ_OID, Format.TEXT)
        if self.timezone != getattr(tzloader, "timezone", None):
            register_tzloader(self.timezone, cursor)
        return cursor

    def _close(self) -> None:
        connection = self.connection
        if not isinstance(connection, PooledConnection):
            super()._close()  # type: ignore[misc]
            return
        with self.wrap_database_errors:
            connection.close()  # the server connection goes back to the pool
            self.connection = None
