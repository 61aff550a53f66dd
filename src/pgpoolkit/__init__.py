"""pgpoolkit: an in-process PostgreSQL connection pool for psycopg 3.

What PgBouncer gives a database (few server connections serving many clients, fair queues,
min/max sizing), inside the application, with no extra process or network hop::

    import pgpoolkit

    with pgpoolkit.Pool("dbname=app", max_size=10) as pool:
        with pool.connection() as conn:
            conn.execute("SELECT 1")
"""

from ._connect import close_process_pools, connect
from .aio.connection import AsyncPooledConnection
from .aio.manager import AsyncPoolManager
from .aio.pool import AsyncPool
from .connection import PooledConnection
from .errors import (
    BudgetExceeded,
    IdleInTransactionTimeout,
    NoFreeSlot,
    PolicyViolation,
    PoolClosed,
    PoolError,
    PoolTimeout,
    TooManyClients,
    TooManyRequests,
    UnknownPool,
)
from .manager import PoolManager
from .policies import (
    Action,
    ClientState,
    Event,
    Policy,
    SessionPolicy,
    StatementPolicy,
    TransactionPolicy,
)
from .pool import Pool
from .stats import Budget, ManagerStats, PoolInfo, PoolStats

__version__ = "0.1.0"

__all__ = [
    "Action",
    "AsyncPool",
    "AsyncPoolManager",
    "AsyncPooledConnection",
    "Budget",
    "BudgetExceeded",
    "ClientState",
    "Event",
    "IdleInTransactionTimeout",
    "ManagerStats",
    "NoFreeSlot",
    "Policy",
    "PolicyViolation",
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolInfo",
    "PoolManager",
    "PoolStats",
    "PoolTimeout",
    "PooledConnection",
    "SessionPolicy",
    "StatementPolicy",
    "TooManyClients",
    "TooManyRequests",
    "TransactionPolicy",
    "UnknownPool",
    "__version__",
    "close_process_pools",
    "connect",
]
