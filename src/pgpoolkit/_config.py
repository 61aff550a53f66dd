"""Validation of a pool's configuration, once, at construction.

Every error is a ValueError (or TypeError for a wrong type) that names the parameter, the value it
got and what it accepts. The conninfo is never echoed: it may hold a password.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, get_origin

import psycopg
from psycopg.conninfo import conninfo_to_dict

from .policies import Policy, policy_for_mode

_pool_numbers = itertools.count(1)

#: the directory of pgpoolkit's files (its frames are left out of a leak report's stack)
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


@dataclass(frozen=True, slots=True)
class Parameter:
    """One parameter of Pool and AsyncPool: its name, its default as the docs show it, and
    what it means."""

    name: str
    default: str
    doc: str


#: Every parameter of Pool and AsyncPool, in the order the docs list them: the one declaration
#: that the constructors follow (``tests/test_config.py`` checks their signatures against it),
#: that ``pgpoolkit.connect()`` splits its options by, and that the docs' table is written from
#: (``tools/params_table.py``). The values a pool keeps are validated by ``make_config()``.
PARAMETERS: tuple[Parameter, ...] = (
    Parameter(
        "conninfo",
        '`""`',
        "libpq connection string, or a callable returning one "
        "(called at each new connection: rotate credentials without restarting)",
    ),
    Parameter(
        "kwargs",
        "`None`",
        "extra connection parameters for `psycopg.connect()` "
        "(`autocommit`, `prepare_threshold`, `row_factory`, `application_name`, ...), or "
        "a callable returning them",
    ),
    Parameter(
        "connection_class",
        "`psycopg.Connection` / `AsyncConnection`",
        "the class to connect with (a subclass of yours, or a generic alias such as "
        "`Connection[DictRow]`); pooled connections are instances of it too",
    ),
    Parameter("min_size", "`4`", "connections kept open, idle or not"),
    Parameter(
        "max_size",
        "`min_size`",
        "connections never exceeded, counting those being opened; required when `min_size=0`",
    ),
    Parameter(
        "mode",
        '`"session"`',
        'the pooling mode: `"session"`, `"transaction"`, '
        '`"statement"` or a `Policy` instance: see [pooling modes](pooling-modes.md)',
    ),
    Parameter(
        "max_clients",
        "`0` (no limit)",
        "open pooled connections beyond which "
        "`connect()` raises `TooManyClients` (PgBouncer's `max_client_conn`)",
    ),
    Parameter(
        "idle_in_transaction_timeout",
        "`None`",
        "seconds a transaction-mode pooled "
        "connection may sit idle inside a transaction before the pool rolls it back and "
        "takes its server connection (`IdleInTransactionTimeout` at its next use)",
    ),
    Parameter(
        "reset_always",
        "`False`",
        "reset the session (`DISCARD ALL`) every time a server connection goes back, "
        "whatever the client ran: for multi-tenant applications that trust no scan of "
        "their queries (a role or setting changed inside a function is invisible to it)",
    ),
    Parameter(
        "leak_timeout",
        "`None`",
        "seconds a client may hold a server connection before the pool logs a warning, once, "
        "with the stack that took it and the client's state (HikariCP's "
        "`leakDetectionThreshold`); `None`: off",
    ),
    Parameter("name", '`"pool-N"`', "shown in stats, logs, errors, `repr()`"),
    Parameter("timeout", "`30.0`", "seconds a checkout waits before `PoolTimeout`"),
    Parameter(
        "max_waiting",
        "`0` (no limit)",
        "queued requests beyond which `TooManyRequests` is raised at once",
    ),
    Parameter(
        "max_lifetime",
        "`3600.0`",
        "seconds after which a connection is replaced "
        "(each shortened by up to 5% at random, so they do not all expire together)",
    ),
    Parameter(
        "max_idle",
        "`600.0`",
        "seconds an idle connection is kept when the pool is above `min_size`",
    ),
    Parameter(
        "reconnect_timeout",
        "`300.0`",
        "seconds of failed attempts after which `reconnect_failed` is called",
    ),
    Parameter(
        "reconnect_failed",
        "`None`",
        "`callback(pool)`; may be a coroutine function for `AsyncPool`",
    ),
    Parameter(
        "num_workers",
        "`3`",
        "connection attempts under way at once, at most "
        "(psycopg_pool's name: its background workers)",
    ),
    Parameter(
        "configure",
        "`None`",
        "`callback(conn)` on every new connection, and again "
        "after the pool reset a client's session with `DISCARD ALL` (it must leave no "
        "transaction open)",
    ),
    Parameter(
        "check",
        "`None`",
        "`callback(conn)` on every checkout: raise to have the "
        "connection replaced; `Pool.check_connection` runs an empty query",
    ),
    Parameter(
        "reset",
        "`None`",
        "`callback(conn)` on every return, after the rollback: raise "
        "to have the connection discarded",
    ),
    Parameter(
        "close_returns",
        "`False`",
        "`close()` on a connection from `getconn()` gives it "
        "back to the pool, as `putconn()` does (psycopg 3.3 and later, whose `close()` "
        "asks the pool; pooled connections from `connect()` and `connection()` always "
        "go back on `close()`)",
    ),
    Parameter(
        "open",
        "`None`",
        "`Pool`: open in the constructor unless `False`. `AsyncPool`: "
        "opens in `async with`/`open()`; `True` raises `TypeError`",
    ),
)


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """The validated values of a pool's parameters (those that are not callables or
    connection parameters), shared by Pool and AsyncPool."""

    name: str
    policy: Policy
    min_size: int
    max_size: int
    timeout: float
    max_waiting: int
    max_lifetime: float
    max_idle: float
    reconnect_timeout: float
    num_workers: int = 3
    max_clients: int = 0
    idle_in_transaction_timeout: float | None = None
    close_returns: bool = False
    reset_always: bool = False
    leak_timeout: float | None = None


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def _check_seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__} {value!r}")
    seconds = float(value)
    if math.isnan(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a number of seconds {bound}, got {value!r}")
    return seconds


def check_timeout(value: object, name: str = "timeout") -> float:
    """Validate a per-call timeout (seconds > 0)."""
    return _check_seconds(name, value)


def make_config(
    *,
    name: str | None,
    mode: str | Policy,
    min_size: int,
    max_size: int | None,
    timeout: float,
    max_waiting: int,
    max_lifetime: float,
    max_idle: float,
    reconnect_timeout: float,
    num_workers: int = 3,
    max_clients: int = 0,
    idle_in_transaction_timeout: float | None = None,
    close_returns: bool = False,
    reset_always: bool = False,
    leak_timeout: float | None = None,
) -> PoolConfig:
    """Validate the constructor's arguments; raise ValueError/TypeError naming the culprit."""
    min_size = _check_int("min_size", min_size, 0)
    if max_size is None:
        if min_size == 0:
            raise ValueError(
                "max_size must be given when min_size is 0 (max_size defaults to min_size)"
            )
        max_size = min_size
    max_size = _check_int("max_size", max_size, 1)
    if max_size < min_size:
        raise ValueError(
            f"max_size must be >= min_size, got min_size={min_size}, max_size={max_size}"
        )
    if name is None:
        name = f"pool-{next(_pool_numbers)}"
    elif not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if isinstance(max_clients, bool) or not isinstance(max_clients, int) or max_clients < 0:
        raise ValueError(f"max_clients must be an integer >= 0 (0: no limit), got {max_clients!r}")
    for flag, value in (("close_returns", close_returns), ("reset_always", reset_always)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag} must be True or False, got {value!r}")
    return PoolConfig(
        name=name,
        policy=policy_for_mode(mode),
        min_size=min_size,
        max_size=max_size,
        timeout=_check_seconds("timeout", timeout),
        max_waiting=_check_int("max_waiting", max_waiting, 0),
        max_lifetime=_check_seconds("max_lifetime", max_lifetime),
        max_idle=_check_seconds("max_idle", max_idle),
        reconnect_timeout=_check_seconds("reconnect_timeout", reconnect_timeout, allow_zero=True),
        num_workers=_check_int("num_workers", num_workers, 1),
        max_clients=max_clients,
        idle_in_transaction_timeout=(
            None
            if idle_in_transaction_timeout is None
            else _check_seconds("idle_in_transaction_timeout", idle_in_transaction_timeout)
        ),
        close_returns=close_returns,
        reset_always=reset_always,
        leak_timeout=None if leak_timeout is None else _check_seconds("leak_timeout", leak_timeout),
    )


def resized(config: PoolConfig, min_size: int, max_size: int | None) -> PoolConfig:
    """``config`` with a new min_size and max_size, validated as at construction."""
    values = {field: getattr(config, field) for field in config.__dataclass_fields__}
    values["mode"] = values.pop("policy")
    return make_config(**{**values, "min_size": min_size, "max_size": max_size})


def check_conninfo(conninfo: object) -> None:
    """conninfo is a string or a callable returning one (for rotating credentials); a string
    must parse (a malformed one would fail every connection attempt for ever)."""
    if not (isinstance(conninfo, str) or callable(conninfo)):
        raise TypeError(
            "conninfo must be a connection string or a callable returning one, "
            f"got {type(conninfo).__name__}"
        )
    if isinstance(conninfo, str):
        try:
            conninfo_to_dict(conninfo)
        except psycopg.Error as ex:  # libpq's message may quote the string: redacted
            raise ValueError(f"conninfo cannot be parsed: {redact(str(ex))}") from None


def check_kwargs(kwargs: object) -> None:
    """kwargs is a mapping or a callable returning one."""
    if not (kwargs is None or isinstance(kwargs, Mapping) or callable(kwargs)):
        raise TypeError(
            "kwargs must be a dict of connection parameters or a callable returning one, "
            f"got {type(kwargs).__name__}"
        )


def check_connection_class(value: object, base: type) -> None:
    """connection_class is psycopg's connection class of the shell (sync or async), or a
    subclass of it: anything else could never connect (and an async class in the threaded pool,
    or the reverse, would fail at every attempt). A generic alias such as
    ``Connection[DictRow]`` stands for its class."""
    value = get_origin(value) or value
    if not (isinstance(value, type) and issubclass(value, base)):
        shown = value.__qualname__ if isinstance(value, type) else type(value).__name__
        raise TypeError(
            f"connection_class must be {base.__module__}.{base.__qualname__} or a subclass "
            f"of it, got {shown}"
        )


def check_callback(name: str, value: object) -> None:
    """configure/check/reset/reconnect_failed are callables or None."""
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be a callable or None, got {type(value).__name__}")


def resolve(value: Any) -> Any:
    """The conninfo or connection keyword arguments to use now: call them when they are a
    callable (AsyncPool awaits what a coroutine function returns)."""
    return value() if callable(value) else value


# a password in a URI (scheme://user:PASSWORD@host) or a key=value conninfo (password=...)
_URI_PASSWORD = re.compile(r"(?P<pre>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s\"']*:)\S*@")
_KV_PASSWORD = re.compile(r"(?P<pre>\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s\"&]+)", re.I)


def redact(text: str) -> str:
    """``text`` with any password it quotes replaced by ``***``: libpq echoes a malformed
    conninfo whole in some of its error messages."""
    text = _URI_PASSWORD.sub(r"\g<pre>***@", text)
    return _KV_PASSWORD.sub(r"\g<pre>***", text)


# -- a PoolManager's pools, declared (TOML, or a dict of the same shape) -----------------------

#: what a [pools.NAME] table may set besides the pool parameters
POOL_KEYS = ("database", "user", "mode", "size", "min_size")
#: the pool parameters a declared configuration may set (not callables nor classes: code)
DECLARABLE = tuple(
    p.name
    for p in PARAMETERS
    if p.name
    not in (
        "conninfo",
        "connection_class",
        "reconnect_failed",
        "configure",
        "check",
        "reset",
        "open",
        "min_size",
        "max_size",
        "mode",
        "name",
    )
)
MANAGER_KEYS = ("conninfo", "budget", "reserve", "overcommit", "across_processes", "pools")


def read_manager_config(
    config: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Split a declared configuration into the manager's keyword arguments (its conninfo,
    budget, reserve and default pool options) and the pools' (name -> create_pool() keyword
    arguments). Raise ValueError naming the pool, the key and what is allowed."""
    if not isinstance(config, Mapping):
        raise ValueError(f"a pool manager's configuration is a table, got {type(config).__name__}")
    manager: dict[str, Any] = {}
    for key, value in config.items():
        if key == "pools":
            continue
        if key not in MANAGER_KEYS and key not in DECLARABLE:
            raise ValueError(
                f"unknown key {key!r} at the top of the configuration; allowed: "
                + ", ".join((*MANAGER_KEYS, *DECLARABLE))
            )
        manager[key] = value
    pools = config.get("pools", {})
    if not isinstance(pools, Mapping):
        raise ValueError("'pools' must be a table of tables, one [pools.NAME] per pool")
    declared: dict[str, dict[str, Any]] = {}
    for name, table in pools.items():
        if not isinstance(table, Mapping):
            raise ValueError(f"pool {name!r}: [pools.{name}] must be a table")
        for key in table:
            if key not in POOL_KEYS and key not in DECLARABLE:
                raise ValueError(
                    f"pool {name!r}: unknown key {key!r}; allowed: "
                    + ", ".join((*POOL_KEYS, *DECLARABLE))
                )
        declared[name] = dict(table)
    return manager, declared


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML file (tomllib, or the tomli backport on Python 3.10)."""
    toml: Any
    if sys.version_info >= (3, 11):
        import tomllib as toml
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as toml  # type: ignore[import-not-found,no-redef,unused-ignore]
        except ImportError:
            raise ImportError(
                "reading TOML on Python 3.10 needs the tomli package: pip install 'pgpoolkit[toml]'"
            ) from None
    with open(path, "rb") as f:
        try:
            data: dict[str, Any] = toml.load(f)
            return data
        except toml.TOMLDecodeError as ex:
            raise ValueError(f"{os.fspath(path)}: not valid TOML: {ex}") from None
