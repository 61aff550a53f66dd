"""``pgpoolkit.connect()``: a drop-in for ``psycopg.connect()`` backed by process-wide pools.

One pool per distinct (conninfo, connection parameters, pool options), created on first use and
closed at interpreter exit. A forked child starts with no pools: it never reuses its parent's
sockets.
"""

from __future__ import annotations

import atexit
import inspect
import os
import threading
from typing import Any

from .connection import PooledConnection
from .pool import Pool

__all__ = ["close_process_pools", "connect"]

#: the Pool constructor's options that pgpoolkit.connect() accepts besides conninfo: read off its
#: signature, so that a new pool parameter is never passed to libpq as a connection option
POOL_OPTIONS = frozenset(inspect.signature(Pool.__init__).parameters) - {
    "self",
    "conninfo",
    "kwargs",
    "open",
}
#: defaults for the process-wide pools: open nothing until asked, keep a few, let idle ones go
DEFAULTS: dict[str, Any] = {"min_size": 0, "max_size": 20, "max_idle": 60.0}

_pools: dict[tuple[Any, ...], Pool] = {}
_lock = threading.Lock()


def connect(
    conninfo: str = "",
    *,
    autocommit: bool = False,
    timeout: float | None = None,
    **options: Any,
) -> PooledConnection:
    """Like ``psycopg.connect()``, but the server connection comes from a process-wide pool.

    ``options`` are the Pool constructor's (``mode``, ``max_size``...: by default ``min_size=0,
    max_size=20, max_idle=60``) and psycopg's connection parameters (``application_name=``,
    ``prepare_threshold=``, ...). Calls with the same conninfo and options share one pool.
    ``timeout`` is how long to wait for a server connection when all are in use.
    """
    pool_options = dict(DEFAULTS)
    conn_kwargs: dict[str, Any] = {}
    for option, value in options.items():
        (pool_options if option in POOL_OPTIONS else conn_kwargs)[option] = value
    pool_key = (conninfo, _freeze(pool_options), _freeze(conn_kwargs))
    pool = _pools.get(pool_key)
    if pool is None:
        with _lock:
            pool = _pools.get(pool_key)
            if pool is None:
                pool = Pool(conninfo, kwargs=conn_kwargs, **pool_options)
                _pools[pool_key] = pool
    conn: PooledConnection = pool.connect(timeout)
    if autocommit:
        conn.autocommit = True
    return conn


def close_process_pools() -> None:
    """Close the process-wide pools of :func:`pgpoolkit.connect` now (done at exit): their
    connections are closed, and the next ``connect()`` makes a new pool."""
    with _lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.close(timeout=1.0)


def _freeze(options: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(options.items(), key=lambda kv: kv[0]))


def _forget_after_fork() -> None:
    global _lock
    _pools.clear()
    _lock = threading.Lock()


atexit.register(close_process_pools)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
