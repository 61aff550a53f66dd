"""Live figures of a pool, in PgBouncer's vocabulary (clients and servers).

:meth:`Pool.stats` returns a :class:`PoolStats`; :meth:`Pool.get_stats` returns the same figures
as a dict with psycopg_pool's keys, so dashboards built for psycopg_pool keep working.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Budget", "ManagerStats", "PoolInfo", "PoolStats"]


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of a pool's state and its counters since it was created.

    Gauges describe the moment of the call; ``*_total`` counters only grow (until
    :meth:`Pool.pop_stats` resets them); times are in milliseconds.
    """

    name: str
    mode: str
    min_size: int
    max_size: int

    #: pooled connections open now (from pool.connect() or pool.connection())
    clients_open: int
    #: open pooled connections holding no server connection (between transactions)
    clients_idle: int
    #: clients holding a server connection now (pooled connections and getconn() users)
    clients_active: int
    #: clients queued for a server connection now
    clients_waiting: int
    #: clients pinned to their server connection until they close (session state changed)
    clients_pinned: int
    #: server connections handed out now
    servers_active: int
    #: server connections open and ready in the pool
    servers_idle: int
    #: connection attempts in progress
    servers_connecting: int

    #: checkout requests served or refused
    requests_total: int
    #: requests that had to wait in the queue
    requests_queued_total: int
    #: total time spent waiting in the queue
    wait_ms_total: int
    #: requests that ended with PoolTimeout
    timeouts_total: int
    #: requests refused because the queue was full (TooManyRequests)
    rejected_total: int
    #: total time connections spent checked out
    usage_ms_total: int

    #: server connections opened successfully
    connections_opened_total: int
    #: connection attempts that failed
    connections_failed_total: int
    #: total time spent opening connections (successful attempts)
    connect_ms_total: int
    #: connections found dead (closed by the server or broken) and thrown away
    connections_lost_total: int
    #: connections closed by the pool (expired, idle, resized, drained, bad on return)
    connections_closed_total: int
    #: connections returned broken or busy, and discarded
    returns_bad_total: int
    #: statements run by pooled connections (counted when they release their server)
    statements_total: int
    #: transactions ended by pooled connections, an autocommit statement counting as one
    transactions_total: int

    @property
    def servers_total(self) -> int:
        """Server connections open or being opened: never above ``max_size``."""
        return self.servers_active + self.servers_idle + self.servers_connecting

    def as_dict(self) -> dict[str, int | str]:
        """All the fields as a plain dict (for logging or a JSON endpoint)."""
        return asdict(self)

    def psycopg_pool_dict(self) -> dict[str, int]:
        """The same figures with psycopg_pool's ``get_stats()`` keys.

        Counters that are zero are left out, as psycopg_pool does.
        """
        gauges = {
            "pool_min": self.min_size,
            "pool_max": self.max_size,
            "pool_size": self.servers_active + self.servers_idle + self.servers_connecting,
            "pool_available": self.servers_idle,
            "requests_waiting": self.clients_waiting,
        }
        counters = {
            "requests_num": self.requests_total,
            "requests_queued": self.requests_queued_total,
            "requests_wait_ms": self.wait_ms_total,
            "requests_errors": self.timeouts_total + self.rejected_total,
            "usage_ms": self.usage_ms_total,
            "returns_bad": self.returns_bad_total,
            "connections_num": self.connections_opened_total + self.connections_failed_total,
            "connections_ms": self.connect_ms_total,
            "connections_errors": self.connections_failed_total,
            "connections_lost": self.connections_lost_total,
        }
        gauges.update({k: v for k, v in counters.items() if v})
        return gauges


@dataclass(frozen=True, slots=True)
class Budget:
    """The server's connection budget as a manager shares it."""

    #: connections the manager's pools may hold together
    total: int
    #: the sum of the pools' sizes
    allocated: int
    #: what is left for new or larger pools
    available: int


@dataclass(frozen=True, slots=True)
class PoolInfo:
    """One pool of a manager, and its live usage."""

    name: str
    database: str | None
    user: str | None
    mode: str
    size: int
    min_size: int
    #: server connections in use and idle, clients open and waiting
    servers_active: int
    servers_idle: int
    clients_open: int
    clients_waiting: int


#: PoolStats' figures under PgBouncer's SHOW POOLS / SHOW STATS names
PGBOUNCER_NAMES = {
    "cl_active": "clients_active",
    "cl_waiting": "clients_waiting",
    "sv_active": "servers_active",
    "sv_idle": "servers_idle",
    "sv_login": "servers_connecting",
    "total_xact_count": "transactions_total",
    "total_query_count": "statements_total",
    "total_wait_time_ms": "wait_ms_total",
}


@dataclass(frozen=True, slots=True)
class ManagerStats:
    """A PoolManager's figures: each pool's PoolStats, their sums, and the budget."""

    pools: dict[str, PoolStats]
    #: each PGBOUNCER_NAMES figure summed over the pools
    totals: dict[str, int]
    budget: Budget | None

    @classmethod
    def of(cls, pools: dict[str, PoolStats], budget: Budget | None) -> ManagerStats:
        totals = {
            short: sum(getattr(stats, field) for stats in pools.values())
            for short, field in PGBOUNCER_NAMES.items()
        }
        return cls(pools, totals, budget)

    def show_pools(self) -> list[dict[str, int | str]]:
        """One row per pool with PgBouncer's SHOW POOLS / SHOW STATS column names."""
        return [
            {"pool": name, "pool_mode": stats.mode}
            | {short: getattr(stats, field) for short, field in PGBOUNCER_NAMES.items()}
            for name, stats in self.pools.items()
        ]
