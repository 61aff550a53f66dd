"""pgpoolkit: an in-process PostgreSQL connection pool for psycopg 3.

What PgBouncer gives a database (few server connections serving many clients, fair queues,
min/max sizing), inside the application, with no extra process or network hop::

    import pgpoolkit

    with pgpoolkit.Pool("dbname=app", max_size=10) as pool:
        with pool.connection() as conn:
            conn.execute("SELECT 1")
"""

from ._connect import connect
from .aio.connection import AsyncPooledConnection
from .aio.pool import AsyncPool
from .connection import PooledConnection
from .errors import (
    IdleInTransactionTimeout,
    PolicyViolation,
    PoolClosed,
    PoolError,
    PoolTimeout,
    TooManyClients,
    TooManyRequests,
)
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
from .stats import PoolStats

__version__ = "0.1.0"

__all__ = [
    "Action",
    "AsyncPool",
    "AsyncPooledConnection",
    "ClientState",
    "Event",
    "IdleInTransactionTimeout",
    "Policy",
    "PolicyViolation",
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolStats",
    "PoolTimeout",
    "PooledConnection",
    "SessionPolicy",
    "StatementPolicy",
    "TooManyClients",
    "TooManyRequests",
    "TransactionPolicy",
    "__version__",
    "connect",
]
