"""psycopg_pool's names on pgpoolkit: moving from psycopg_pool is a change of import.

::

    from pgpoolkit.compat import ConnectionPool   # was: from psycopg_pool import ConnectionPool

``ConnectionPool`` and ``AsyncConnectionPool`` are :class:`pgpoolkit.Pool` and
:class:`pgpoolkit.AsyncPool` under psycopg_pool's names, generic like psycopg_pool's
(``ConnectionPool[Connection[DictRow]]``), with psycopg_pool's parameters (``num_workers``,
``close_returns``...) and errors. ``NullConnectionPool`` and ``AsyncNullConnectionPool`` keep
no connection idle: each is closed when it comes back, and ``max_size=None`` means no limit.
What still differs from psycopg_pool, and why: docs/migrating-from-psycopg-pool.md.
"""

from __future__ import annotations

import sys
from typing import Any, Generic, TypeVar

from psycopg import AsyncConnection, Connection

from .aio.pool import AsyncPool
from .errors import PoolClosed, PoolTimeout, TooManyRequests
from .pool import Pool

__all__ = [
    "AsyncConnectionPool",
    "AsyncNullConnectionPool",
    "ConnectionPool",
    "NullConnectionPool",
    "PoolClosed",
    "PoolTimeout",
    "TooManyRequests",
]

CT = TypeVar("CT", bound="Connection[Any]")
ACT = TypeVar("ACT", bound="AsyncConnection[Any]")


class _PsycopgPoolViews:
    """Read-only views of the pool's state under psycopg_pool's private names, which code
    (and psycopg's own pool tests) written for psycopg_pool looks at: ``_pool``, the idle
    connections; ``_waiting``, the queued requests; ``_nconns``, the connections open."""

    _core: Any

    @property
    def _pool(self) -> list[Any]:
        return [slot.conn for slot in self._core.idle]

    @property
    def _waiting(self) -> list[Any]:
        return list(self._core.waiters)

    @property
    def _nconns(self) -> int:
        return int(self._core.size)


class ConnectionPool(_PsycopgPoolViews, Pool, Generic[CT]):
    """psycopg_pool's ConnectionPool: a :class:`pgpoolkit.Pool`."""


class AsyncConnectionPool(_PsycopgPoolViews, AsyncPool, Generic[ACT]):
    """psycopg_pool's AsyncConnectionPool: a :class:`pgpoolkit.AsyncPool`."""


class _NoIdleConnections:
    """What makes a null pool of a pool: no connection kept idle, ``max_size=None`` no cap."""

    _closes_on_return = True
    _core: Any

    def __init__(
        self, conninfo: Any = "", *, min_size: int = 0, max_size: int | None = None, **kwargs: Any
    ) -> None:
        if min_size != 0:
            raise ValueError(
                f"null pools keep no idle connection: min_size must be 0, got {min_size}"
            )
        super().__init__(  # type: ignore[call-arg]  # the pool class that follows in the MRO
            conninfo,
            min_size=min_size,
            max_size=sys.maxsize if max_size is None else max_size,
            **kwargs,
        )

    @property
    def max_size(self) -> int:
        """Connections open at once, at most (0: no cap, as psycopg_pool says)."""
        size = self._core.max_size
        return 0 if size == sys.maxsize else int(size)


class NullConnectionPool(_NoIdleConnections, ConnectionPool[CT]):
    """psycopg_pool's NullConnectionPool: a connection per checkout, closed when it is given
    back; ``max_size`` caps those open at once (``None``: no cap) and further requests wait."""


class AsyncNullConnectionPool(_NoIdleConnections, AsyncConnectionPool[ACT]):
    """psycopg_pool's AsyncNullConnectionPool: see :class:`NullConnectionPool`."""
