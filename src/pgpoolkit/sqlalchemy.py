"""``pgpoolkit.sqlalchemy``: the SQLAlchemy integration under a short name (see
:mod:`pgpoolkit.integrations.sqlalchemy`)::

    from pgpoolkit.sqlalchemy import create_async_engine, create_engine
"""

from .integrations.sqlalchemy import (
    PGDialect_pgpoolkit,
    PGDialectAsync_pgpoolkit,
    create_async_engine,
    create_engine,
    register_pool,
    unregister_pool,
)

__all__ = [
    "PGDialectAsync_pgpoolkit",
    "PGDialect_pgpoolkit",
    "create_async_engine",
    "create_engine",
    "register_pool",
    "unregister_pool",
]
