# WARNING: generated from pgpoolkit/aio/manager.py by tools/async_to_sync.py:
# edit the source, not this file.
"""PoolManager: named pools sharing one server's connection budget (threads).

``pgpoolkit/manager.py`` is generated from ``pgpoolkit/aio/manager.py`` by
``tools/async_to_sync.py``: edit the aio one.

Managed PostgreSQL services let an operator create named pools, each for a database and a user
with a mode and a size, every size taken from the cluster's one connection budget; this brings
that model into the application. The budget is the server's ``max_connections`` less its
reserved connections (``superuser_reserved_connections``, and ``reserved_connections`` from
PostgreSQL 16) less ``reserve``, or ``budget=``. Sizes are reservations, as on the managed
services: creating or growing a pool past the budget raises :class:`BudgetExceeded`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from time import monotonic
from types import TracebackType
from typing import Any

from psycopg import Connection
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ._acompat import sleep
from ._config import check_timeout, load_toml, read_manager_config
from ._shared_budget import SharedBudget
from .errors import BudgetExceeded, PoolClosed, UnknownPool
from .policies import Policy
from .pool import Pool
from .stats import Budget, ManagerStats, PoolInfo

__all__ = ["PoolManager"]

logger = logging.getLogger("pgpoolkit")

#: the server's connections the manager leaves alone by default (maintenance, psql, a deploy)
DEFAULT_RESERVE = 3

_BUDGET_QUERY = (
    "SELECT current_setting('max_connections')::int,"
    " current_setting('superuser_reserved_connections')::int,"
    " coalesce(current_setting('reserved_connections', true), '0')::int"
)


@dataclass(slots=True)
class _Entry:
    pool: Pool
    database: str | None
    user: str | None


class PoolManager:
    """Named :class:`Pool` pools over one server, sharing its connection budget.

    ``conninfo`` is the server's (the pools' databases and users are given per pool);
    ``pool_options`` are defaults for every pool (``timeout``, ``max_lifetime``...). Use it as
    a context manager (``with``), or call :meth:`open` and :meth:`close`::

        with PoolManager("host=db user=admin") as manager:
            app = manager.create_pool("app", database="app", size=12)
            with app.connection() as conn:
                ...
    """

    def __init__(
        self,
        conninfo: str = "",
        *,
        budget: int | None = None,
        reserve: int = DEFAULT_RESERVE,
        overcommit: bool = False,
        across_processes: bool = False,
        **pool_options: Any,
    ) -> None:
        if not isinstance(conninfo, str):
            raise TypeError(f"conninfo must be a connection string, got {type(conninfo).__name__}")
        conninfo_to_dict(conninfo)  # a malformed one fails here, not at the first pool
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, int) or budget < 1
        ):
            raise ValueError(f"budget must be an integer >= 1 (connections), got {budget!r}")
        if isinstance(reserve, bool) or not isinstance(reserve, int) or reserve < 0:
            raise ValueError(f"reserve must be an integer >= 0 (connections), got {reserve!r}")
        for forbidden in ("conninfo", "name", "max_size", "open"):
            if forbidden in pool_options:
                raise TypeError(
                    f"{forbidden!r} is set per pool by the manager (create_pool's name, size, "
                    "database and user): it cannot be a default for every pool"
                )
        if not isinstance(overcommit, bool):
            raise TypeError(f"overcommit must be True or False, got {overcommit!r}")
        if not isinstance(across_processes, bool):
            raise TypeError(f"across_processes must be True or False, got {across_processes!r}")
        #: each pool's size holds across every process that runs a manager with the same
        #: pool names (advisory-lock slots on the server)
        self.across_processes = across_processes
        self.conninfo = conninfo
        self.reserve = reserve
        #: sizes are caps whose sum may exceed the budget; the connections the pools hold
        #: together never do (_shared_budget.py)
        self.overcommit = overcommit
        self._shared: SharedBudget | None = None
        self.pool_options = pool_options
        self._total = budget
        self._pools: dict[str, _Entry] = {}
        #: pools declared by from_config(), created when the manager opens
        self._declared: dict[str, dict[str, Any]] = {}
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {len(self._pools)} pools, budget {self._total} "
            f"at 0x{id(self):x}>"
        )

    # -- life cycle -----------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PoolManager:
        """A manager of the pools a configuration declares, as pgbouncer.ini does: a top-level
        ``conninfo``, ``budget`` and ``reserve`` and default pool options, and one
        ``pools.NAME`` table per pool (``database``, ``user``, ``mode``, ``size``,
        ``min_size`` and pool options). The pools are created when the manager opens. A bad
        configuration raises ValueError naming the pool, the key and what is allowed."""
        manager_options, declared = read_manager_config(config)
        manager = cls(**manager_options)
        manager._declared = declared
        return manager

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PoolManager:
        """:meth:`from_config` of a TOML file."""
        try:
            return cls.from_config(load_toml(path))
        except (ValueError, TypeError) as ex:
            raise type(ex)(f"{os.fspath(path)}: {ex}") from None

    def open(self) -> None:
        """Learn the server's budget (unless ``budget=`` gave it; one connection, once), and
        create the pools the configuration declared."""
        if self._total is None:
            self._total = self._server_budget()
        if self.overcommit and self._shared is None:
            self._shared = SharedBudget(self._total)
        declared, self._declared = self._declared, {}
        for name, options in declared.items():
            try:
                self.create_pool(name, **options)
            except (ValueError, TypeError) as ex:
                self.close()
                raise type(ex)(f"pool {name!r}: {ex}") from None

    def close(self, timeout: float = 5.0) -> None:
        """Close every pool (connections in use close when they are returned)."""
        self._closed = True
        entries, self._pools = list(self._pools.values()), {}
        for entry in entries:
            entry.pool.close(timeout)

    def __enter__(self) -> PoolManager:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self.close()

    def _server_budget(self) -> int:
        conn = Connection.connect(self.conninfo, autocommit=True)
        try:
            cursor = conn.execute(_BUDGET_QUERY)
            row = cursor.fetchone()
        finally:
            conn.close()
        assert row is not None
        max_connections, superuser_reserved, reserved = row
        total = int(max_connections) - int(superuser_reserved) - int(reserved) - self.reserve
        if total < 1:
            raise BudgetExceeded(
                f"the server leaves no connection to share: max_connections={max_connections}, "
                f"superuser_reserved_connections={superuser_reserved}, "
                f"reserved_connections={reserved}, reserve={self.reserve}. Lower reserve, or "
                "pass budget="
            )
        return total

    # -- the pools ------------------------------------------------------------------------------

    def create_pool(
        self,
        name: str,
        *,
        database: str | None = None,
        user: str | None = None,
        mode: str | Policy = "transaction",
        size: int = 10,
        min_size: int = 0,
        **pool_options: Any,
    ) -> Pool:
        """Create and open a pool named ``name`` of at most ``size`` server connections to
        ``database`` as ``user`` (the manager's conninfo's, when not given). Its size comes out
        of the budget: BudgetExceeded if it does not fit. Returns the pool."""
        if self._closed:
            raise PoolClosed("this pool manager is closed")
        if not isinstance(name, str) or not name:
            raise ValueError(f"a pool's name must be a non-empty string, got {name!r}")
        if name in self._pools:
            raise ValueError(
                f"a pool named {name!r} exists already: choose another name, or update_pool() it"
            )
        self.open()
        self._check_budget(name, size, min_size)
        params = {"dbname": database, "user": user}
        conninfo = make_conninfo(self.conninfo, **{k: v for k, v in params.items() if v})
        options = {**self.pool_options, **pool_options}
        pool = Pool(conninfo, name=name, mode=mode, min_size=min_size, max_size=size, **options)
        if self._shared is not None:
            self._shared.join(pool, size)
        pool._share_budget(self._shared, self.across_processes)
        pool.open()
        self._pools[name] = _Entry(pool, database, user)
        logger.info(
            "pool manager: pool %r created (%s mode, size %d); %d of the budget of %d left",
            name,
            pool.policy.name,
            size,
            self._available(),
            self._total,
        )
        return pool

    def get_pool(self, name: str) -> Pool:
        """The pool named ``name``."""
        return self._entry(name).pool

    def list_pools(self) -> list[PoolInfo]:
        """The pools, with their live usage."""
        infos = []
        for name, entry in self._pools.items():
            stats = entry.pool.stats()
            infos.append(
                PoolInfo(
                    name=name,
                    database=entry.database,
                    user=entry.user,
                    mode=stats.mode,
                    size=stats.max_size,
                    min_size=stats.min_size,
                    servers_active=stats.servers_active,
                    servers_idle=stats.servers_idle,
                    clients_open=stats.clients_open,
                    clients_waiting=stats.clients_waiting,
                )
            )
        return infos

    def update_pool(
        self,
        name: str,
        *,
        mode: str | Policy | None = None,
        size: int | None = None,
        min_size: int | None = None,
    ) -> Pool:
        """Change a pool while it runs: a new size (checked against the budget) resizes it;
        a new mode applies to the connections opened from now on, so that no client loses
        its transaction. Returns the pool."""
        entry = self._entry(name)
        pool = entry.pool
        if size is not None or min_size is not None:
            new_size = pool.max_size if size is None else size
            new_min = pool.min_size if min_size is None else min_size
            self._check_budget(name, new_size, new_min)
            if self._shared is not None:
                self._shared.join(pool, new_size)
            pool.resize(new_min, new_size)
            logger.info("pool manager: pool %r resized to %d..%d", name, new_min, new_size)
        if mode is not None:
            pool.set_mode(mode)
        return pool

    def delete_pool(self, name: str, timeout: float = 30.0) -> None:
        """Delete a pool, draining it first: new requests are refused at once (PoolClosed),
        transactions under way may finish for up to ``timeout`` seconds, then the pool
        closes (a connection still in use is closed when it comes back)."""
        check_timeout(timeout)
        entry = self._entry(name)
        del self._pools[name]
        pool = entry.pool
        pool.close()  # waiting and new requests fail now; those in use go on
        deadline = monotonic() + timeout
        while pool.stats().servers_active and monotonic() < deadline:
            sleep(0.02)
        if self._shared is not None:
            self._shared.leave(pool)
        logger.info("pool manager: pool %r deleted", name)

    def stats(self) -> ManagerStats:
        """Each pool's figures and the totals, in PgBouncer's vocabulary (SHOW POOLS)."""
        pools = {name: entry.pool.stats() for name, entry in self._pools.items()}
        return ManagerStats.of(pools, self.budget() if self._total is not None else None)

    # -- the budget -----------------------------------------------------------------------------

    def budget(self) -> Budget:
        """The budget: its total, what the pools' sizes take, what is left."""
        if self._total is None:
            raise PoolClosed("the pool manager is not open yet: open() learns the budget")
        return Budget(self._total, self._allocated(), self._available())

    def _allocated(self, leaving_out: str | None = None) -> int:
        return sum(
            entry.pool.max_size for name, entry in self._pools.items() if name != leaving_out
        )

    def _available(self) -> int:
        assert self._total is not None
        return max(0, self._total - self._allocated())

    def _check_budget(self, name: str, size: int, min_size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an integer >= 1, got {size!r}")
        assert self._total is not None
        if self.overcommit:  # sizes are caps: only the connections always kept must fit
            kept = sum(entry.pool.min_size for other, entry in self._pools.items() if other != name)
            if isinstance(min_size, int) and kept + min_size > self._total:
                raise BudgetExceeded(
                    f"pool {name!r} asks to keep {min_size} connections open, but the pools "
                    f"keep {kept} of the budget of {self._total} already: lower min_size"
                )
            return
        others = self._allocated(leaving_out=name)
        if others + size <= self._total:
            return
        holders = ", ".join(
            f"{other!r} holds {entry.pool.max_size}"
            for other, entry in self._pools.items()
            if other != name
        )
        left = self._total - others
        logger.info(
            "pool manager: pool %r refused %d connections: %d of %d left",
            name,
            size,
            left,
            self._total,
        )
        raise BudgetExceeded(
            f"pool {name!r} asks for {size} connections, but {left} of the budget of "
            f"{self._total} are left ({holders or 'no other pool'}): shrink or delete a pool, "
            "or raise the budget"
        )

    def _entry(self, name: str) -> _Entry:
        entry = self._pools.get(name)
        if entry is None:
            known = ", ".join(repr(n) for n in self._pools) or "none"
            raise UnknownPool(f"no pool named {name!r} in this manager; its pools: {known}")
        return entry
