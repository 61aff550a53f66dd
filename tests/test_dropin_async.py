"""A pooled connection is a psycopg AsyncConnection: the same user code on
``psycopg.AsyncConnection.connect()`` and on a session-mode AsyncPool's connection."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
import pytest
from psycopg.adapt import Loader
from psycopg.rows import DictRow, dict_row
from psycopg.types import TypeInfo

from pgpoolkit import AsyncPool, AsyncPooledConnection

AConnect = Callable[[], Awaitable[psycopg.AsyncConnection[Any]]]


@pytest.fixture
async def apool(dsn: str) -> AsyncIterator[AsyncPool]:
    app = f"pgpk-{uuid.uuid4().hex[:12]}"
    async with AsyncPool(dsn, kwargs={"application_name": app}, min_size=1, timeout=5.0) as p:
        yield p


@pytest.fixture
async def tpool(dsn: str) -> AsyncIterator[AsyncPool]:
    async with AsyncPool(dsn, mode="transaction", min_size=2, timeout=5.0) as p:
        yield p


@pytest.fixture(params=["direct", "session", "transaction"])
async def connect(
    request: pytest.FixtureRequest, dsn: str, apool: AsyncPool, tpool: AsyncPool
) -> AsyncIterator[AConnect]:
    opened: list[psycopg.AsyncConnection[Any]] = []

    async def open_one() -> psycopg.AsyncConnection[Any]:
        if request.param == "direct":
            conn = await psycopg.AsyncConnection.connect(dsn)
        elif request.param == "session":
            conn = await apool.connect()
        else:
            conn = await tpool.connect()
        opened.append(conn)
        return conn

    yield open_one
    for conn in opened:
        await conn.close()


class Upper(Loader):
    def load(self, data: Any) -> str:
        return bytes(data).decode().upper()


async def test_is_a_psycopg_async_connection(connect: AConnect) -> None:
    conn = await connect()
    assert isinstance(conn, psycopg.AsyncConnection)
    conn.row_factory = dict_row
    cur = await conn.execute("SELECT 1 AS a")
    assert await cur.fetchone() == {"a": 1} and cur.connection is conn
    info = await TypeInfo.fetch(conn, "text")
    assert info is not None and info.oid == 25
    await conn.commit()
    await conn.set_autocommit(True)
    assert conn.autocommit is True


async def test_closed_connection_and_its_cursors(connect: AConnect) -> None:
    conn = await connect()
    cur = await conn.execute("SELECT 1")
    await conn.close()
    assert conn.closed
    with pytest.raises(psycopg.OperationalError):
        await cur.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        await conn.execute("SELECT 1")


async def test_shared_by_8_tasks(connect: AConnect) -> None:
    conn = await connect()
    await conn.set_autocommit(True)

    async def work() -> None:
        for i in range(30):
            cur = await conn.execute("SELECT %s::int", [i])
            assert await cur.fetchone() == (i,)

    await asyncio.gather(*(work() for _ in range(8)))


async def test_next_client_gets_a_clean_connection_object(apool: AsyncPool) -> None:
    first = await apool.connect()
    pid = first.info.backend_pid
    first.adapters.register_loader("text", Upper)
    await first.execute("SET work_mem = '7MB'")
    await first.close()
    async with apool.connection() as second:
        assert second.info.backend_pid == pid
        cur = await second.execute("SELECT 'abc'::text, current_setting('work_mem')")
        assert await cur.fetchone() == ("abc", "4MB")


async def test_connection_class_generic(dsn: str) -> None:
    async with (
        AsyncPool(
            dsn,
            connection_class=psycopg.AsyncConnection[DictRow],
            kwargs={"row_factory": dict_row},
            min_size=1,
        ) as pool,
        pool.connection() as conn,
    ):
        assert isinstance(conn, AsyncPooledConnection)
        cur = await conn.execute("SELECT 1 AS one")
        assert await cur.fetchone() == {"one": 1}


async def test_transaction_mode_cursor_reused_after_commit(tpool: AsyncPool) -> None:
    conn = await tpool.connect()
    cur = await conn.execute("CREATE TEMP TABLE IF NOT EXISTS x (n int) ON COMMIT DROP")
    await conn.commit()
    other = await tpool.connect()
    await other.execute("SELECT 1")  # holds a server connection in an open transaction
    await cur.execute("SELECT 2")
    assert await cur.fetchone() == (2,) and cur.connection is conn
    assert conn.pgconn is not other.pgconn
    await conn.commit()
    await other.rollback()
    assert tpool.stats().servers_active == 0
    await conn.close()
    await other.close()


async def test_transaction_mode_shared_by_8_tasks_leaks_nothing(tpool: AsyncPool) -> None:
    conn = await tpool.connect()
    await conn.set_autocommit(True)

    async def work(k: int) -> None:
        for i in range(30):
            cur = await conn.execute("SELECT %s::int", [i + k])
            assert await cur.fetchone() == (i + k,)

    await asyncio.gather(*(work(k) for k in range(8)))
    assert tpool.stats().servers_active == 0
    await conn.close()
