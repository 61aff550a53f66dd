"""AsyncPool against a real PostgreSQL server: the asyncio twin of test_pool.py, plus what only
asyncio has (task cancellation).

Each pool gets its own application_name, so that pg_stat_activity shows its backends only.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import IsolationLevel
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from conftest import server_connections
from pgpoolkit import (
    AsyncPool,
    AsyncPooledConnection,
    PoolClosed,
    PoolTimeout,
    TooManyRequests,
)
from pgpoolkit._psycopg import SPARE_CLIENTS

Admin = psycopg.Connection[tuple[Any, ...]]
AConn = psycopg.AsyncConnection[Any]

UNREACHABLE = "host=127.0.0.1 port=1 connect_timeout=2"


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.01)


def server_pids(admin: Admin, app: str) -> set[int]:
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,)
    ).fetchall()
    return {int(row[0]) for row in rows}


@pytest.fixture
def app() -> str:
    return f"pgpk-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def table(admin: Admin) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin.execute(f"CREATE TABLE {name} (id int)")
    yield name
    admin.execute(f"DROP TABLE {name}")


def rows(admin: Admin, table: str) -> list[int]:
    return [int(r[0]) for r in admin.execute(f"SELECT id FROM {table} ORDER BY id").fetchall()]


def make_pool(dsn: str, app: str, **kwargs: Any) -> AsyncPool:
    kwargs.setdefault("timeout", 5.0)
    return AsyncPool(dsn, kwargs={"application_name": app}, **kwargs)


async def fetch1(conn: AsyncPooledConnection | AConn, query: str) -> Any:
    cur = await conn.execute(query)
    row = await cur.fetchone()
    assert row is not None
    return row[0]


# -- connection(): the block ------------------------------------------------------------------


class _Marker:
    """A type no connection can adapt, but one whose user registered a dumper for it."""


async def test_a_block_connection_is_made_anew_once_nothing_refers_to_it(
    dsn: str, app: str
) -> None:
    """As the threaded pool's test of the same name: a closed connection of an earlier block
    is made anew only when nothing refers to it, and keeps nothing of its last user's."""
    async with make_pool(dsn, app, min_size=1, max_size=1) as pool:

        async def block_id() -> int:
            async with pool.connection() as conn:
                await conn.set_autocommit(True)
                await conn.set_read_only(True)
                conn.row_factory = dict_row  # type: ignore[assignment]
                conn.prepare_threshold = None
                conn.add_notice_handler(lambda diag: None)
                conn.adapters.register_dumper(_Marker, psycopg.types.string.StrDumper)
                conn.mine = "set by its user"  # type: ignore[attr-defined]
                assert await (await conn.execute("SELECT 1")).fetchone() == {"?column?": 1}
                return id(conn)

        first = await block_id()
        assert [id(c) for c in pool._spare_clients] == [first]  # kept: nothing refers to it
        assert await block_id() == first  # (alive meanwhile: nothing new can have its id)
        async with pool.connection() as conn:
            assert id(conn) == first
            assert (conn.autocommit, conn.read_only) == (False, None)
            assert conn.row_factory is psycopg.rows.tuple_row
            assert conn.prepare_threshold == 5
            assert not conn._notice_handlers
            assert not hasattr(conn, "mine")
            with pytest.raises(psycopg.ProgrammingError, match="cannot adapt"):
                await conn.execute("SELECT %s", [_Marker()])
        for keep in ("variable", "cursor", "weak reference"):
            async with pool.connection() as conn:
                cursor = await conn.execute("SELECT 1")
            old = id(conn)
            kept: Any = conn if keep == "variable" else cursor if keep == "cursor" else None
            weak = weakref.ref(conn) if keep == "weak reference" else None
            del conn, cursor
            for _ in range(SPARE_CLIENTS + 2):
                async with pool.connection() as other:
                    assert id(other) != old, keep
                    assert await fetch1(other, "SELECT 1") == 1
                del other
            if keep == "variable":
                assert kept.closed
            elif keep == "cursor":
                assert kept.connection.closed
                with pytest.raises(psycopg.OperationalError, match="closed"):
                    await kept.execute("SELECT 1")
            assert weak is None or weak() is None or weak().closed  # type: ignore[union-attr]
        assert pool.stats().clients_open == 0


async def test_connection_block_commits_and_rolls_back(
    dsn: str, admin: Admin, table: str, app: str
) -> None:
    async with make_pool(dsn, app, min_size=1) as pool:
        async with pool.connection() as conn:
            assert isinstance(conn, AsyncPooledConnection)
            await conn.execute(f"INSERT INTO {table} VALUES (1)")
            assert conn.info.transaction_status == TransactionStatus.INTRANS
            assert rows(admin, table) == []
        assert rows(admin, table) == [1]
        assert conn.closed
        with pytest.raises(psycopg.OperationalError, match="closed"):
            await conn.execute("SELECT 1")

        with pytest.raises(ZeroDivisionError):
            async with pool.connection() as conn:
                await conn.execute(f"INSERT INTO {table} VALUES (2)")
                1 / 0  # noqa: B018
        assert rows(admin, table) == [1]

        async with pool.connection() as conn:
            assert conn.info.transaction_status == TransactionStatus.IDLE
        stats = pool.stats()
        assert stats.servers_active == stats.clients_active == 0
        assert stats.servers_idle == 1
        assert stats.connections_opened_total == 1


async def test_connect_client_api(dsn: str, admin: Admin, table: str, app: str) -> None:
    async with make_pool(dsn, app, min_size=1, name="aapi") as pool:
        conn = await pool.connect()
        assert isinstance(conn, AsyncPooledConnection)
        assert conn.pool is pool
        assert "'aapi'" in repr(conn)
        assert await fetch1(conn, "SELECT 41 + 1") == 42
        async with conn.cursor() as cur:
            await cur.execute("SELECT generate_series(1, 3)")
            assert await cur.fetchall() == [(1,), (2,), (3,)]
        async with conn.cursor(row_factory=dict_row) as dcur:
            await dcur.execute("SELECT 7 AS x")
            assert await dcur.fetchone() == {"x": 7}
        await conn.commit()

        async with conn.transaction():
            await conn.execute(f"INSERT INTO {table} VALUES (1)")
            with pytest.raises(ZeroDivisionError):
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {table} VALUES (2)")
                    1 / 0  # noqa: B018
        assert rows(admin, table) == [1]
        await conn.execute(f"INSERT INTO {table} VALUES (3)")
        await conn.rollback()
        await conn.execute(f"INSERT INTO {table} VALUES (4)")
        await conn.commit()
        assert rows(admin, table) == [1, 4]

        await conn.set_autocommit(True)
        assert conn.autocommit is True
        await conn.execute(f"INSERT INTO {table} VALUES (5)")
        assert rows(admin, table) == [1, 4, 5]
        await conn.set_autocommit(False)
        await conn.set_isolation_level(IsolationLevel.REPEATABLE_READ)
        assert await fetch1(conn, "SHOW transaction_isolation") == "repeatable read"
        await conn.rollback()
        await conn.set_read_only(True)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            await conn.execute(f"INSERT INTO {table} VALUES (6)")
        await conn.rollback()
        pid = conn.info.backend_pid
        assert pid in server_pids(admin, app)

        await conn.close()
        await conn.close()
        assert conn.closed
        with pytest.raises(psycopg.OperationalError):
            await conn.execute("SELECT 1")
        assert pool.stats().clients_active == 0

        async with await pool.connect() as conn2:
            await conn2.execute(f"INSERT INTO {table} VALUES (7)")
        assert conn2.closed
        assert rows(admin, table) == [1, 4, 5, 7]

        # the settings changed by the client are restored on return
        async with pool.connection() as conn3:
            assert conn3.info.backend_pid == pid
            assert conn3.autocommit is False
            assert conn3.isolation_level is None and conn3.read_only is None


async def test_return_rolls_back_discards_broken(
    dsn: str, admin: Admin, table: str, app: str
) -> None:
    async with make_pool(dsn, app, min_size=1, max_size=1) as pool:
        conn = await pool.getconn()
        pid = conn.info.backend_pid
        await conn.execute(f"INSERT INTO {table} VALUES (1)")
        await pool.putconn(conn)
        assert rows(admin, table) == []
        conn = await pool.getconn()
        assert conn.info.backend_pid == pid
        assert conn.info.transaction_status == TransactionStatus.IDLE
        with pytest.raises(psycopg.errors.DivisionByZero):
            await conn.execute("SELECT 1 / 0")
        await pool.putconn(conn)
        conn = await pool.getconn()
        assert conn.info.transaction_status == TransactionStatus.IDLE
        await conn.set_deferrable(True)
        await pool.putconn(conn)
        conn = await pool.getconn()
        assert conn.deferrable is None
        await pool.putconn(conn)
        assert pool.stats().returns_bad_total == 0

        conn = await pool.getconn()
        with pytest.raises(psycopg.OperationalError):
            await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        await pool.putconn(conn)
        assert pool.stats().returns_bad_total == 1
        async with pool.connection() as pconn:
            assert pconn.info.backend_pid != pid
            assert await fetch1(pconn, "SELECT 1") == 1

        with pytest.raises(ValueError, match="returned already"):
            await pool.putconn(conn)
        async with await psycopg.AsyncConnection.connect(dsn) as foreign:
            with pytest.raises(ValueError, match="did not come from"):
                await pool.putconn(foreign)


# -- waiting -----------------------------------------------------------------------------------


async def test_timeout_max_waiting_and_close(dsn: str, admin: Admin, app: str) -> None:
    pool = make_pool(dsn, app, min_size=1, max_size=1, max_waiting=2, name="atiny")
    await pool.open(wait=True, timeout=5)
    held = await pool.getconn()
    t0 = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        await pool.getconn(timeout=0.2)
    assert 0.19 <= time.monotonic() - t0 < 1.0
    assert "'atiny'" in str(info.value)
    assert "1 of 1 in use, 0 idle, 0 waiting, 0 connecting" in str(info.value)

    waiting = [asyncio.create_task(pool.getconn(timeout=30)) for _ in range(2)]
    await wait_for(lambda: pool.stats().clients_waiting == 2, what="two waiters")
    with pytest.raises(TooManyRequests, match="max_waiting=2"):
        await pool.getconn(timeout=30)

    t0 = time.monotonic()
    await pool.close()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert time.monotonic() - t0 < 1.0
    assert all(isinstance(r, PoolClosed) for r in results), results
    await pool.putconn(held)
    stats = pool.stats()
    assert stats.timeouts_total == 1 and stats.rejected_total == 1
    assert stats.requests_total == 5
    assert stats.clients_waiting == stats.clients_active == 0
    await wait_for(lambda: server_connections(admin, app) == 0, what="all closed")
    with pytest.raises(PoolClosed):
        await pool.getconn()
    with pytest.raises(PoolClosed):
        await pool.open()


async def test_waiters_time_out_at_their_own_deadlines(dsn: str, app: str) -> None:
    """One timer serves every waiter's deadline: a request with a short timeout queued behind
    one with a long timeout still times out at its own deadline, and the long one at its."""
    async with make_pool(dsn, app, min_size=1, max_size=1) as pool:
        await pool.wait(5)
        held = await pool.getconn()
        t0 = time.monotonic()
        patient = asyncio.create_task(pool.getconn(timeout=1.0))
        await wait_for(lambda: pool.stats().clients_waiting == 1, what="the first waiter")
        with pytest.raises(PoolTimeout):
            await pool.getconn(timeout=0.2)
        assert 0.19 <= time.monotonic() - t0 < 0.7
        with pytest.raises(PoolTimeout):
            await patient
        assert 0.99 <= time.monotonic() - t0 < 1.7
        await pool.putconn(held)
        stats = pool.stats()
        assert (stats.timeouts_total, stats.clients_waiting, stats.servers_idle) == (2, 0, 1)


async def test_close_is_quick(dsn: str, admin: Admin, app: str) -> None:
    pool = make_pool(dsn, app, min_size=4)
    await pool.open(wait=True, timeout=5)
    t0 = time.monotonic()
    await pool.close()
    assert time.monotonic() - t0 < 1.0
    await wait_for(lambda: server_connections(admin, app) == 0, what="all closed")

    bad = AsyncPool(UNREACHABLE, min_size=1)
    await bad.open()
    await wait_for(lambda: bad.stats().connections_failed_total >= 1, what="a failed attempt")
    t0 = time.monotonic()
    await bad.close()
    assert time.monotonic() - t0 < 1.0


async def test_open_wait_timeout_closes_the_pool() -> None:
    pool = AsyncPool(UNREACHABLE, min_size=2, name="anowhere")
    with pytest.raises(PoolTimeout, match=r"not ready after 0\.3 s") as info:
        await pool.open(wait=True, timeout=0.3)
    assert "Connection refused" in str(info.value)
    assert pool.closed


# -- fairness and bounds ----------------------------------------------------------------------


async def test_bounded_and_fair_under_load(dsn: str, admin: Admin, app: str) -> None:
    workers, size = 100, 10
    counts = [0] * workers
    stop = asyncio.Event()
    async with make_pool(dsn, app, min_size=size, max_size=size, timeout=20) as pool:
        await pool.wait(5)

        async def work(i: int) -> None:
            while not stop.is_set():
                async with pool.connection() as conn:
                    await conn.execute("SELECT 1")
                counts[i] += 1

        tasks = [asyncio.create_task(work(i)) for i in range(workers)]
        peak = 0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            # admin is a sync connection: a quick query, the loop stalls a moment
            peak = max(peak, server_connections(admin, app))
            assert pool.stats().servers_total <= size
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        stats = pool.stats()
    assert peak == size
    mean = sum(counts) / workers
    assert mean >= 5, counts
    assert max(counts) - min(counts) <= max(2, 0.2 * mean), sorted(counts)
    assert stats.requests_total == sum(counts)
    assert stats.connections_opened_total == size
    assert stats.timeouts_total == stats.returns_bad_total == 0


async def test_grows_concurrently_and_only_as_needed(dsn: str, admin: Admin, app: str) -> None:
    started = 0
    all_started = asyncio.Event()

    async def configure(conn: AConn) -> None:
        nonlocal started
        started += 1
        if started == 3:
            all_started.set()
        # the 3 attempts must be in progress at the same time, or this times out
        await asyncio.wait_for(all_started.wait(), 5)

    async with make_pool(dsn, app, min_size=0, max_size=10, configure=configure) as pool:
        conns = await asyncio.gather(*(pool.getconn(timeout=10) for _ in range(3)))
        stats = pool.stats()
        assert stats.connections_opened_total == 3
        assert stats.servers_total == 3
        assert server_connections(admin, app) == 3
        for conn in conns:
            await pool.putconn(conn)
        for _ in range(10):
            async with pool.connection() as c:
                await c.execute("SELECT 1")
        assert pool.stats().connections_opened_total == 3
        assert started == 3


# -- maintenance -------------------------------------------------------------------------------


async def test_lifetime_and_max_idle(dsn: str, admin: Admin, app: str) -> None:
    lifetime = 0.3
    async with make_pool(dsn, app, min_size=1, max_size=1, max_lifetime=lifetime) as pool:
        await pool.wait(5)
        pids: set[int] = set()
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            async with pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT pg_backend_pid(), extract(epoch FROM clock_timestamp() - "
                    "backend_start)::float8 FROM pg_stat_activity WHERE pid = pg_backend_pid()"
                )
                pid, age = await cur.fetchone() or (0, 0.0)
            pids.add(pid)
            assert age < lifetime + 0.2
            await asyncio.sleep(0.03)
        assert len(pids) >= 3

    async with make_pool(dsn, app, min_size=1, max_size=4, max_idle=0.2) as pool:
        conns = [await pool.getconn() for _ in range(4)]
        last = conns[-1].info.backend_pid
        for raw in conns:
            await pool.putconn(raw)
        await wait_for(lambda: pool.stats().servers_idle == 1, timeout=3, what="shrinking")
        await asyncio.sleep(0.4)
        assert pool.stats().servers_idle == 1
        assert server_pids(admin, app) == {last}


async def test_resize_drain_check(dsn: str, admin: Admin, app: str) -> None:
    async with make_pool(dsn, app, min_size=1, max_size=2) as pool:
        await pool.wait(5)
        await pool.resize(3, 4)
        await wait_for(lambda: pool.stats().servers_idle == 3, what="growing")
        conns = [await pool.getconn() for _ in range(4)]
        await pool.resize(1, 2)
        for conn in conns:
            await pool.putconn(conn)
        assert pool.stats().servers_total == 2
        await wait_for(lambda: server_connections(admin, app) == 2, what="shrinking to 2")

        old = server_pids(admin, app)
        await pool.drain()
        await wait_for(
            lambda: len(server_pids(admin, app)) == 1 and not server_pids(admin, app) & old,
            what="all replaced",
        )  # min_size is 1 now: the drained pool refills to 1

        await pool.resize(2)
        await wait_for(lambda: pool.stats().servers_idle == 2, what="two idle")
        victim = min(server_pids(admin, app))
        admin.execute("SELECT pg_terminate_backend(%s)", (victim,))
        await wait_for(lambda: victim not in server_pids(admin, app), what="backend gone")
        await pool.check()
        assert pool.stats().connections_lost_total == 1
        await wait_for(lambda: pool.stats().servers_idle == 2, what="replaced")


# -- callbacks ---------------------------------------------------------------------------------


async def test_callbacks(dsn: str, admin: Admin, app: str) -> None:
    configured: list[int] = []
    checked: list[int] = []
    resets: list[int] = []
    failed: list[object] = []

    async def configure(conn: AConn) -> None:
        configured.append(conn.info.backend_pid)
        await conn.execute("SET statement_timeout = '4321ms'")
        await conn.commit()

    async def check(conn: AConn) -> None:
        checked.append(conn.info.backend_pid)
        await AsyncPool.check_connection(conn)

    async def reset(conn: AConn) -> None:
        resets.append(conn.info.backend_pid)
        await conn.execute("RESET search_path")
        await conn.commit()

    async def reconnect_failed(pool: AsyncPool) -> None:
        failed.append(pool)

    async with make_pool(
        dsn,
        app,
        min_size=1,
        max_size=1,
        configure=configure,
        check=check,
        reset=reset,
        reconnect_failed=reconnect_failed,
    ) as pool:
        async with pool.connection() as conn:
            pid = conn.info.backend_pid
            assert await fetch1(conn, "SHOW statement_timeout") == "4321ms"
            await conn.execute("SET search_path = nowhere")
        async with pool.connection() as conn:
            assert await fetch1(conn, "SHOW search_path") == '"$user", public'
            # the SET made the first client dirty: DISCARD ALL on release, then configure again
            assert await fetch1(conn, "SHOW statement_timeout") == "4321ms"
        assert configured == [pid, pid]
        assert checked == [pid, pid]
        assert resets == [pid, pid]
        assert not failed


async def test_callable_conninfo_and_kwargs(dsn: str, admin: Admin, app: str) -> None:
    counter = iter(range(100))

    def kwargs() -> dict[str, str]:
        return {"application_name": f"{app}-{next(counter)}"}

    async with AsyncPool(lambda: dsn, kwargs=kwargs, min_size=2, timeout=5) as pool:
        await pool.wait(5)
        assert server_connections(admin, f"{app}-0") + server_connections(admin, f"{app}-1") == 2


async def test_coroutine_conninfo_and_kwargs_are_awaited(dsn: str, admin: Admin, app: str) -> None:
    """Rotating credentials from an async secret store: coroutine functions are awaited at
    every new connection (issue 12: they were passed to psycopg unawaited)."""

    async def conninfo() -> str:
        await asyncio.sleep(0)
        return dsn

    async def kwargs() -> dict[str, str]:
        await asyncio.sleep(0)
        return {"application_name": f"{app}-async"}

    async with AsyncPool(conninfo, kwargs=kwargs, min_size=2, timeout=5) as pool:
        await pool.wait(5)
        assert server_connections(admin, f"{app}-async") == 2


async def test_configure_failure(dsn: str, app: str, caplog: pytest.LogCaptureFixture) -> None:
    async def configure(conn: AConn) -> None:
        await conn.execute("SELECT 1")  # leaves a transaction open

    caplog.set_level(logging.WARNING, logger="pgpoolkit")
    async with make_pool(dsn, app, min_size=0, max_size=1, configure=configure) as pool:
        with pytest.raises(PoolTimeout, match="configure left the connection in status INTRANS"):
            await pool.getconn(timeout=0.3)
    assert "configure left" in caplog.text


# -- stats -------------------------------------------------------------------------------------


async def test_stats(dsn: str, app: str) -> None:
    async with make_pool(dsn, app, min_size=1, max_size=1, name="acounted") as pool:
        await pool.wait(5)
        conn = await pool.getconn()
        with pytest.raises(PoolTimeout):
            await pool.getconn(timeout=0.05)
        await pool.putconn(conn)
        stats = pool.stats()
        assert (stats.name, stats.mode) == ("acounted", "session")
        assert stats.requests_total == 2 and stats.requests_queued_total == 1
        assert stats.timeouts_total == 1 and stats.connections_opened_total == 1
        assert pool.pop_stats()["requests_num"] == 2
        assert "requests_num" not in pool.get_stats()


# -- cancellation ------------------------------------------------------------------------------


async def test_cancel_while_waiting(dsn: str, app: str) -> None:
    async with make_pool(dsn, app, min_size=1, max_size=1) as pool:
        await pool.wait(5)
        held = await pool.getconn()
        task = asyncio.create_task(pool.getconn(timeout=10))
        await wait_for(lambda: pool.stats().clients_waiting == 1, what="a waiter")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stats = pool.stats()
        assert stats.clients_waiting == 0 and stats.timeouts_total == 0
        await pool.putconn(held)
        stats = pool.stats()
        assert stats.servers_idle == 1 and stats.clients_active == 0


async def test_cancel_just_after_being_handed_a_connection(dsn: str, app: str) -> None:
    async with make_pool(dsn, app, min_size=1, max_size=1) as pool:
        await pool.wait(5)
        held = await pool.getconn()
        task = asyncio.create_task(pool.getconn(timeout=10))
        other = None
        await wait_for(lambda: pool.stats().clients_waiting == 1, what="a waiter")
        await pool.putconn(held)  # handed over to the waiting task, which has not run yet
        assert pool.stats().clients_active == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task  # the cancellation is not swallowed...
        stats = pool.stats()  # ...and the connection came back
        assert stats.clients_active == 0 and stats.servers_idle == 1
        other = await pool.getconn(timeout=1)
        assert other is held
        await pool.putconn(other)


async def test_cancel_during_the_check_callback(dsn: str, admin: Admin, app: str) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def check(conn: AConn) -> None:
        entered.set()
        await release.wait()

    async with make_pool(dsn, app, min_size=1, max_size=1, check=check) as pool:
        await pool.wait(5)
        task = asyncio.create_task(pool.getconn(timeout=10))
        await asyncio.wait_for(entered.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stats = pool.stats()
        assert stats.clients_active == 0  # not leaked
        release.set()
        conn = await pool.getconn(timeout=5)  # and the pool still serves
        assert await fetch1(conn, "SELECT 1") == 1
        await pool.putconn(conn)
        await wait_for(lambda: server_connections(admin, app) == 1, what="one backend")


async def test_cancel_during_return(dsn: str, admin: Admin, app: str) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def reset(conn: AConn) -> None:
        entered.set()
        await release.wait()

    async with make_pool(dsn, app, min_size=1, max_size=1, reset=reset) as pool:
        await pool.wait(5)
        conn = await pool.getconn()
        pid = conn.info.backend_pid
        task = asyncio.create_task(pool.putconn(conn))
        await asyncio.wait_for(entered.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.stats().clients_active == 0  # discarded, not leaked
        release.set()
        async with pool.connection(timeout=5) as pconn:
            assert pconn.info.backend_pid != pid
        await wait_for(lambda: server_connections(admin, app) == 1, what="one backend")


async def test_cancel_in_the_block_during_a_query(dsn: str, admin: Admin, app: str) -> None:
    async with make_pool(dsn, app, min_size=1, max_size=1) as pool:
        await pool.wait(5)
        started = asyncio.Event()

        async def slow() -> None:
            async with pool.connection() as conn:
                started.set()
                await conn.execute("SELECT pg_sleep(10)")

        task = asyncio.create_task(slow())
        await asyncio.wait_for(started.wait(), 5)
        await asyncio.sleep(0.1)  # let the query reach the server
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.stats().clients_active == 0
        t0 = time.monotonic()
        async with pool.connection(timeout=5) as conn:
            assert conn.info.transaction_status == TransactionStatus.IDLE
            assert await fetch1(conn, "SELECT 1") == 1
        assert time.monotonic() - t0 < 2
        await wait_for(lambda: server_connections(admin, app) == 1, what="one backend")


async def test_timeout_via_wait_for_leaks_nothing(dsn: str, app: str) -> None:
    # asyncio.wait_for() / asyncio.timeout() around checkouts: many cancellations at once
    async with make_pool(dsn, app, min_size=2, max_size=2) as pool:
        await pool.wait(5)

        async def user() -> None:
            async with pool.connection() as conn:
                await conn.execute("SELECT pg_sleep(0.01)")

        results = await asyncio.gather(
            *(asyncio.wait_for(user(), 0.05) for _ in range(50)), return_exceptions=True
        )
        assert any(isinstance(r, asyncio.TimeoutError) for r in results)
        assert not [r for r in results if r and not isinstance(r, asyncio.TimeoutError)]
        await wait_for(lambda: pool.stats().clients_active == 0, what="all returned")
        stats = pool.stats()
        assert stats.clients_waiting == 0
        assert stats.servers_total <= 2
        for _ in range(3):
            async with pool.connection(timeout=5) as conn:
                assert await fetch1(conn, "SELECT 1") == 1


async def test_pause_and_resume(dsn: str, app: str) -> None:
    """pause() returns once the connection in use comes back; a request made meanwhile waits
    until resume()."""
    async with make_pool(dsn, app, min_size=1, max_size=1, timeout=10) as pool:
        held = await pool.getconn()
        pausing = asyncio.create_task(pool.pause(timeout=10))
        await wait_for(lambda: pool.paused, what="the pool to pause")
        request = asyncio.create_task(pool.getconn())
        await wait_for(lambda: pool.stats().clients_waiting == 1, what="the request to queue")
        assert not pausing.done()
        await pool.putconn(held)
        await pausing
        assert not request.done()
        await pool.resume()
        conn = await asyncio.wait_for(request, 10)
        assert await fetch1(conn, "SELECT 7") == 7
        await pool.putconn(conn)
