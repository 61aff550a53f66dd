"""A pooled connection is a psycopg connection: the same user code, run on ``psycopg.connect()``
and on a session-mode pooled connection, gives the same results (threads).

Each test takes ``connect``: a function that opens a connection either way, so that a
difference between a direct and a pooled connection fails the pooled run. What only a pool
has (isolation between the clients of one server connection, the connection going back on
close) is tested on the pooled side alone, with ``min_size=1`` so that the next client gets the
same server connection.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import ClientCursor, sql
from psycopg.adapt import Loader
from psycopg.rows import DictRow, dict_row
from psycopg.types import TypeInfo
from psycopg.types.enum import EnumInfo, register_enum

from conftest import run_in_threads
from pgpoolkit import PolicyViolation, Pool, PooledConnection

Connect = Callable[..., psycopg.Connection[Any]]


@pytest.fixture
def app() -> str:
    return f"pgpk-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def pool(dsn: str, app: str) -> Iterator[Pool]:
    with Pool(dsn, kwargs={"application_name": app}, min_size=1, timeout=5.0) as p:
        yield p


@pytest.fixture
def tpool(dsn: str, app: str) -> Iterator[Pool]:
    """A transaction-mode pool of 2 server connections."""
    with Pool(
        dsn, kwargs={"application_name": app}, mode="transaction", min_size=2, timeout=5.0
    ) as p:
        yield p


@pytest.fixture(params=["direct", "session", "transaction"])
def connect(request: pytest.FixtureRequest, dsn: str, pool: Pool, tpool: Pool) -> Iterator[Connect]:
    opened: list[psycopg.Connection[Any]] = []

    def direct(**kwargs: Any) -> psycopg.Connection[Any]:
        conn = psycopg.connect(dsn, **kwargs)
        opened.append(conn)
        return conn

    def pooled(**kwargs: Any) -> psycopg.Connection[Any]:
        assert not kwargs, "pooled connections take their parameters from the pool"
        conn = pool.connect()
        opened.append(conn)
        return conn

    def pooled_transaction(**kwargs: Any) -> psycopg.Connection[Any]:
        assert not kwargs
        conn = tpool.connect()
        opened.append(conn)
        return conn

    yield {"direct": direct, "session": pooled, "transaction": pooled_transaction}[request.param]
    for conn in opened:
        conn.close()


def _keeps_notifies(conn: psycopg.Connection[Any]) -> bool:
    """psycopg keeps the notifications received outside notifies() (later 3.2 releases on)."""
    return hasattr(conn, "_notifies_backlog")


class Upper(Loader):
    def load(self, data: Any) -> str:
        return bytes(data).decode().upper()


def test_is_a_psycopg_connection(connect: Connect) -> None:
    conn = connect()
    assert isinstance(conn, psycopg.Connection)
    assert conn.pgconn.status == psycopg.pq.ConnStatus.OK and not conn.closed
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with conn.transaction():  # (transaction mode: no backend between transactions)
        assert conn.info.backend_pid > 0
    with conn.transaction():  # (transaction mode: escaping needs the server's libpq connection)
        assert sql.Identifier("a b").as_string(conn) == '"a b"'
    assert hasattr(conn, "info") and conn.adapters is conn.adapters


def test_setters_and_factories(connect: Connect) -> None:
    conn = connect()
    conn.row_factory = dict_row
    conn.prepare_threshold = None
    conn.cursor_factory = ClientCursor
    assert conn.prepare_threshold is None
    cur = conn.execute("SELECT %s AS a", [1])
    assert isinstance(cur, ClientCursor)
    assert cur.fetchone() == {"a": 1}
    assert cur.connection is conn
    assert cur.mogrify("SELECT %s", ["x"]) == "SELECT 'x'"
    conn.commit()
    conn.autocommit = True
    conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
    conn.read_only = True
    assert (conn.autocommit, conn.read_only) == (True, True)


def test_cursor_before_its_first_execute(connect: Connect) -> None:
    conn = connect()
    cur = conn.cursor()
    assert cur.connection is conn
    assert cur.description is None and cur.rowcount == -1
    with conn.cursor(row_factory=dict_row) as cur2:
        cur2.execute("SELECT 2 AS b")
        assert cur2.fetchall() == [{"b": 2}]


def test_typeinfo_and_adapters(connect: Connect) -> None:
    conn = connect()
    conn.autocommit = True
    name = f"mood_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE TYPE {name} AS ENUM ('sad', 'ok')")
    try:
        info = TypeInfo.fetch(conn, "text")
        assert info is not None and info.oid == 25
        enum = EnumInfo.fetch(conn, name)
        assert enum is not None
        register_enum(enum, conn)
        assert conn.execute(f"SELECT 'ok'::{name}").fetchone() is not None
        conn.adapters.register_loader("text", Upper)
        assert conn.execute("SELECT 'abc'::text").fetchone() == ("ABC",)
    finally:
        conn.execute(f"DROP TYPE {name}")


def test_notices_notifications_copy_pipeline_named_cursor(connect: Connect) -> None:
    conn = connect()
    conn.autocommit = True
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    conn.execute("DO $$BEGIN RAISE NOTICE 'hello'; END$$")
    assert notices == ["hello"]
    channel = f"ch_{uuid.uuid4().hex[:8]}"
    conn.execute(f"LISTEN {channel}")
    conn.execute(f"NOTIFY {channel}, 'x'")
    if _keeps_notifies(conn):
        got = [n.payload for n in conn.notifies(timeout=2.0, stop_after=1)]
        assert got == ["x"]
    conn.execute(f"UNLISTEN {channel}")
    with conn.cursor() as cur:
        with cur.copy("COPY (SELECT generate_series(1, 3)) TO STDOUT") as copy:
            assert [row for row in copy.rows()] == [("1",), ("2",), ("3",)]
        with conn.pipeline():
            cur.execute("SELECT 1")
            cur.execute("SELECT 2")
        assert cur.fetchone() == (2,)
    conn.autocommit = False
    with conn.transaction(), conn.cursor("named") as named:
        named.execute("SELECT generate_series(1, 5)")
        assert len(named.fetchmany(3)) == 3


def test_cancel_a_running_query(connect: Connect, dsn: str) -> None:
    conn = connect()
    conn.autocommit = True
    outcome: list[BaseException] = []
    marker = f"pgpk-cancel-{uuid.uuid4().hex[:8]}"

    def run() -> None:
        try:
            conn.execute(f"SELECT pg_sleep(10) /* {marker} */")
        except BaseException as ex:
            outcome.append(ex)

    thread = threading.Thread(target=run)
    thread.start()
    # a cancel request that reaches the server before the query runs is lost: wait for it
    with psycopg.connect(dsn, autocommit=True) as admin:
        for _ in range(500):
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s",
                [f"%{marker}%"],
            ).fetchone()
            if row and row[0]:
                break
            thread.join(0.01)
    conn.cancel_safe()
    thread.join(10)
    assert outcome and isinstance(outcome[0], psycopg.errors.QueryCanceled)
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_closed_connection_and_its_cursors(connect: Connect) -> None:
    conn = connect()
    cur = conn.execute("SELECT 1")
    conn.close()
    assert conn.closed
    with pytest.raises(psycopg.OperationalError, match="closed"):
        conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        cur.execute("SELECT 1")
    assert cur.fetchone() == (1,)  # the result stays readable, as psycopg keeps it
    conn.close()  # closing twice does nothing


def test_shared_by_8_threads(connect: Connect) -> None:
    conn = connect()
    conn.autocommit = True

    def work(_: int) -> None:
        for i in range(50):
            assert conn.execute("SELECT %s::int", [i]).fetchone() == (i,)

    run_in_threads(work, 8)


# -- what only a pool has: nothing a client changed reaches the next one -----------------------


def test_next_client_gets_a_clean_connection_object(pool: Pool) -> None:
    first = pool.connect()
    pid = first.info.backend_pid
    first.adapters.register_loader("text", Upper)
    first.row_factory = dict_row
    first.prepare_threshold = 0
    first.add_notice_handler(lambda diag: None)
    first.autocommit = True
    first.execute("SELECT 1")
    first.close()
    second = pool.connect()
    assert second.info.backend_pid == pid  # the same server connection
    assert second.execute("SELECT 'abc'::text").fetchone() == ("abc",)
    assert second.prepare_threshold == 5 and second.autocommit is False
    assert second is not first
    second.close()


def test_session_state_is_reset_for_the_next_client(pool: Pool) -> None:
    with pool.connection() as conn:
        conn.execute("SET work_mem = '7MB'")
        conn.execute("CREATE TEMP TABLE t_drop (x int)")
    with pool.connection() as conn:
        assert conn.execute("SHOW work_mem").fetchone() == ("4MB",)
        assert conn.execute("SELECT to_regclass('t_drop')").fetchone() == (None,)


def test_prepared_two_phase_transaction_then_close(pool: Pool, dsn: str) -> None:
    with psycopg.connect(dsn) as probe:
        row = probe.execute("SHOW max_prepared_transactions").fetchone()
    if row is None or int(row[0]) == 0:
        pytest.skip("the server has max_prepared_transactions = 0")
    conn = pool.connect()
    xid = conn.xid(1, f"pgpk-{uuid.uuid4().hex[:8]}", "q")
    conn.tpc_begin(xid)
    conn.execute("SELECT 1")
    conn.tpc_prepare()
    conn.close()
    nxt = pool.connect()
    nxt.execute("SELECT 1")
    nxt.commit()  # failed when the previous client's two-phase state stayed behind
    nxt.tpc_rollback(xid)  # the prepared transaction outlives its session, as in PostgreSQL
    nxt.close()


def test_connection_class_generic_and_subclass(dsn: str, app: str) -> None:
    with (
        Pool(
            dsn,
            connection_class=psycopg.Connection[DictRow],
            kwargs={"row_factory": dict_row, "application_name": app},
            min_size=1,
        ) as pool,
        pool.connection() as conn,
    ):
        assert isinstance(conn, PooledConnection)
        assert conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}

    class Mine(psycopg.Connection[Any]):
        def answer(self) -> int:
            row = self.execute("SELECT 42").fetchone()
            assert row is not None
            return int(row[0])

    with Pool(dsn, connection_class=Mine, min_size=1) as pool, pool.connection() as conn:
        assert isinstance(conn, Mine) and isinstance(conn, PooledConnection)
        assert conn.answer() == 42


def test_cursor_of_a_closed_client_never_runs_on_the_next(pool: Pool) -> None:
    first = pool.connect()
    cur = first.cursor()
    cur.execute("SELECT 1")
    first.close()
    second = pool.connect()
    second.execute("CREATE TEMP TABLE stray (x int)")
    with pytest.raises(psycopg.OperationalError):
        cur.execute("INSERT INTO stray VALUES (1)")
    assert second.execute("SELECT count(*) FROM stray").fetchone() == (0,)
    second.close()


def test_dropped_without_close_goes_back(pool: Pool) -> None:
    import gc

    conn = pool.connect()
    conn.execute("SELECT 1")
    del conn
    gc.collect()
    with pool.connection(timeout=5.0) as again:
        assert again.execute("SELECT 1").fetchone() == (1,)


# -- transaction mode: a server connection per transaction, under a real psycopg connection ---


def test_transaction_mode_cursor_reused_after_commit(tpool: Pool, dsn: str) -> None:
    table = f"t_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"CREATE TABLE {table} (who text, n int)")
        try:
            conn = tpool.connect()
            cur = conn.execute(f"INSERT INTO {table} VALUES ('a', 1)")
            conn.commit()
            # the other server connection is busy in another client's open transaction
            other = tpool.connect()
            other.execute(f"INSERT INTO {table} VALUES ('b', 1)")
            # the cursor made in the first transaction runs in a new one, on what conn holds
            cur.execute(f"INSERT INTO {table} VALUES ('a', 2)")
            assert cur.connection is conn
            conn.commit()
            other.rollback()  # the other client's work only is undone
            got = admin.execute(f"SELECT who, n FROM {table} ORDER BY n").fetchall()
            assert got == [("a", 1), ("a", 2)]
            assert tpool.stats().servers_active == 0  # nothing left in a transaction
            conn.close()
            other.close()
        finally:
            admin.execute(f"DROP TABLE {table}")


def test_transaction_mode_between_transactions(tpool: Pool) -> None:
    conn = tpool.connect()
    assert conn.pool is tpool and isinstance(conn, PooledConnection)
    assert hasattr(conn, "info") and conn.info.encoding == "utf-8"
    conn.adapters.register_loader("text", Upper)
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    conn.row_factory = dict_row
    conn.prepare_threshold = None
    conn.autocommit = True
    assert tpool.stats().servers_active == 0  # none of that needed a server connection
    assert conn.execute("SELECT 'abc'::text AS t").fetchone() == {"t": "ABC"}
    conn.execute("DO $$BEGIN RAISE NOTICE 'hi'; END$$")
    assert notices == ["hi"]
    with pytest.raises(PolicyViolation, match=r"transaction pooling mode.*backend_pid"):
        conn.info.backend_pid  # noqa: B018
    # the next client of those server connections sees none of it
    nxt = tpool.connect()
    assert nxt.execute("SELECT 'abc'::text").fetchone() == ("abc",)
    assert nxt.prepare_threshold == 5
    nxt.close()
    conn.close()


def test_transaction_mode_shared_by_8_threads_leaks_nothing(tpool: Pool) -> None:
    conn = tpool.connect()
    conn.autocommit = True

    def work(k: int) -> None:
        for i in range(40):
            if i % 2:
                with conn.cursor() as cur:
                    cur.execute("SELECT %s::int", [i])
                    assert cur.fetchone() == (i,)
            else:
                assert conn.execute("SELECT %s::int", [k]).fetchone() == (k,)

    run_in_threads(work, 8)
    stats = tpool.stats()
    assert stats.servers_active == 0, stats
    with tpool.connection() as other:  # the pool still serves
        assert other.execute("SELECT 1").fetchone() == (1,)
    conn.close()
