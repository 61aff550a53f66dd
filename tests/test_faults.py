"""Faults: backends terminated, the server stopped and started again, the network cut or hung.

A fault leaks no connection and hangs no caller: waiting callers get PoolTimeout, a dead
connection is never handed out, and the pool recovers to min_size once the server is back.
Both shells (Pool and AsyncPool) go through the same faults.

The server restarts happen on a cluster of this module's own (the shared one serves the other
tests); the retry backoff is shortened so that recovery takes milliseconds, not seconds.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

import pgpoolkit._core
from conftest import server_connections
from pgpoolkit import AsyncPool, Pool, PoolTimeout
from pgpoolkit.testing import TcpProxy, TemporaryPostgres

Admin = psycopg.Connection[tuple[Any, ...]]


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or predicate}")
        time.sleep(0.01)


async def await_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
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


def terminate_all(admin: Admin, app: str) -> set[int]:
    """Terminate every backend of ``app``; return once they are gone."""
    pids = server_pids(admin, app)
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        (app,),
    )
    wait_for(lambda: not server_pids(admin, app) & pids, what="backends terminated")
    return pids


@pytest.fixture
def app() -> str:
    return f"pgpk-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def fast_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgpoolkit._core, "RETRY_INITIAL_DELAY", 0.02)
    monkeypatch.setattr(pgpoolkit._core, "RETRY_MAX_DELAY", 0.1)


@pytest.fixture(scope="module")
def cluster() -> Iterator[TemporaryPostgres]:
    with TemporaryPostgres() as pg:
        yield pg


@pytest.fixture
def pg(cluster: TemporaryPostgres) -> Iterator[TemporaryPostgres]:
    """The module's cluster, running at the start and at the end of the test."""
    cluster.start()
    yield cluster
    cluster.start()


# -- terminated backends -----------------------------------------------------------------------


def test_terminated_idle_backends_never_handed_out(dsn: str, admin: Admin, app: str) -> None:
    with Pool(dsn, kwargs={"application_name": app}, min_size=3, timeout=5) as pool:
        pool.wait(5)
        for rounds in range(1, 4):  # a few rounds: the error and the end of file race
            dead = terminate_all(admin, app)
            conns = [pool.getconn() for _ in range(3)]
            for conn in conns:
                assert conn.info.backend_pid not in dead
                assert conn.execute("SELECT 1").fetchone() == (1,)
            stats = pool.stats()
            assert stats.connections_lost_total == 3 * rounds
            assert stats.requests_total == 3 * rounds  # one per request, despite the retries
            assert stats.returns_bad_total == 0
            for conn in conns:
                pool.putconn(conn)
            wait_for(lambda: server_connections(admin, app) == 3, what="back to 3")
            assert pool.stats().servers_total == 3


async def test_terminated_idle_backends_never_handed_out_async(
    dsn: str, admin: Admin, app: str
) -> None:
    async with AsyncPool(dsn, kwargs={"application_name": app}, min_size=3, timeout=5) as pool:
        await pool.wait(5)
        dead = terminate_all(admin, app)
        async with pool.connection() as conn:
            assert conn.info.backend_pid not in dead
            cur = await conn.execute("SELECT 1")
            assert await cur.fetchone() == (1,)
        stats = pool.stats()
        assert stats.connections_lost_total == 3  # all found dead by the one checkout
        assert stats.requests_total == 1
        assert stats.requests_queued_total == 1
        await await_for(lambda: pool.stats().servers_idle == 3, what="back to 3")
        assert not server_pids(admin, app) & dead


def test_terminated_while_in_use(dsn: str, admin: Admin, app: str) -> None:
    with Pool(dsn, kwargs={"application_name": app}, min_size=1, max_size=1, timeout=5) as pool:
        with pytest.raises(psycopg.OperationalError), pool.connection() as conn:
            conn.execute("SELECT 1")
            terminate_all(admin, app)
            conn.execute("SELECT 1")
        stats = pool.stats()
        assert stats.clients_active == 0 and stats.returns_bad_total == 1
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


# -- the server stopped and started again ------------------------------------------------------


@pytest.mark.slow
def test_server_restart(pg: TemporaryPostgres, fast_retry: None, app: str) -> None:
    failed = threading.Event()
    calls: list[float] = []

    def reconnect_failed(pool: Pool) -> None:
        calls.append(time.monotonic())
        failed.set()

    with Pool(
        pg.dsn,
        kwargs={"application_name": app},
        min_size=2,
        max_size=4,
        timeout=5,
        reconnect_timeout=0.3,
        reconnect_failed=reconnect_failed,
        name="restarted",
    ) as pool:
        pool.wait(5)
        pg.stop()
        stopped_at = time.monotonic()

        # callers waiting during the outage get PoolTimeout, at their timeout, never hang
        errors: list[BaseException] = []

        def caller() -> None:
            try:
                pool.getconn(timeout=0.4)
            except BaseException as ex:
                errors.append(ex)

        threads = [threading.Thread(target=caller) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        assert not any(t.is_alive() for t in threads)
        assert len(errors) == 5 and all(isinstance(e, PoolTimeout) for e in errors), errors
        msg = str(errors[0])
        assert "'restarted'" in msg and "last connection error" in msg

        # reconnect_failed after reconnect_timeout, and the retries go on
        assert failed.wait(5)
        assert calls[0] - stopped_at >= 0.3
        failures = pool.stats().connections_failed_total
        wait_for(lambda: pool.stats().connections_failed_total > failures + 2, what="retries")
        stats = pool.stats()
        assert stats.servers_total <= 4
        assert stats.servers_connecting == 1  # one attempt retries, the others stood down

        pg.start()
        wait_for(lambda: pool.stats().servers_idle == 2, what="recovery to min_size")
        with pool.connection(timeout=2) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with psycopg.connect(pg.dsn, autocommit=True) as admin:
            assert server_connections(admin, app) == 2
        stats = pool.stats()
        assert stats.timeouts_total == 5
        assert stats.connections_lost_total >= 1


@pytest.mark.slow
async def test_server_restart_async(pg: TemporaryPostgres, fast_retry: None) -> None:
    failed = asyncio.Event()

    async def reconnect_failed(pool: AsyncPool) -> None:
        failed.set()

    async with AsyncPool(
        pg.dsn,
        min_size=2,
        max_size=4,
        timeout=5,
        reconnect_timeout=0.3,
        reconnect_failed=reconnect_failed,
        name="arestarted",
    ) as pool:
        await pool.wait(5)
        pg.stop()
        t0 = time.monotonic()
        results = await asyncio.gather(
            *(pool.getconn(timeout=0.4) for _ in range(5)), return_exceptions=True
        )
        assert time.monotonic() - t0 < 2
        assert all(isinstance(r, PoolTimeout) for r in results), results
        assert "last connection error" in str(results[0])

        await asyncio.wait_for(failed.wait(), 5)
        failures = pool.stats().connections_failed_total
        await await_for(lambda: pool.stats().connections_failed_total > failures + 2)
        assert pool.stats().servers_connecting == 1

        pg.start()
        await await_for(lambda: pool.stats().servers_idle == 2, what="recovery to min_size")
        async with pool.connection(timeout=2) as conn:
            cur = await conn.execute("SELECT 1")
            assert await cur.fetchone() == (1,)


@pytest.mark.slow
def test_waiter_served_when_the_server_comes_back(pg: TemporaryPostgres, fast_retry: None) -> None:
    with Pool(pg.dsn, min_size=1, max_size=1, timeout=5) as pool:
        pool.wait(5)
        pg.stop()
        got: list[object] = []

        def caller() -> None:
            try:
                with pool.connection(timeout=10) as conn:
                    got.append(conn.execute("SELECT 1").fetchone())
            except BaseException as ex:
                got.append(ex)

        thread = threading.Thread(target=caller)
        thread.start()
        wait_for(lambda: pool.stats().connections_failed_total >= 2, what="failed attempts")
        assert thread.is_alive()
        pg.start()
        thread.join(5)
        assert got == [(1,)]
        assert pool.stats().timeouts_total == 0


# -- network faults (a proxy in front of the shared server) -----------------------------------


def test_proxy_reset(dsn: str, proxy: TcpProxy) -> None:
    with Pool(proxy.dsn_for(dsn), min_size=2, timeout=5) as pool:
        pool.wait(5)
        held = pool.getconn()
        proxy.reset_all()
        with pytest.raises(psycopg.OperationalError):
            held.execute("SELECT 1")
        pool.putconn(held)
        # the idle one was cut too: never handed out
        with pool.connection() as conn1, pool.connection() as conn2:
            assert conn1.execute("SELECT 1").fetchone() == (1,)
            assert conn2.execute("SELECT 1").fetchone() == (1,)
        stats = pool.stats()
        assert stats.returns_bad_total == 1 and stats.connections_lost_total == 1
        wait_for(lambda: pool.stats().servers_idle == 2, what="back to min_size")
        wait_for(lambda: proxy.active_connections == 2, what="2 links")


def test_proxy_pause_and_resume(dsn: str, proxy: TcpProxy, fast_retry: None) -> None:
    with Pool(proxy.dsn_for(dsn), min_size=1, timeout=5) as pool:
        pool.wait(5)
        proxy.pause()
        with pytest.raises(PoolTimeout, match="last connection error"):
            pool.getconn(timeout=0.3)
        proxy.resume()
        wait_for(lambda: pool.stats().servers_idle == 1, what="recovered")
        with pool.connection(timeout=1) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


async def test_proxy_pause_and_resume_async(dsn: str, proxy: TcpProxy, fast_retry: None) -> None:
    async with AsyncPool(proxy.dsn_for(dsn), min_size=1, timeout=5) as pool:
        await pool.wait(5)
        proxy.pause()
        with pytest.raises(PoolTimeout, match="last connection error"):
            await pool.getconn(timeout=0.3)
        proxy.resume()
        await await_for(lambda: pool.stats().servers_idle == 1, what="recovered")
        async with pool.connection(timeout=1) as conn:
            await conn.execute("SELECT 1")


def test_proxy_blackhole_connect_hangs(dsn: str, proxy: TcpProxy) -> None:
    pool = Pool(proxy.dsn_for(dsn), min_size=0, max_size=1, timeout=5)
    proxy.blackhole()
    t0 = time.monotonic()
    with pytest.raises(PoolTimeout, match="0 of 1 in use, 0 idle, 0 waiting, 1 connecting"):
        pool.getconn(timeout=0.3)
    assert time.monotonic() - t0 < 1
    t0 = time.monotonic()
    pool.close(timeout=0.3)  # does not wait for the hung attempt longer than asked
    assert time.monotonic() - t0 < 1
    proxy.resume()


async def test_proxy_blackhole_connect_hangs_async(dsn: str, proxy: TcpProxy) -> None:
    pool = AsyncPool(proxy.dsn_for(dsn), min_size=0, max_size=1, timeout=5)
    await pool.open()
    proxy.blackhole()
    with pytest.raises(PoolTimeout, match="1 connecting"):
        await pool.getconn(timeout=0.3)
    t0 = time.monotonic()
    await pool.close(timeout=0.3)  # the hung attempt is cancelled
    assert time.monotonic() - t0 < 1
    await await_for(lambda: pool.stats().servers_connecting == 0, what="attempt abandoned")
    proxy.resume()


async def test_check_cancelled_midway(dsn: str, admin: Admin, app: str) -> None:
    # pool.check() cancelled during its first round trip (a request timeout, a shutdown)
    async with AsyncPool(dsn, kwargs={"application_name": app}, min_size=2, timeout=5) as pool:
        await pool.wait(5)
        task = asyncio.create_task(pool.check())
        asyncio.get_running_loop().call_soon(task.cancel)  # once it waits for the server
        with pytest.raises(asyncio.CancelledError):
            await task
        stats = pool.stats()
        assert stats.servers_active == 0  # nothing left checked out
        assert stats.servers_total == 2
        assert stats.returns_bad_total == 1  # the one interrupted mid-check is replaced
        await await_for(lambda: pool.stats().servers_idle == 2, what="refilled")
        await await_for(lambda: server_connections(admin, app) == 2, what="2 backends")
        async with pool.connection(timeout=2) as conn:
            await conn.execute("SELECT 1")


@pytest.mark.slow
def test_waiters_served_within_a_second_of_the_server_return(pg: TemporaryPostgres) -> None:
    # (issue 12: after a 3-10 s outage the first waiters were served up to 9.7 s after the
    # server came back: the retry delay had doubled to 10 s). Real delays, no fast_retry.
    with Pool(pg.dsn, min_size=1, max_size=2, timeout=30) as pool:
        pool.wait(5)
        pg.stop()
        stopped = time.monotonic()
        served_at: list[float] = []

        def caller() -> None:
            with pool.connection(timeout=30) as conn:
                conn.execute("SELECT 1")
                served_at.append(time.monotonic())

        threads = [threading.Thread(target=caller) for _ in range(4)]
        for thread in threads:
            thread.start()
        # an outage of a few seconds, long enough for the old backoff to reach its 10 s
        wait_for(
            lambda: pool.stats().connections_failed_total >= 5,
            timeout=20,
            what="five failed attempts",
        )
        failed_before = pool.stats().connections_failed_total
        pg.start()
        back = time.monotonic()
        for thread in threads:
            thread.join(30)
        assert len(served_at) == 4
        assert max(served_at) - back < 1.5  # start-up of the server included
        # bounded while it was away: a few attempts a second at the most, no busy loop
        assert failed_before / (back - stopped) < 4
