"""The threaded Pool against a real PostgreSQL server.

Each pool gets its own application_name, so that pg_stat_activity shows its backends only.
Waits for the server (a backend appearing or going) poll with a deadline; the few sleeps are
there to let time pass (lifetimes, idle times), never to wait for an event.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import subprocess
import sys
import textwrap
import threading
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

from conftest import run_in_threads, server_connections
from pgpoolkit import (
    AsyncPool,
    ClientState,
    Pool,
    PoolClosed,
    PooledConnection,
    PoolTimeout,
    TooManyRequests,
)
from pgpoolkit._psycopg import SPARE_CLIENTS, ClientPrototype
from pgpoolkit.testing import TemporaryPostgres

Admin = psycopg.Connection[tuple[Any, ...]]

UNREACHABLE = "host=127.0.0.1 port=1 connect_timeout=2"


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or predicate}")
        time.sleep(0.01)


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


def make_pool(dsn: str, app: str, **kwargs: Any) -> Pool:
    kwargs.setdefault("timeout", 5.0)
    return Pool(dsn, kwargs={"application_name": app}, **kwargs)


# -- connection(): the block ------------------------------------------------------------------


def test_connection_block_commits_and_rolls_back(
    dsn: str, admin: Admin, table: str, app: str
) -> None:
    with make_pool(dsn, app, min_size=1) as pool:
        with pool.connection() as conn:
            assert isinstance(conn, PooledConnection)
            conn.execute(f"INSERT INTO {table} VALUES (1)")
            assert conn.info.transaction_status == TransactionStatus.INTRANS
            assert rows(admin, table) == []  # not committed before the end of the block
        assert rows(admin, table) == [1]
        assert conn.closed
        with pytest.raises(psycopg.OperationalError, match="closed"):
            conn.execute("SELECT 1")

        with pytest.raises(ZeroDivisionError), pool.connection() as conn:
            conn.execute(f"INSERT INTO {table} VALUES (2)")
            1 / 0  # noqa: B018
        assert rows(admin, table) == [1]

        # a failed statement in the block: the error propagates, nothing is committed
        with pytest.raises(psycopg.errors.UndefinedTable), pool.connection() as conn:
            conn.execute(f"INSERT INTO {table} VALUES (3)")
            conn.execute("SELECT * FROM no_such_table")
        assert rows(admin, table) == [1]

        with pool.connection() as conn:
            assert conn.info.transaction_status == TransactionStatus.IDLE
        stats = pool.stats()
        assert stats.servers_active == stats.clients_active == 0
        assert stats.servers_idle == 1
        assert stats.connections_opened_total == 1


def test_connection_outside_a_with_block(dsn: str, app: str) -> None:
    """pool.connection() opens when its block is entered: used without one, it says so, and
    holds nothing."""
    with make_pool(dsn, app, min_size=1) as pool:
        pool.wait()
        conn = pool.connection()
        with pytest.raises(psycopg.OperationalError, match="opens when its block is entered"):
            conn.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError, match="opens when its block is entered"):
            conn.autocommit = True
        stats = pool.stats()
        assert (stats.clients_open, stats.servers_active, stats.requests_total) == (0, 0, 0)
        with conn:  # entering opens it
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert pool.stats().clients_open == 1
        assert pool.stats().clients_open == 0


class _Marker:
    """A type no connection can adapt, but one whose user registered a dumper for it."""


def test_a_block_connection_is_made_anew_once_nothing_refers_to_it(dsn: str, app: str) -> None:
    """connection() makes the closed connection of an earlier block anew, instead of a new
    object, only when nothing refers to it any more: a variable, a cursor or a weak reference
    keeps it closed for good. Made anew, it keeps nothing its last user set on it."""
    with make_pool(dsn, app, min_size=1, max_size=1) as pool:

        def block_id() -> int:
            with pool.connection() as conn:
                conn.autocommit = True
                conn.read_only = True
                conn.isolation_level = IsolationLevel.SERIALIZABLE
                conn.row_factory = dict_row  # type: ignore[assignment]
                conn.prepare_threshold = None
                conn.add_notice_handler(lambda diag: None)
                conn.adapters.register_dumper(_Marker, psycopg.types.string.StrDumper)
                conn.mine = "set by its user"  # type: ignore[attr-defined]
                assert conn.execute("SELECT 1").fetchone() == {"?column?": 1}
                return id(conn)

        first = block_id()
        assert [id(c) for c in pool._spare_clients] == [first]  # kept: nothing refers to it
        # (alive meanwhile: an object made now could not have its id)
        assert block_id() == first
        with pool.connection() as conn:
            assert id(conn) == first
            assert (conn.autocommit, conn.read_only, conn.isolation_level) == (False, None, None)
            assert conn.row_factory is psycopg.rows.tuple_row
            assert conn.prepare_threshold == 5
            assert not conn._notice_handlers
            assert not hasattr(conn, "mine")
            with pytest.raises(psycopg.ProgrammingError, match="cannot adapt"):
                conn.execute("SELECT %s", [_Marker()])
        # referred to by a variable, a cursor or a weak reference: never made anew
        for keep in ("variable", "cursor", "weak reference"):
            with pool.connection() as conn:
                cursor = conn.execute("SELECT 1")
            old = id(conn)
            kept: Any = conn if keep == "variable" else cursor if keep == "cursor" else None
            weak = weakref.ref(conn) if keep == "weak reference" else None
            del conn, cursor
            for _ in range(SPARE_CLIENTS + 2):
                with pool.connection() as other:
                    assert id(other) != old, keep
                    assert other.execute("SELECT 1").fetchone() == (1,)
                del other
            if keep == "variable":
                assert kept.closed
            elif keep == "cursor":
                assert kept.connection.closed
                with pytest.raises(psycopg.OperationalError, match="closed"):
                    kept.execute("SELECT 1")
            assert weak is None or weak() is None or weak().closed  # type: ignore[union-attr]
        assert pool.stats().clients_open == 0


def test_block_connections_made_anew_across_threads_are_never_shared(
    dsn: str, app: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Threads in loops of ``with pool.connection() as conn`` (each keeping its last one in
    its variable) over fewer server connections: a connection object made anew is never in
    two blocks at once, and many are made anew."""
    in_block: set[int] = set()
    lock = threading.Lock()

    def work(i: int) -> None:
        for _ in range(300):
            with pool.connection() as conn:
                with lock:
                    assert id(conn) not in in_block
                    in_block.add(id(conn))
                assert conn.execute("SELECT %s", [i]).fetchone() == (i,)
                with lock:
                    in_block.discard(id(conn))

    made = []
    new = ClientPrototype.new

    def counted(prototype: ClientPrototype, cls: type[Any]) -> Any:
        made.append(1)
        return new(prototype, cls)

    monkeypatch.setattr(ClientPrototype, "new", counted)
    with make_pool(dsn, app, min_size=3, max_size=3) as pool:
        run_in_threads(work, 6)
        assert pool.stats().clients_open == 0
    assert len(made) < 6 * 300 // 2


def test_a_transaction_mode_client_made_anew_keeps_nothing(dsn: str, app: str) -> None:
    """A transaction-mode client closed and made anew (here through connect()) keeps nothing of
    its last user's: not the plain SET it replayed on each server connection, not its
    settings, not the server connection it parked."""
    kwargs = {"application_name": app, "autocommit": True}
    with Pool(dsn, kwargs=kwargs, mode="transaction", min_size=1, max_size=1) as pool:

        def client_id() -> int:
            conn = pool.connect()
            conn.execute("SET work_mem = '8MB'")  # kept by the client, not pinned
            conn.read_only = True
            assert conn.execute("SHOW work_mem").fetchone() == ("8MB",)
            assert conn.state is ClientState.IDLE  # its server connection parked
            ident = id(conn)
            conn.close()
            return ident

        first = client_id()
        assert [id(c) for c in pool._spare_clients] == [first]
        conn = pool.connect()
        assert id(conn) == first
        assert (conn.autocommit, conn.read_only, conn.state) == (True, None, ClientState.IDLE)
        assert not conn._wanted
        assert conn.execute("SHOW work_mem").fetchone() == ("4MB",)
        conn.close()
        assert pool.stats().clients_open == 0


# -- connect(): the client API ----------------------------------------------------------------


def test_connect_client_api(dsn: str, admin: Admin, table: str, app: str) -> None:
    with make_pool(dsn, app, min_size=1, name="api") as pool:
        conn = pool.connect()
        assert isinstance(conn, PooledConnection)
        assert conn.pool is pool
        assert "'api'" in repr(conn) and "session" in repr(conn)
        assert pool.stats().clients_active == 1

        assert conn.execute("SELECT %s::int + 1", [41]).fetchone() == (42,)
        with conn.cursor() as cur:
            cur.execute("SELECT generate_series(1, 3)")
            assert cur.fetchall() == [(1,), (2,), (3,)]
        with conn.cursor(row_factory=dict_row) as dcur:
            assert dcur.execute("SELECT 7 AS x").fetchone() == {"x": 7}
        conn.commit()
        with conn.cursor(name="server_side") as scur:  # server-side cursor
            scur.execute("SELECT generate_series(1, 5)")
            assert scur.fetchmany(2) == [(1,), (2,)]
        conn.rollback()

        with conn.transaction():
            conn.execute(f"INSERT INTO {table} VALUES (1)")
            with conn.transaction():  # a savepoint
                conn.execute(f"INSERT INTO {table} VALUES (2)")
            with pytest.raises(ZeroDivisionError), conn.transaction():
                conn.execute(f"INSERT INTO {table} VALUES (3)")
                1 / 0  # noqa: B018
        assert rows(admin, table) == [1, 2]

        conn.execute(f"INSERT INTO {table} VALUES (4)")
        conn.rollback()
        conn.execute(f"INSERT INTO {table} VALUES (5)")
        conn.commit()
        assert rows(admin, table) == [1, 2, 5]

        assert conn.autocommit is False
        conn.autocommit = True
        assert conn.autocommit is True
        conn.execute(f"INSERT INTO {table} VALUES (6)")
        assert rows(admin, table) == [1, 2, 5, 6]  # autocommit: no commit needed
        conn.set_autocommit(False)
        assert conn.autocommit is False

        conn.isolation_level = IsolationLevel.SERIALIZABLE
        assert conn.execute("SHOW transaction_isolation").fetchone() == ("serializable",)
        conn.rollback()
        conn.read_only = True
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute(f"INSERT INTO {table} VALUES (7)")
        conn.rollback()

        # the rest of psycopg's API is the server connection's
        assert conn.info.backend_pid in server_pids(admin, app)
        assert conn.pgconn is conn.info.pgconn or conn.pgconn is not None
        assert not conn.broken and not conn.closed

        conn.close()
        conn.close()  # twice: nothing
        assert conn.closed
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError):
            conn.cursor()
        assert pool.stats().clients_active == 0

        # as a context manager: commit at the end, like psycopg's
        with pool.connect() as conn2:
            conn2.execute(f"INSERT INTO {table} VALUES (8)")
        assert conn2.closed
        assert rows(admin, table) == [1, 2, 5, 6, 8]
        with pytest.raises(RuntimeError), pool.connect() as conn2:
            conn2.execute(f"INSERT INTO {table} VALUES (9)")
            raise RuntimeError("boom")
        assert rows(admin, table) == [1, 2, 5, 6, 8]
        assert pool.stats().clients_active == 0


# -- return: rollback, restore, discard -------------------------------------------------------


def test_return_rolls_back_and_restores_settings(
    dsn: str, admin: Admin, table: str, app: str
) -> None:
    with make_pool(dsn, app, min_size=1, max_size=1) as pool:
        conn = pool.getconn()
        pid = conn.info.backend_pid
        conn.execute(f"INSERT INTO {table} VALUES (1)")
        assert conn.info.transaction_status == TransactionStatus.INTRANS
        pool.putconn(conn)  # an open transaction: rolled back
        assert rows(admin, table) == []

        conn = pool.getconn()
        assert conn.info.backend_pid == pid
        assert conn.info.transaction_status == TransactionStatus.IDLE
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
        status: TransactionStatus = conn.info.transaction_status
        assert status == TransactionStatus.INERROR
        pool.putconn(conn)  # a failed transaction: rolled back too

        conn = pool.getconn()
        assert conn.info.backend_pid == pid
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert conn.execute("SELECT 1").fetchone() == (1,)
        conn.rollback()
        conn.autocommit = True
        conn.isolation_level = IsolationLevel.SERIALIZABLE
        conn.read_only = True
        conn.deferrable = True
        pool.putconn(conn)

        conn = pool.getconn()
        assert conn.info.backend_pid == pid
        assert conn.autocommit is False
        assert conn.isolation_level is None
        assert conn.read_only is None
        assert conn.deferrable is None
        conn.execute(f"INSERT INTO {table} VALUES (2)")  # not read-only any more
        assert conn.execute("SHOW transaction_isolation").fetchone() == ("read committed",)
        conn.commit()
        pool.putconn(conn)
        assert rows(admin, table) == [2]
        assert pool.stats().returns_bad_total == 0
        assert server_pids(admin, app) == {pid}


def test_return_discards_broken_and_busy(dsn: str, admin: Admin, table: str, app: str) -> None:
    with make_pool(dsn, app, min_size=1, max_size=1) as pool:
        # closed by the client
        conn = pool.getconn()
        pid1 = conn.info.backend_pid
        conn.close()
        pool.putconn(conn)
        assert pool.stats().returns_bad_total == 1

        # killed while in use
        conn = pool.getconn()
        pid2 = conn.info.backend_pid
        assert pid2 != pid1
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        assert conn.broken
        pool.putconn(conn)
        assert pool.stats().returns_bad_total == 2

        # returned in the middle of a COPY (busy)
        conn = pool.getconn()
        pid3 = conn.info.backend_pid
        assert pid3 not in (pid1, pid2)
        copy = conn.cursor().copy(f"COPY {table} FROM STDIN")
        copy.__enter__()
        assert conn.info.transaction_status == TransactionStatus.ACTIVE
        pool.putconn(conn)
        assert pool.stats().returns_bad_total == 3
        assert conn.closed

        # returned with a transaction() block still open: can't be cleaned, discarded
        conn = pool.getconn()
        pid4 = conn.info.backend_pid
        tx = conn.transaction()
        tx.__enter__()
        conn.execute(f"INSERT INTO {table} VALUES (1)")
        pool.putconn(conn)
        assert pool.stats().returns_bad_total == 4

        with pool.connection() as pconn:
            assert pconn.info.backend_pid not in (pid1, pid2, pid3, pid4)
            assert pconn.execute("SELECT 1").fetchone() == (1,)
        assert rows(admin, table) == []
        wait_for(lambda: server_connections(admin, app) == 1, what="one backend left")
        stats = pool.stats()
        assert stats.servers_total == 1
        assert stats.connections_opened_total == 5


def test_getconn_putconn(dsn: str, app: str) -> None:
    with (
        make_pool(dsn, app, min_size=1, max_size=2) as pool,
        make_pool(dsn, app, min_size=0, max_size=1) as other,
    ):
        conn = pool.getconn()
        assert isinstance(conn, psycopg.Connection)
        assert conn.execute("SELECT 1").fetchone() == (1,)
        with conn:  # psycopg's 'with' on a pooled connection does not close it
            conn.execute("SELECT 1")
        assert not conn.closed
        pool.putconn(conn)
        with pytest.raises(ValueError, match="returned already"):
            pool.putconn(conn)

        with psycopg.connect(dsn) as foreign, pytest.raises(ValueError, match="did not come from"):
            pool.putconn(foreign)

        theirs = other.getconn()
        with pytest.raises(ValueError, match=repr(pool.name)):
            pool.putconn(theirs)
        other.putconn(theirs)

        with pool.connection() as client:  # a pooled connection's server connection is not
            client.execute("SELECT 1")  # getconn()'s to give back
            slot = client._slot
            assert slot is not None
            with pytest.raises(ValueError, match="did not come from"):
                pool.putconn(slot.conn)

        a, b = pool.getconn(), pool.getconn()
        assert a is not b and a.info.backend_pid != b.info.backend_pid
        pool.putconn(b)
        pool.putconn(a)
        stats = pool.stats()
        assert stats.servers_idle == 2 and stats.servers_active == 0
        assert stats.returns_bad_total == 0


def test_putconn_after_close_closes_it(dsn: str, admin: Admin, app: str) -> None:
    pool = make_pool(dsn, app, min_size=2)
    pool.wait(5)
    conn = pool.getconn()
    pid = conn.info.backend_pid
    pool.close()
    assert pool.closed
    wait_for(lambda: server_pids(admin, app) == {pid}, what="idle ones closed")
    assert conn.execute("SELECT 1").fetchone() == (1,)  # still usable by its holder
    pool.putconn(conn)
    assert conn.closed
    wait_for(lambda: server_connections(admin, app) == 0, what="all closed")
    with pytest.raises(PoolClosed, match="is closed"):
        pool.getconn()
    with pytest.raises(PoolClosed, match="cannot be opened again"):
        pool.open()


def test_putconn_while_the_same_connection_is_being_returned(dsn: str, app: str) -> None:
    """A second putconn() of a connection whose first return is still under way (in the reset
    callback here) is refused; the connection ends up on the idle stack once."""
    entered = threading.Event()
    release = threading.Event()

    def reset(conn: psycopg.Connection[Any]) -> None:
        entered.set()
        release.wait(10)

    with make_pool(dsn, app, min_size=1, max_size=1, reset=reset) as pool:
        conn = pool.getconn()
        first = threading.Thread(target=pool.putconn, args=(conn,))
        first.start()
        assert entered.wait(10)
        try:
            with pytest.raises(ValueError, match="returned already"):
                pool.putconn(conn)
        finally:
            release.set()
            first.join()
        stats = pool.stats()
        assert (stats.servers_idle, stats.servers_active, stats.returns_bad_total) == (1, 0, 0)


# -- waiting: timeouts, max_waiting, close ----------------------------------------------------


def test_timeout_message_carries_the_state(dsn: str, app: str) -> None:
    with make_pool(dsn, app, min_size=1, max_size=1, name="tiny") as pool:
        pool.wait(5)
        held = pool.getconn()
        t0 = time.monotonic()
        with pytest.raises(PoolTimeout) as info:
            pool.getconn(timeout=0.2)
        elapsed = time.monotonic() - t0
        assert 0.19 <= elapsed < 1.0
        msg = str(info.value)
        assert "'tiny'" in msg and "0.2 s" in msg
        assert "1 of 1 in use, 0 idle, 0 waiting, 0 connecting" in msg
        assert isinstance(info.value, psycopg.OperationalError)

        # the pool's default timeout applies when none is given
        pool2 = make_pool(dsn, app, min_size=1, max_size=1, timeout=0.1)
        with pool2:
            held2 = pool2.getconn()
            with pytest.raises(PoolTimeout, match=r"0\.1 s"):
                pool2.connection().__enter__()
            pool2.putconn(held2)
        pool.putconn(held)
        stats = pool.stats()
        assert stats.timeouts_total == 1
        assert stats.requests_total == 2
        assert stats.requests_queued_total == 1
        assert 150 <= stats.wait_ms_total < 1000
        assert pool.get_stats()["requests_errors"] == 1


def test_max_waiting(dsn: str, app: str) -> None:
    with make_pool(dsn, app, min_size=1, max_size=1, max_waiting=2) as pool:
        held = pool.getconn()
        results: list[object] = []

        def wait_one() -> None:
            try:
                conn = pool.getconn(timeout=5)
            except Exception as ex:
                results.append(ex)
            else:
                results.append(conn.info.backend_pid)
                pool.putconn(conn)

        threads = [threading.Thread(target=wait_one) for _ in range(2)]
        for t in threads:
            t.start()
        wait_for(lambda: pool.stats().clients_waiting == 2, what="two waiters")
        t0 = time.monotonic()
        with pytest.raises(TooManyRequests, match="max_waiting=2") as info:
            pool.getconn(timeout=5)
        assert time.monotonic() - t0 < 0.5  # refused at once, not after waiting
        assert "1 of 1 in use, 0 idle, 2 waiting" in str(info.value)
        pool.putconn(held)
        for t in threads:
            t.join(5)
        assert results == [held.info.backend_pid] * 2
        stats = pool.stats()
        assert stats.rejected_total == 1 and stats.timeouts_total == 0
        assert pool.get_stats()["requests_errors"] == 1


def test_close_wakes_waiters_at_once(dsn: str, admin: Admin, app: str) -> None:
    pool = make_pool(dsn, app, min_size=1, max_size=1)
    held = pool.getconn()
    errors: list[BaseException] = []
    ended: list[float] = []

    def wait_one() -> None:
        try:
            pool.getconn(timeout=30)
        except BaseException as ex:
            errors.append(ex)
        ended.append(time.monotonic())

    threads = [threading.Thread(target=wait_one) for _ in range(5)]
    for t in threads:
        t.start()
    wait_for(lambda: pool.stats().clients_waiting == 5, what="five waiters")
    t0 = time.monotonic()
    pool.close()
    assert time.monotonic() - t0 < 1.0
    for t in threads:
        t.join(5)
    assert len(errors) == 5 and all(isinstance(e, PoolClosed) for e in errors)
    assert all("closed while waiting" in str(e) for e in errors)
    assert max(ended) - t0 < 1.0
    assert pool.stats().clients_waiting == 0
    assert pool.stats().timeouts_total == 0
    pool.putconn(held)
    wait_for(lambda: server_connections(admin, app) == 0, what="all closed")


def test_close_is_quick(dsn: str, admin: Admin, app: str) -> None:
    pool = make_pool(dsn, app, min_size=4)
    pool.wait(5)
    t0 = time.monotonic()
    pool.close()
    assert time.monotonic() - t0 < 1.0
    wait_for(lambda: server_connections(admin, app) == 0, what="all closed")
    assert pool.closed
    pool.close()  # twice: nothing

    # with a connection attempt retrying an unreachable server
    bad = Pool(UNREACHABLE, min_size=1)
    wait_for(lambda: bad.stats().connections_failed_total >= 1, what="a failed attempt")
    t0 = time.monotonic()
    bad.close()
    assert time.monotonic() - t0 < 1.0


# -- fairness and bounds ----------------------------------------------------------------------


def test_bounded_and_fair_under_load(dsn: str, admin: Admin, app: str) -> None:
    workers, size = 100, 10
    counts = [0] * workers
    errors: list[BaseException] = []
    stop = threading.Event()
    with make_pool(dsn, app, min_size=size, max_size=size, timeout=20) as pool:
        pool.wait(5)
        start = threading.Barrier(workers + 1)

        def work(i: int) -> None:
            start.wait()
            try:
                while not stop.is_set():
                    with pool.connection() as conn:
                        conn.execute("SELECT 1")
                    counts[i] += 1
            except BaseException as ex:
                errors.append(ex)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
        for t in threads:
            t.start()
        start.wait()
        peak = 0
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            peak = max(peak, server_connections(admin, app))
            stats = pool.stats()
            assert stats.servers_total <= size
            assert stats.clients_active <= size
            time.sleep(0.02)
        stop.set()
        for t in threads:
            t.join(20)
        assert not any(t.is_alive() for t in threads)
        stats = pool.stats()
    assert not errors
    assert peak == size  # all of them used, never one more
    mean = sum(counts) / workers
    assert mean >= 5, counts
    # FIFO: each worker queues behind the others after each turn, so no one starves (a pool
    # that let a returning worker take its connection again would starve 90 of them); the
    # spread left comes from the OS scheduling threads that hold a connection
    assert 0.6 * mean <= min(counts) and max(counts) <= 1.4 * mean, sorted(counts)
    assert stats.requests_total == sum(counts)
    assert stats.connections_opened_total == size
    assert stats.timeouts_total == stats.rejected_total == stats.returns_bad_total == 0
    assert stats.clients_active == stats.clients_waiting == 0


# -- growth ------------------------------------------------------------------------------------


def test_grows_concurrently_and_only_as_needed(dsn: str, admin: Admin, app: str) -> None:
    # the 3 connection attempts must run at the same time, or the barrier breaks
    barrier = threading.Barrier(3, timeout=5)
    configured: list[int] = []

    def configure(conn: psycopg.Connection[Any]) -> None:
        configured.append(conn.info.backend_pid)
        if len(configured) <= 3:
            barrier.wait()

    with make_pool(dsn, app, min_size=0, max_size=10, configure=configure) as pool:
        assert pool.stats().servers_total == 0  # min_size=0: nothing opened before needed
        got: list[psycopg.Connection[Any]] = []
        lock = threading.Lock()

        def take() -> None:
            conn = pool.getconn(timeout=10)
            with lock:
                got.append(conn)

        threads = [threading.Thread(target=take) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(got) == 3
        stats = pool.stats()
        assert stats.connections_opened_total == 3  # as many as the waiters, not max_size
        assert stats.servers_total == 3
        assert server_connections(admin, app) == 3
        for raw in got:
            pool.putconn(raw)

        # sequential use needs one connection: nothing more is opened
        for _ in range(10):
            with pool.connection() as conn:
                conn.execute("SELECT 1")
        assert pool.stats().connections_opened_total == 3
        assert len(configured) == 3


def test_open_wait(dsn: str, admin: Admin, app: str) -> None:
    pool = make_pool(dsn, app, min_size=3, open=False)
    assert pool.closed
    pool.open(wait=True, timeout=5)
    assert not pool.closed
    assert pool.stats().servers_idle == 3
    assert server_connections(admin, app) == 3
    pool.open()  # opening an open pool: nothing
    pool.wait(0.1)  # ready already
    pool.close()


def test_open_wait_timeout_closes_the_pool() -> None:
    pool = Pool(UNREACHABLE, min_size=2, open=False, name="nowhere")
    t0 = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        pool.open(wait=True, timeout=0.3)
    assert 0.29 <= time.monotonic() - t0 < 2.0
    msg = str(info.value)
    assert "'nowhere'" in msg and "not ready after 0.3 s" in msg and "min_size=2" in msg
    assert "last connection error" in msg and "Connection refused" in msg
    assert pool.closed
    with pytest.raises(PoolClosed):
        pool.getconn()


# -- maintenance: lifetime, idle --------------------------------------------------------------


def test_lifetime_expired_never_handed_out(dsn: str, admin: Admin, app: str) -> None:
    lifetime = 0.3
    with make_pool(dsn, app, min_size=1, max_size=1, max_lifetime=lifetime) as pool:
        pool.wait(5)
        pids: set[int] = set()
        end = time.monotonic() + 1.2
        while time.monotonic() < end:
            with pool.connection() as conn:
                pid, age = conn.execute(
                    "SELECT pg_backend_pid(), extract(epoch FROM clock_timestamp() - "
                    "backend_start)::float8 FROM pg_stat_activity WHERE pid = pg_backend_pid()"
                ).fetchone() or (0, 0.0)
            pids.add(pid)
            # (the backend is older than the pool's connection by the time to connect)
            assert age < lifetime + 0.2, f"handed out a connection {age:.3f} s old"
            time.sleep(0.03)
        assert len(pids) >= 3
        # an expired connection returned is closed, not kept
        raw = pool.getconn()
        pid = raw.info.backend_pid
        time.sleep(lifetime + 0.05)
        pool.putconn(raw)
        wait_for(lambda: pid not in server_pids(admin, app), what="the expired one closed")
        assert pool.stats().connections_closed_total >= len(pids)


def test_max_idle_shrinks_to_min_size(dsn: str, admin: Admin, app: str) -> None:
    with make_pool(dsn, app, min_size=1, max_size=4, max_idle=0.2) as pool:
        conns = [pool.getconn() for _ in range(4)]
        pids = [c.info.backend_pid for c in conns]
        assert server_connections(admin, app) == 4
        for raw in conns:
            pool.putconn(raw)
        # the last returned is on top of the idle stack: the other three have been idle longer
        wait_for(lambda: pool.stats().servers_idle == 1, timeout=3, what="shrinking to 1")
        wait_for(lambda: server_pids(admin, app) == {pids[-1]}, what="backends closed")
        time.sleep(0.5)  # several max_idle periods: never below min_size
        assert pool.stats().servers_idle == 1
        assert server_pids(admin, app) == {pids[-1]}
        with pool.connection() as pconn:
            assert pconn.info.backend_pid == pids[-1]


def test_max_idle_spares_connections_in_use(dsn: str, admin: Admin, app: str) -> None:
    with make_pool(dsn, app, min_size=0, max_size=2, max_idle=0.1) as pool:
        conn = pool.getconn()
        pid = conn.info.backend_pid
        time.sleep(0.4)
        assert conn.execute("SELECT 1").fetchone() == (1,)
        pool.putconn(conn)
        wait_for(lambda: pool.stats().servers_total == 0, timeout=3, what="shrinking to 0")
        wait_for(lambda: pid not in server_pids(admin, app), what="closed on the server")


# -- resize, drain, check ----------------------------------------------------------------------


def test_resize(dsn: str, admin: Admin, app: str) -> None:
    with make_pool(dsn, app, min_size=1, max_size=2) as pool:
        pool.wait(5)
        pool.resize(3, 5)
        assert (pool.min_size, pool.max_size) == (3, 5)
        wait_for(lambda: pool.stats().servers_idle == 3, what="growing to min_size 3")
        conns = [pool.getconn() for _ in range(5)]
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=0.1)
        assert server_connections(admin, app) == 5
        pool.resize(1, 2)
        stats = pool.stats()
        assert (stats.min_size, stats.max_size) == (1, 2)
        for conn in conns:  # returned beyond the new max_size: closed
            pool.putconn(conn)
        assert pool.stats().servers_total == 2
        wait_for(lambda: server_connections(admin, app) == 2, what="shrinking to 2")
        pool.resize(2)  # max_size defaults to min_size
        assert (pool.min_size, pool.max_size) == (2, 2)


def test_drain_replaces_every_connection(dsn: str, admin: Admin, app: str) -> None:
    with make_pool(dsn, app, min_size=2) as pool:
        pool.wait(5)
        old = server_pids(admin, app)
        assert len(old) == 2
        held = pool.getconn()
        pool.drain()
        wait_for(lambda: pool.stats().servers_idle == 1, what="replacing the idle one")
        assert held.execute("SELECT 1").fetchone() == (1,)  # in use: left alone until returned
        pool.putconn(held)
        wait_for(
            lambda: len(server_pids(admin, app)) == 2 and not server_pids(admin, app) & old,
            what="all replaced",
        )
        with pool.connection() as conn:
            assert conn.info.backend_pid not in old


def test_check_replaces_dead_idle_connections(dsn: str, admin: Admin, app: str) -> None:
    with make_pool(dsn, app, min_size=2) as pool:
        pool.wait(5)
        pool.check()
        assert pool.stats().connections_lost_total == 0
        victim = min(server_pids(admin, app))
        admin.execute("SELECT pg_terminate_backend(%s)", (victim,))
        wait_for(lambda: victim not in server_pids(admin, app), what="backend gone")
        pool.check()
        stats = pool.stats()
        assert stats.connections_lost_total == 1
        wait_for(lambda: pool.stats().servers_idle == 2, what="replaced")
        assert victim not in server_pids(admin, app)


# -- callbacks ---------------------------------------------------------------------------------


def test_configure_callback(dsn: str, app: str) -> None:
    calls: list[int] = []

    def configure(conn: psycopg.Connection[Any]) -> None:
        calls.append(conn.info.backend_pid)
        conn.execute("SET statement_timeout = '1234ms'")
        conn.commit()

    with make_pool(dsn, app, min_size=2, configure=configure) as pool:
        pool.wait(5)
        assert len(calls) == 2
        for _ in range(3):
            with pool.connection() as conn:
                assert conn.execute("SHOW statement_timeout").fetchone() == ("1234ms",)
        assert len(calls) == 2  # once per new connection, not per checkout


@pytest.mark.parametrize("kind", ["raises", "leaves a transaction open"])
def test_configure_failure(
    dsn: str, admin: Admin, app: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    def configure(conn: psycopg.Connection[Any]) -> None:
        conn.execute("SELECT 1")
        if kind == "raises":
            raise RuntimeError("no good")

    caplog.set_level(logging.WARNING, logger="pgpoolkit")
    with make_pool(dsn, app, min_size=0, max_size=1, configure=configure) as pool:
        with pytest.raises(PoolTimeout) as info:
            pool.getconn(timeout=0.3)
        expected = "no good" if kind == "raises" else "configure left the connection"
        assert expected in str(info.value)
        assert expected in caplog.text
        assert pool.stats().connections_failed_total >= 1
        assert pool.stats().connections_opened_total == 0
        wait_for(lambda: server_connections(admin, app) == 0, what="the failed ones closed")


def test_check_callback(dsn: str, app: str) -> None:
    checked: list[int] = []
    reject: set[int] = set()

    def check(conn: psycopg.Connection[Any]) -> None:
        checked.append(conn.info.backend_pid)
        Pool.check_connection(conn)
        if conn.info.backend_pid in reject:
            raise psycopg.OperationalError("rejected by the test")

    with make_pool(dsn, app, min_size=1, max_size=2, check=check) as pool:
        pool.wait(5)
        with pool.connection() as conn:
            first = conn.info.backend_pid
            assert conn.autocommit is False  # check_connection restored it
        assert checked == [first]
        reject.add(first)
        with pool.connection() as conn:  # the check fails: replaced, the caller gets another
            second = conn.info.backend_pid
            assert second != first
        # after a failure, a new connection is checked as it opens too (failures back off)
        assert checked[1:] == [first, second, second]
        stats = pool.stats()
        assert stats.connections_lost_total == 1
        assert stats.requests_total == 2  # the retry is the same request


def test_reset_callback(dsn: str, app: str) -> None:
    resets: list[int] = []
    fail = threading.Event()

    def reset(conn: psycopg.Connection[Any]) -> None:
        resets.append(conn.info.backend_pid)
        if fail.is_set():
            raise RuntimeError("reset failed")
        conn.execute("RESET search_path")
        conn.commit()

    with make_pool(dsn, app, min_size=1, max_size=1, reset=reset) as pool:
        with pool.connection() as conn:
            pid = conn.info.backend_pid
            conn.execute("SET search_path = nowhere")
        assert resets == [pid]
        with pool.connection() as conn:
            assert conn.info.backend_pid == pid
            assert conn.execute("SHOW search_path").fetchone() == ('"$user", public',)
        fail.set()
        with pool.connection() as conn:
            pass
        assert pool.stats().returns_bad_total == 1
        fail.clear()
        with pool.connection() as conn:
            assert conn.info.backend_pid != pid


def test_callable_conninfo_and_kwargs(dsn: str, admin: Admin, app: str) -> None:
    calls: list[str] = []
    lock = threading.Lock()

    def conninfo() -> str:
        with lock:
            calls.append("conninfo")
        return dsn

    def kwargs() -> dict[str, str]:
        with lock:
            n = sum(1 for c in calls if c == "kwargs")
            calls.append("kwargs")
        return {"application_name": f"{app}-{n}"}

    with Pool(conninfo, kwargs=kwargs, min_size=2, timeout=5) as pool:
        pool.wait(5)
        assert sorted(calls) == ["conninfo"] * 2 + ["kwargs"] * 2
        names = {
            r[0]
            for r in admin.execute(
                "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE %s",
                (f"{app}-%",),
            )
        }
        assert names == {f"{app}-0", f"{app}-1"}
        pool.drain()  # rotated credentials: the new connections get the new parameters
        wait_for(
            lambda: (
                server_connections(admin, f"{app}-2") + server_connections(admin, f"{app}-3") == 2
            ),
            what="new connections",
        )
        assert len(calls) == 8


# -- stats -------------------------------------------------------------------------------------


def test_stats_and_get_stats(dsn: str, app: str) -> None:
    with make_pool(dsn, app, min_size=1, max_size=1, name="counted") as pool:
        pool.wait(5)
        stats = pool.stats()
        assert (stats.name, stats.mode, stats.min_size, stats.max_size) == (
            "counted",
            "session",
            1,
            1,
        )
        assert stats.servers_idle == 1 and stats.requests_total == 0
        assert stats.connections_opened_total == 1
        conn = pool.getconn()
        time.sleep(0.05)
        stats = pool.stats()
        assert stats.clients_active == stats.servers_active == 1
        assert stats.servers_idle == 0 and stats.servers_total == 1
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=0.05)
        pool.putconn(conn)
        stats = pool.stats()
        assert stats.requests_total == 2
        assert stats.requests_queued_total == 1
        assert stats.timeouts_total == 1
        assert stats.usage_ms_total >= 50
        assert stats.clients_waiting == 0
        d = pool.get_stats()
        assert d["pool_min"] == d["pool_max"] == d["pool_size"] == d["pool_available"] == 1
        assert d["requests_waiting"] == 0
        assert d["requests_num"] == 2 and d["requests_queued"] == 1
        assert d["requests_errors"] == 1 and d["connections_num"] == 1
        assert "returns_bad" not in d  # zero counters are left out, as psycopg_pool does
        assert set(stats.as_dict()) >= {"name", "requests_total", "servers_idle"}

        popped = pool.pop_stats()
        assert popped == d
        after = pool.get_stats()
        assert after == {
            "pool_min": 1,
            "pool_max": 1,
            "pool_size": 1,
            "pool_available": 1,
            "requests_waiting": 0,
        }
        assert pool.stats().requests_total == 0


# -- process-level behaviour --------------------------------------------------------------------


def test_no_thread_keeps_the_interpreter_alive(dsn: str) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, pgpoolkit
        pool = pgpoolkit.Pool({dsn!r}, min_size=3)
        pool.wait(5)
        held = pool.getconn()
        retrying = pgpoolkit.Pool({UNREACHABLE!r}, min_size=2)
        conn = pgpoolkit.connect({dsn!r})

        async def main():
            apool = pgpoolkit.AsyncPool({dsn!r}, min_size=2)
            await apool.open(wait=True, timeout=5)
            await apool.getconn()

        asyncio.run(main())
        print("done", flush=True)
        """
    )
    t0 = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    elapsed = time.monotonic() - t0
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"
    assert elapsed < 8, f"the interpreter took {elapsed:.1f} s to exit"


def test_no_password_in_errors_logs_or_stats(caplog: pytest.LogCaptureFixture) -> None:
    password = "Sw0rdfish-not-for-logs"
    caplog.set_level(logging.DEBUG, logger="pgpoolkit")
    with TemporaryPostgres() as pg:
        good = pg.create_user("pool_user", password)
        bad = good.replace(password, password + "-wrong")
        assert password in bad

        # a wrong password: every attempt fails, the waiter times out
        with Pool(bad, min_size=1, name="locked-out") as pool:
            with pytest.raises(PoolTimeout) as info:
                pool.getconn(timeout=0.5)
            texts = [
                str(info.value),
                repr(pool),
                str(pool),
                repr(pool.stats()),
                repr(pool.get_stats()),
            ]
            assert "password authentication failed" in str(info.value)
        # a good password works
        with Pool(good, min_size=1) as pool, pool.connection() as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("pool_user",)
            texts += [repr(conn), str(conn), repr(pool)]

        async def in_asyncio() -> None:
            async with AsyncPool(bad, min_size=1, name="alocked-out") as apool:
                with pytest.raises(PoolTimeout) as ainfo:
                    await apool.getconn(timeout=0.5)
                texts.extend([str(ainfo.value), repr(apool), repr(apool.stats())])
                assert "password authentication failed" in str(ainfo.value)

        asyncio.run(in_asyncio())

    # a malformed URI, that libpq quotes whole in its error message
    uri = f"postgresql://pool_user:{password}@[::1:5432/postgres"
    with pytest.raises(ValueError) as parse_error:  # refused at construction, redacted
        Pool(uri, min_size=1, name="malformed")
    texts.append(str(parse_error.value))
    assert "IPv6" in str(parse_error.value)
    # a password in a key=value conninfo with an error
    kv = f"host=127.0.0.1 port=1 password={password} user=pool_user"
    with Pool(kv, min_size=1, name="refused") as pool:
        with pytest.raises(PoolTimeout) as info:
            pool.getconn(timeout=0.3)
        texts.append(str(info.value))
    texts.append(caplog.text)
    assert "connection attempt failed" in caplog.text
    for text in texts:
        assert password not in text


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_forked_child_never_uses_the_parents_connections(dsn: str, app: str, mode: str) -> None:
    # (issue 12: a child used its parent's sockets: two processes on one backend)
    with make_pool(dsn, app, min_size=1, mode=mode) as pool:
        pool.wait()
        conn = pool.connect()
        conn.autocommit = True
        parent_pid = conn.execute("SELECT pg_backend_pid()").fetchone()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 1
            try:
                if mode == "session":  # bound in the parent: closed for the child
                    try:
                        conn.execute("SELECT 1")
                        code = 3
                    except psycopg.OperationalError as ex:
                        code = 0 if "forked" in str(ex) else 4
                else:
                    code = 0
                if code == 0:
                    with pool.connection() as mine:
                        row = mine.execute("SELECT pg_backend_pid()").fetchone()
                    code = 0 if row != parent_pid else 2
            finally:
                os.write(w, bytes([code]))
                os._exit(code)
        os.close(w)
        status = os.read(r, 1)
        os.close(r)
        os.waitpid(pid, 0)
        assert status == b"\x00", status
        # the parent's connection is untouched: same backend, still in sync
        assert conn.execute("SELECT pg_backend_pid()").fetchone() == parent_pid
        assert conn.execute("SELECT 1").fetchone() == (1,)
        conn.close()


# -- operations: pause, resume, reconnect --------------------------------------------------------


def test_pause_waits_for_running_transactions_and_holds_new_requests(dsn: str, app: str) -> None:
    """PgBouncer's PAUSE: a transaction under way finishes, a new request waits (in transaction
    mode, a client's next transaction too) until resume(), and is then served."""
    with make_pool(dsn, app, mode="transaction", min_size=2, max_size=2, timeout=10) as pool:
        busy = pool.connect()
        busy.execute("BEGIN")
        busy.execute("SELECT 1")
        idle_client = pool.connect()
        paused = threading.Event()
        pauser = threading.Thread(target=lambda: (pool.pause(timeout=10), paused.set()))
        pauser.start()
        wait_for(lambda: pool.paused, what="the pool to pause")
        assert not paused.is_set()  # busy's transaction is still open

        served: list[object] = []
        waiter = threading.Thread(
            target=lambda: served.append(idle_client.execute("SELECT 42").fetchone())
        )
        waiter.start()
        wait_for(lambda: pool.stats().clients_waiting == 1, what="the request to queue")
        busy.execute("COMMIT")  # the running transaction ends: pause() returns
        pauser.join(10)
        assert paused.is_set()
        assert pool.stats().clients_waiting == 1 and not served  # still held back

        pool.resume()
        waiter.join(10)
        assert served == [(42,)]
        busy.close()
        idle_client.close()


def test_pause_times_out_and_stays_paused(dsn: str, app: str) -> None:
    with make_pool(dsn, app, min_size=1, max_size=1) as pool:
        held = pool.getconn()
        with pytest.raises(PoolTimeout, match=r"is paused but .* 1 of 1 in use"):
            pool.pause(timeout=0.2)
        pool.putconn(held)
        with pytest.raises(PoolTimeout, match="paused"):
            pool.getconn(timeout=0.2)  # still paused: nothing handed out
        pool.resume()
        with pool.connection(timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_reconnect_replaces_every_connection_as_it_comes_back(
    dsn: str, admin: Admin, app: str
) -> None:
    """After reconnect(), idle connections are new at once, the one in use when returned; its
    client keeps working on it meanwhile."""
    with make_pool(dsn, app, min_size=2, max_size=2) as pool:
        pool.wait(5)
        held = pool.getconn()
        held_pid = held.info.backend_pid
        before = {
            r[0]
            for r in admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,)
            ).fetchall()
        }
        pool.reconnect()
        assert held.execute("SELECT 1").fetchone() == (1,)  # its transaction is not lost
        pool.putconn(held)
        wait_for(lambda: server_connections(admin, app) == 2, what="replacements")

        def pids() -> set[int]:
            rows = admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,)
            ).fetchall()
            return {int(r[0]) for r in rows}

        wait_for(lambda: not (pids() & before), what="every connection to be replaced")
        assert held_pid not in pids()


def test_leak_timeout_reports_a_held_connection_once_with_its_stack(
    dsn: str, app: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pgpoolkit")

    def reports() -> list[str]:
        return [r.getMessage() for r in caplog.records if "possibly leaked" in r.getMessage()]

    with make_pool(dsn, app, mode="transaction", min_size=2, max_size=2, leak_timeout=0.1) as pool:
        first = pool.getconn()  # taken here: the report names this function
        wait_for(lambda: len(reports()) == 1, what="the first report")
        assert "held by a connection from getconn(), transaction status IDLE" in reports()[0]
        assert "test_leak_timeout_reports_a_held_connection_once" in reports()[0]
        assert "pgpoolkit/pool.py" not in reports()[0]
        client = pool.connect()
        client.execute("BEGIN")
        wait_for(lambda: len(reports()) == 2, what="the second report")
        assert "in state IN_TRANSACTION, transaction status INTRANS" in reports()[1]
        assert len(reports()) == 2  # the first, still held, was reported once
        client.execute("ROLLBACK")
        client.close()
        pool.putconn(first)


# -- resource hygiene ------------------------------------------------------------------------------


def test_a_pool_dropped_without_close_is_collected(dsn: str, admin: Admin, app: str) -> None:
    """Its maintenance thread ends and its server connections close (issue 12: the thread
    kept it alive for ever)."""
    pool = make_pool(dsn, app, name=f"{app}-dropped", min_size=2)
    pool.wait(5)
    with pool.connection() as conn:
        conn.execute("SELECT 1")
    ref = weakref.ref(pool)
    del pool, conn
    gc.collect()
    assert ref() is None
    wait_for(lambda: server_connections(admin, app) == 0, what="its connections to close")
    wait_for(
        lambda: not any(t.name == f"{app}-dropped-maintenance" for t in threading.enumerate()),
        what="its maintenance thread to end",
    )


def test_a_failing_check_backs_off(dsn: str, app: str) -> None:
    """check= failing on every connection: the pool does not open connection after connection
    for the waiting client (it opened about 500 a second), and the timeout says why."""

    def check(conn: psycopg.Connection[Any]) -> None:
        raise RuntimeError("replica lagging")

    with make_pool(dsn, app, min_size=1, max_size=2, check=check) as pool:
        pool.wait(5)
        with pytest.raises(PoolTimeout, match=r"last connection error: .*replica lagging"):
            pool.getconn(timeout=2.0)
        assert pool.stats().connections_opened_total <= 8


def test_an_idle_pool_refills_after_a_server_restart_without_demand(
    own_postgres: TemporaryPostgres,
) -> None:
    """Nobody asks for a connection: the pool still notices its idle connections died with
    the server and is back to min_size soon after the server returns."""
    with Pool(own_postgres.dsn, min_size=3, timeout=5) as pool:
        pool.wait(5)
        own_postgres.restart()
        t0 = time.monotonic()
        wait_for(lambda: pool.stats().connections_opened_total >= 6, timeout=10, what="refill")
        assert time.monotonic() - t0 < 3.0
        assert pool.stats().servers_idle == 3


def test_an_interrupt_while_starting_connection_attempts_loses_no_slot(
    dsn: str, app: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KeyboardInterrupt after the pool counted an attempt as under way and before a worker
    carried it (issue 12: that slot was lost for good): the count is given back."""
    import pgpoolkit.pool as pool_module

    real_spawn = pool_module.spawn
    interrupted = []

    def spawn_interrupted(*args: Any, **kwargs: Any) -> None:
        if kwargs.get("name", "").endswith("-connect") and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        real_spawn(*args, **kwargs)

    with make_pool(dsn, app, min_size=0, max_size=1) as pool:
        monkeypatch.setattr(pool_module, "spawn", spawn_interrupted)
        with pytest.raises(KeyboardInterrupt):
            pool.getconn(timeout=5)
        assert interrupted and pool.stats().servers_connecting == 0
        with pool.connection(timeout=5) as conn:  # the one slot is still there
            assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("mode", ["session", "transaction", "reclaimed"])
def test_an_interrupt_while_a_client_gives_back_its_connection_loses_no_slot(
    dsn: str, app: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KeyboardInterrupt after a client let go of its server connection and before the pool
    took it back (issue 12: that slot was lost for good): the pool takes it, closed, and
    replaces it. "transaction": given back at the end of a transaction (reset_always: never
    parked); "reclaimed": parked between transactions, taken back for a request."""
    interrupted = []
    options: dict[str, Any] = {"reset_always": True} if mode == "transaction" else {}
    if mode == "reclaimed":
        mode = "transaction"

    with make_pool(dsn, app, mode=mode, min_size=1, max_size=1, **options) as pool:
        client = pool.connect()
        client.execute("SELECT 1")
        real = type(client)._hand_back  # called by the pool once the client let go

        def interrupt_once(self: Any) -> Any:
            if not interrupted:
                interrupted.append(True)
                raise KeyboardInterrupt
            return real(self)

        monkeypatch.setattr(type(client), "_hand_back", interrupt_once)
        with pytest.raises(KeyboardInterrupt):
            if mode == "session":
                client.close()
            else:
                client.execute("SELECT 2")  # autocommit off: commit() gives it back, or parks it
                client.commit()
                if not options:
                    assert client._parked
                    pool.getconn(timeout=5)  # takes it back from the client
        assert interrupted and pool.stats().servers_active == 0
        with pool.connection(timeout=5) as conn:  # the one slot is still there
            assert conn.execute("SELECT 1").fetchone() == (1,)
        client.close()


def test_a_checkout_that_finds_the_pool_lock_held_waits_for_it(dsn: str, app: str) -> None:
    """A checkout that finds the pool's lock held yields the GIL a few times (a holder taken
    off the GIL in the middle of its few bytecodes finishes then), then blocks on the lock: it
    never goes on without the lock, and is served as soon as the lock is free."""
    with make_pool(dsn, app, min_size=1, max_size=1) as pool:
        pool.wait(5)
        got: list[Any] = []
        pool._lock.acquire()  # a holder that does not run: it waits for this test
        try:
            taker = threading.Thread(target=lambda: got.append(pool.getconn()))
            taker.start()
            taker.join(0.3)  # far longer than LOCK_SPINS yields take
            assert taker.is_alive() and not got, "the checkout went on without the lock"
        finally:
            pool._lock.release()
        taker.join(5)
        assert not taker.is_alive() and len(got) == 1
        pool.putconn(got[0])
        assert pool.stats().servers_active == 0


def test_wait_for_lock_takes_a_lock_released_while_it_yields() -> None:
    """wait_for_lock() takes the lock as soon as its holder lets go, whether that happens
    while it yields the GIL or after it blocked."""
    from pgpoolkit._acompat import wait_for_lock

    for hold in (0.0, 0.05):
        lock = threading.Lock()
        lock.acquire()
        thread = threading.Thread(target=_release_after, args=(lock, hold))
        thread.start()
        wait_for_lock(lock)
        assert lock.locked()
        lock.release()
        thread.join(5)
        assert not thread.is_alive()


def _release_after(lock: Any, seconds: float) -> None:
    if seconds:  # not runnable meanwhile: the waiter stops yielding and blocks
        threading.Event().wait(seconds)
    lock.release()
