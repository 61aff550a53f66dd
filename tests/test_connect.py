"""pgpoolkit.connect(): the module-level drop-in for psycopg.connect(), backed by process-wide
pools (one per conninfo and options)."""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

import pgpoolkit
from conftest import server_connections
from pgpoolkit import PooledConnection, PoolTimeout

Admin = psycopg.Connection[tuple[Any, ...]]


@pytest.fixture(autouse=True)
def _fresh_pools() -> Iterator[None]:
    pgpoolkit.close_process_pools()
    yield
    pgpoolkit.close_process_pools()


@pytest.fixture
def app() -> str:
    return f"pgpk-{uuid.uuid4().hex[:12]}"


def wait_for_server(admin: Admin, app: str, n: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while server_connections(admin, app) != n:
        if time.monotonic() > deadline:
            pytest.fail(f"expected {n} backends for {app}, got {server_connections(admin, app)}")
        time.sleep(0.01)


def test_drop_in_for_psycopg_connect(dsn: str, admin: Admin, app: str) -> None:
    conn = pgpoolkit.connect(dsn, application_name=app)
    assert isinstance(conn, PooledConnection)
    assert conn.execute("SELECT current_setting('application_name')").fetchone() == (app,)
    assert conn.autocommit is False
    pid = conn.info.backend_pid
    conn.close()
    assert conn.closed
    # the server connection stayed open, in the pool, and is reused
    assert server_connections(admin, app) == 1
    with pgpoolkit.connect(dsn, application_name=app) as conn2:
        assert conn2.info.backend_pid == pid
        assert conn2.pool is conn.pool
        conn2.execute("CREATE TEMP TABLE t (x int)")  # committed at the end of the block
        assert conn2.execute("SELECT count(*) FROM t").fetchone() == (0,)
    with pgpoolkit.connect(dsn, application_name=app) as conn3:
        # same server connection, but the session the previous client left was reset
        assert conn3.info.backend_pid == pid
        assert conn3.execute("SELECT to_regclass('pg_temp.t')").fetchone() == (None,)
    assert conn.pool.stats().connections_opened_total == 1


def test_same_options_share_a_pool(dsn: str, app: str) -> None:
    a = pgpoolkit.connect(dsn, application_name=app, max_size=3)
    b = pgpoolkit.connect(dsn, application_name=app, max_size=3)
    c = pgpoolkit.connect(dsn, application_name=app, max_size=4)
    d = pgpoolkit.connect(dsn, application_name=app + "x", max_size=3)
    e = pgpoolkit.connect(dsn + " connect_timeout=5", application_name=app, max_size=3)
    f = pgpoolkit.connect(dsn, application_name=app, max_size=3, autocommit=True)
    assert a.pool is b.pool is f.pool  # autocommit is per connection, not per pool
    assert len({id(x.pool) for x in (a, c, d, e)}) == 4
    assert a.pool.max_size == 3 and c.pool.max_size == 4
    assert a.pool.stats().clients_active == 3
    for conn in (a, b, c, d, e, f):
        conn.close()


def test_autocommit_is_per_connection(dsn: str, app: str) -> None:
    conn = pgpoolkit.connect(dsn, application_name=app, autocommit=True, max_size=1)
    assert conn.autocommit is True
    conn.execute("SELECT 1")
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    conn.close()
    conn = pgpoolkit.connect(dsn, application_name=app, max_size=1)
    assert conn.autocommit is False  # restored on return
    conn.close()


def test_pool_options_and_connection_options(dsn: str, admin: Admin, app: str) -> None:
    conn = pgpoolkit.connect(
        dsn, application_name=app, max_size=1, name="dropin", row_factory=dict_row
    )
    assert conn.pool.name == "dropin"
    assert conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}
    t0 = time.monotonic()
    with pytest.raises(PoolTimeout, match=r"'dropin'.*1 of 1 in use"):
        pgpoolkit.connect(
            dsn,
            application_name=app,
            max_size=1,
            name="dropin",
            row_factory=dict_row,
            timeout=0.2,
        )
    assert time.monotonic() - t0 < 1
    conn.close()
    # defaults: nothing kept open beyond what was used, at most 20
    pool = conn.pool
    assert (pool.min_size, pool.max_size) == (0, 1)
    other = pgpoolkit.connect(dsn, application_name=app + "-d")
    assert (other.pool.min_size, other.pool.max_size) == (0, 20)
    other.close()


def test_every_pool_parameter_is_a_pool_option(dsn: str, app: str) -> None:
    # max_clients once went to libpq as a connection option: every attempt failed
    conn = pgpoolkit.connect(
        dsn, application_name=app, max_clients=5, idle_in_transaction_timeout=30.0, timeout=5.0
    )
    assert conn.pool.max_clients == 5 and conn.pool.idle_in_transaction_timeout == 30.0
    assert conn.execute("SELECT 1").fetchone() == (1,)
    conn.close()


def test_bad_options(dsn: str) -> None:
    with pytest.raises(ValueError, match="max_size"):
        pgpoolkit.connect(dsn, min_size=5, max_size=2)
    with pytest.raises(ValueError, match="mode"):
        pgpoolkit.connect(dsn, mode="bogus")
    with pytest.raises(TypeError, match="max_idle"):
        pgpoolkit.connect(dsn, max_idle="1")
    # a connection option libpq does not know: every attempt fails, the error says why
    with pytest.raises(PoolTimeout, match='invalid connection option "no_such_option"'):
        pgpoolkit.connect(dsn, no_such_option="1", max_size=1, timeout=0.3)


def test_threads_share_the_pool(dsn: str, admin: Admin, app: str) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(5):
            with pgpoolkit.connect(dsn, application_name=app, max_size=4, timeout=5) as conn:
                (value,) = conn.execute("SELECT 1").fetchone() or (0,)
            with lock:
                results.append(value)

    threads = [threading.Thread(target=work) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [1] * 50
    assert server_connections(admin, app) <= 4


def test_close_process_pools(dsn: str, admin: Admin, app: str) -> None:
    conn = pgpoolkit.connect(dsn, application_name=app)
    conn.close()
    pool = conn.pool
    assert server_connections(admin, app) == 1
    pgpoolkit.close_process_pools()
    assert pool.closed
    wait_for_server(admin, app, 0)
    conn2 = pgpoolkit.connect(dsn, application_name=app)  # a new pool
    assert conn2.pool is not pool
    conn2.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_forked_child_gets_its_own_pool(dsn: str, app: str) -> None:
    conn = pgpoolkit.connect(dsn, application_name=app)
    parent_pool = conn.pool
    parent_pid = conn.info.backend_pid
    conn.close()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            child = pgpoolkit.connect(dsn, application_name=app)
            ok = child.pool is not parent_pool and child.info.backend_pid != parent_pid
            child.execute("SELECT 1")
            code = 0 if ok else 2
        finally:
            os.write(w, bytes([code]))
            os._exit(code)
    os.close(w)
    status = os.read(r, 1)
    os.close(r)
    os.waitpid(pid, 0)
    assert status == b"\x00"
    # the parent's pool still works: the child did not touch its connection
    with pgpoolkit.connect(dsn, application_name=app) as conn:
        assert conn.info.backend_pid == parent_pid
        assert conn.execute("SELECT 1").fetchone() == (1,)
    sys.stdout.flush()
