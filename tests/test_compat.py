"""psycopg_pool's names on pgpoolkit (``pgpoolkit.compat``): the import is all that changes."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.rows import DictRow, dict_row

import pgpoolkit
from pgpoolkit.compat import (
    AsyncConnectionPool,
    AsyncNullConnectionPool,
    ConnectionPool,
    NullConnectionPool,
    PoolClosed,
    PoolTimeout,
    TooManyRequests,
)


def test_names_are_pgpoolkit_pools() -> None:
    assert issubclass(ConnectionPool, pgpoolkit.Pool)
    assert issubclass(AsyncConnectionPool, pgpoolkit.AsyncPool)
    assert (PoolClosed, PoolTimeout, TooManyRequests) == (
        pgpoolkit.PoolClosed,
        pgpoolkit.PoolTimeout,
        pgpoolkit.TooManyRequests,
    )


def test_generic_pool_of_dict_rows(dsn: str) -> None:
    with ConnectionPool[psycopg.Connection[DictRow]](
        dsn,
        connection_class=psycopg.Connection[DictRow],
        kwargs={"row_factory": dict_row},
        min_size=1,
        num_workers=2,
        open=True,
    ) as pool:
        pool.wait()
        assert (pool.num_workers, pool.max_idle, pool.max_waiting) == (2, 600.0, 0)
        with pool.connection() as conn:
            assert conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}
        assert len(pool._pool) == 1 and pool._waiting == []


def test_null_pool_closes_what_comes_back(dsn: str) -> None:
    with NullConnectionPool(dsn, max_size=2, open=True) as pool:
        assert (pool.min_size, pool.max_size) == (0, 2)
        pids = set()
        for _ in range(3):
            with pool.connection() as conn:
                pids.add(conn.info.backend_pid)
        assert len(pids) == 3  # a new server connection each time
        assert pool.stats().servers_idle == 0
    with pytest.raises(ValueError, match="min_size must be 0"):
        NullConnectionPool(dsn, min_size=1, open=False)
    assert NullConnectionPool(dsn, open=False).max_size == 0  # no cap, as psycopg_pool says


async def test_async_null_pool(dsn: str) -> None:
    async with AsyncNullConnectionPool(dsn) as pool:
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT 1")
            assert await cur.fetchone() == (1,)
        assert pool.stats().servers_idle == 0


def test_wait_on_a_closed_pool_raises_at_once(dsn: str) -> None:
    pool: Any = ConnectionPool(dsn, min_size=1, open=True)
    pool.close()
    with pytest.raises(PoolClosed):
        pool.wait(timeout=30.0)
