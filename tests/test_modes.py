"""Pooling modes with the threaded Pool, against a real PostgreSQL server.

Session, transaction and statement pooling, the Policy interface, session-state detection
(pin / error / reset), isolation between the clients of a server connection, prepared
statements, server-side cursors, COPY and pipelines, idle_in_transaction_timeout and
max_clients. Each pool gets its own application_name, so that pg_stat_activity shows its
backends only; waits for an event poll with a deadline, never sleep.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import psycopg
import psycopg.rows
import pytest
from psycopg import sql
from psycopg.pq import TransactionStatus

from conftest import server_connections
from pgpoolkit import (
    Action,
    ClientState,
    Event,
    IdleInTransactionTimeout,
    Policy,
    PolicyViolation,
    Pool,
    PooledConnection,
    PoolTimeout,
    SessionPolicy,
    StatementPolicy,
    TooManyClients,
    TransactionPolicy,
)

Admin = psycopg.Connection[tuple[Any, ...]]


# -- helpers ----------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or predicate}")
        time.sleep(0.005)


class Background(threading.Thread):
    """Run ``fn`` in a thread; ``outcome()`` joins it and returns its result or raises."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as ex:  # handed to outcome()
            self.error = ex

    def outcome(self, timeout: float = 15.0) -> Any:
        self.join(timeout)
        assert not self.is_alive(), "the background call did not end"
        if self.error is not None:
            raise self.error
        return self.result


@pytest.fixture
def app() -> str:
    return f"pgpk-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def table(admin: Admin, app: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin.execute(f"CREATE TABLE {name} (id int)")
    yield name
    # a failed test may leave a client in a transaction on the table: end its backend
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
        (f"{app}%",),
    )
    admin.execute(f"DROP TABLE {name}")


@pytest.fixture(scope="module")
def role(dsn: str) -> Iterator[str]:
    """A role (not a superuser) that SET ROLE / SET SESSION AUTHORIZATION can switch to."""
    name = f"pgpk_role_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} NOLOGIN")
        yield name
        conn.execute(f"DROP ROLE {name}")


def state(conn: PooledConnection) -> ClientState:
    """The client's state (a function, so that type checkers do not narrow it)."""
    return conn.state


def rows(admin: Admin, table: str) -> list[int]:
    return [int(r[0]) for r in admin.execute(f"SELECT id FROM {table} ORDER BY id").fetchall()]


def make_pool(dsn: str, app: str, conn_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> Pool:
    kwargs.setdefault("timeout", 10.0)
    kwargs.setdefault("min_size", 1)
    return Pool(dsn, kwargs={"application_name": app, **(conn_kwargs or {})}, **kwargs)


def one(conn: PooledConnection, query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def one_row(conn: PooledConnection, query: str, params: Any = None) -> tuple[Any, ...]:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return tuple(row)


def backend_query(admin: Admin, pid: int) -> tuple[str, str]:
    """The last query a backend ran, and its state, as the server sees them."""
    row = admin.execute(
        "SELECT query, state FROM pg_stat_activity WHERE pid = %s", (pid,)
    ).fetchone()
    assert row is not None, f"no backend {pid}"
    return str(row[0]), str(row[1])


def backend_alive(admin: Admin, pid: int) -> bool:
    row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    assert row is not None
    return bool(row[0])


def backend_ended(admin: Admin, pid: int) -> bool:
    return not backend_alive(admin, pid)


def pinned_warnings(caplog: pytest.LogCaptureFixture) -> int:
    return sum(
        1
        for r in caplog.records
        if r.name == "pgpoolkit" and r.levelno == logging.WARNING and "pinned" in r.getMessage()
    )


_auto_explain: bool | None = None


def require_auto_explain(dsn: str) -> None:
    global _auto_explain
    if _auto_explain is None:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("LOAD 'auto_explain'")
            _auto_explain = True
        except psycopg.Error:
            _auto_explain = False
    if not _auto_explain:
        pytest.skip("auto_explain is not available on this server")


# -- transaction mode: many clients over few server connections ---------------------------------


def test_200_clients_over_5_server_connections(dsn: str, admin: Admin, app: str) -> None:
    n_threads, per_thread, rounds = 50, 4, 3
    n_clients = n_threads * per_thread
    barrier = threading.Barrier(n_threads + 1, timeout=60)
    results: dict[tuple[int, int], list[Any]] = {}
    errors: list[BaseException] = []
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:  # the only user of ``admin`` while the workers run
        while not stop.is_set():
            samples.append(server_connections(admin, app))

    with make_pool(dsn, app, mode="transaction", max_size=5, timeout=60) as pool:

        def worker(t: int) -> None:
            try:
                clients = [pool.connect() for _ in range(per_thread)]
                for k, c in enumerate(clients):
                    c.autocommit = k % 2 == 0  # half autocommit, half explicit commits
                barrier.wait()  # all 200 open
                barrier.wait()  # go
                for r in range(rounds):
                    for k, c in enumerate(clients):
                        n = (t * per_thread + k) * 100 + r
                        got = c.execute("SELECT %s::int * 2, pg_backend_pid()", (n,)).fetchone()
                        assert got is not None
                        results.setdefault((t, k), []).append(got[0] - 2 * n)
                        if not c.autocommit:
                            c.commit()
            except BaseException as ex:
                errors.append(ex)
                barrier.abort()
                raise
            finally:
                try:
                    barrier.wait()  # done
                    barrier.wait()  # closed by main's leave
                finally:
                    for c in clients:
                        c.close()

        threads = [
            threading.Thread(target=worker, args=(t,), daemon=True) for t in range(n_threads)
        ]
        for th in threads:
            th.start()
        barrier.wait()
        stats = pool.stats()
        assert (stats.clients_open, stats.clients_idle) == (n_clients, n_clients)
        assert stats.servers_active == 0

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        barrier.wait()
        barrier.wait()
        stop.set()
        sampler.join(10)

        assert not errors, errors[:3]
        stats = pool.stats()
        assert stats.clients_open == n_clients
        assert stats.clients_idle == n_clients  # every client gave its server connection back
        assert stats.clients_active == stats.servers_active == 0
        assert stats.clients_waiting == 0
        assert stats.servers_idle <= 5
        assert stats.requests_queued_total > 0  # the clients did have to queue
        half = n_clients // 2
        executes = n_clients * rounds
        assert stats.transactions_total == executes
        assert stats.statements_total == executes + half * rounds  # plus the commits
        barrier.wait()
        for th in threads:
            th.join(10)
        assert pool.stats().clients_open == 0

    assert len(results) == n_clients
    assert all(v == [0] * rounds for v in results.values())
    assert len(samples) >= 3, "pg_stat_activity was not sampled while the clients ran"
    assert 1 <= max(samples) <= 5


# -- transaction mode: a held transaction --------------------------------------------------------


@pytest.mark.parametrize("how", ["implicit", "block"])
def test_held_transaction_blocks_another_client(
    dsn: str, admin: Admin, table: str, app: str, how: str
) -> None:
    with make_pool(dsn, app, mode="transaction", max_size=1) as pool:
        c1, c2 = pool.connect(), pool.connect()

        def other() -> Any:
            return one(c2, f"SELECT count(*) FROM {table}")

        if how == "implicit":
            c1.execute(f"INSERT INTO {table} VALUES (1)")
            assert state(c1) is ClientState.IN_TRANSACTION
            waiter = Background(other)
            wait_for(lambda: pool.stats().clients_waiting == 1, what="c2 to queue")
            assert waiter.is_alive()
            c1.commit()
        else:
            with c1.transaction():
                c1.execute(f"INSERT INTO {table} VALUES (1)")
                waiter = Background(other)
                wait_for(lambda: pool.stats().clients_waiting == 1, what="c2 to queue")
                assert state(c1) is ClientState.IN_TRANSACTION
                assert waiter.is_alive()
        assert waiter.outcome() == 1  # c2 ran after the commit and saw the row
        assert state(c2) is ClientState.IN_TRANSACTION
        c2.commit()
        assert state(c1) is ClientState.IDLE and state(c2) is ClientState.IDLE
        assert rows(admin, table) == [1]
        c1.close()
        c2.close()


def test_results_stay_readable_after_release(dsn: str, app: str) -> None:
    with make_pool(dsn, app, {"autocommit": True}, mode="transaction", max_size=1) as pool:
        c1, c2 = pool.connect(), pool.connect()
        cur = c1.execute("SELECT generate_series(1, 10), pg_backend_pid()")
        assert state(c1) is ClientState.IDLE  # released: the statement is over
        pcur = c1.cursor()
        pcur.execute("SELECT 'x' || generate_series(1, 3)")
        assert state(c1) is ClientState.IDLE
        # the only server connection goes to c2 meanwhile
        assert one(c2, "SELECT generate_series(100, 200)") == 100
        c2.execute("SELECT 'other', 1, 2, 3")
        got = cur.fetchall()
        assert [r[0] for r in got] == list(range(1, 11))
        assert len({r[1] for r in got}) == 1
        assert pcur.fetchone() == ("x1",)
        assert pcur.fetchall() == [("x2",), ("x3",)]
        c1.close()
        c2.close()


# -- statement mode -----------------------------------------------------------------------------


def test_statement_mode_refuses_transactions_before_the_server(
    dsn: str, admin: Admin, table: str, app: str
) -> None:
    with make_pool(dsn, app, mode="statement", max_size=1) as pool:
        c = pool.connect()
        assert c.autocommit is True
        pid = one(c, "SELECT pg_backend_pid()")
        c.execute(f"INSERT INTO {table} VALUES (1)")
        assert rows(admin, table) == [1]  # autocommit: visible at once
        last = backend_query(admin, pid)
        assert last == (f"INSERT INTO {table} VALUES (1)", "idle")

        def refused(fn: Callable[[], Any], what: str) -> None:
            with pytest.raises(PolicyViolation) as info:
                fn()
            message = str(info.value)
            assert "statement" in message and what in message
            assert "mode='transaction'" in message  # the way out
            assert backend_query(admin, pid) == last  # nothing reached the server
            assert rows(admin, table) == [1]
            assert state(c) is ClientState.IDLE

        def leave_autocommit() -> None:
            c.autocommit = False

        refused(lambda: c.transaction().__enter__(), "transaction()")
        refused(leave_autocommit, "autocommit")
        refused(lambda: c.set_autocommit(False), "autocommit")
        for text in (
            f"INSERT INTO {table} VALUES (2); BEGIN",
            f"BEGIN; INSERT INTO {table} VALUES (2); COMMIT",
            f"START TRANSACTION; INSERT INTO {table} VALUES (2)",
            "  begin isolation level serializable",
            f"/* hi */ BEGIN; INSERT INTO {table} VALUES (2)",
        ):
            refused(lambda text=text: c.execute(text), "BEGIN")  # type: ignore[misc]
            refused(lambda text=text: c.cursor().execute(text), "BEGIN")  # type: ignore[misc]
        with pytest.raises(PolicyViolation), c.transaction():
            c.execute(f"INSERT INTO {table} VALUES (3)")
        assert c.autocommit is True
        assert rows(admin, table) == [1]
        stats = pool.stats()
        assert stats.servers_active == 0 and stats.clients_idle == 1

        # plain statements keep working, each its own transaction
        c.execute(f"INSERT INTO {table} VALUES (4)")
        c.execute(f"INSERT INTO {table} VALUES (5); INSERT INTO {table} VALUES (6)")
        assert one(c, "SELECT 'BEGIN'") == "BEGIN"  # the word in a string is no BEGIN
        assert rows(admin, table) == [1, 4, 5, 6]
        c.close()
        # one per execute (a multi-statement string is one), refused ones not counted
        assert pool.stats().transactions_total == pool.stats().statements_total == 5


# -- session mode ---------------------------------------------------------------------------------


def test_session_mode_one_backend_and_free_clean_release(dsn: str, admin: Admin, app: str) -> None:
    with make_pool(dsn, app, max_size=1) as pool:
        assert pool.policy.name == "session"
        c1 = pool.connect()
        assert state(c1) is ClientState.BOUND  # bound from connect
        pid = c1.info.backend_pid
        for _ in range(3):
            assert one(c1, "SELECT pg_backend_pid()") == pid
            c1.commit()
        with c1.transaction():
            assert one(c1, "SELECT pg_backend_pid()") == pid
        c1.autocommit = True
        marker = f"SELECT 'clean-{uuid.uuid4().hex}'"
        c1.execute(marker)
        assert pool.stats().clients_idle == 0
        c1.close()
        # a clean client: its release sent nothing to the server
        assert backend_query(admin, pid) == (marker, "idle")

        c2 = pool.connect()
        assert c2.info.backend_pid == pid
        assert c2.autocommit is False  # the pool's default again
        c2.execute("SET work_mem = '7MB'")
        c2.commit()
        c2.close()
        assert backend_query(admin, pid) == ("DISCARD ALL", "idle")

        with pool.connect() as c3:
            assert c3.info.backend_pid == pid
            assert one(c3, "SHOW work_mem") == one_admin(admin, "SHOW work_mem")
        # committed at block end: a round trip the client asked for, no reset
        assert backend_query(admin, pid) == ("COMMIT", "idle")


def one_admin(admin: Admin, query: str) -> Any:
    row = admin.execute(query).fetchone()
    assert row is not None
    return row[0]


# -- session state: pin, error, reset -------------------------------------------------------------

#: kind -> (the statement leaving session state, a probe of that state on the backend)
KINDS: dict[str, tuple[str, str]] = {
    "set": ("SET work_mem = '7MB'", "SELECT current_setting('work_mem')"),
    "set_role": ("SET ROLE {role}", "SELECT current_user || '/' || session_user"),
    "session_authorization": (
        "SET SESSION AUTHORIZATION {role}",
        "SELECT current_user || '/' || session_user",
    ),
    "listen": ("LISTEN pgpk_channel", "SELECT count(*) FROM pg_listening_channels()"),
    "prepare": (
        "PREPARE pgpk_stmt(int) AS SELECT $1",
        "SELECT count(*) FROM pg_prepared_statements WHERE from_sql",
    ),
    "hold_cursor": (
        "DECLARE pgpk_cursor CURSOR WITH HOLD FOR SELECT 1",
        "SELECT count(*) FROM pg_cursors",
    ),
    "temp_table": (
        "CREATE TEMP TABLE pgpk_temp (x int)",
        "SELECT to_regclass('pgpk_temp') IS NOT NULL",
    ),
    "load": (
        "LOAD 'auto_explain'",
        "SELECT current_setting('auto_explain.log_min_duration', true)",
    ),
    "advisory_lock": (
        "SELECT pg_advisory_lock(424242)",
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
    ),
    "set_config": (
        "SELECT set_config('pgpk.tenant', 'alice', false)",
        "SELECT coalesce(current_setting('pgpk.tenant', true), '')",
    ),
    "set_config_call": (  # a call among the arguments: the scan must find the end
        "SELECT set_config('pgpk.tenant', lower('BOB'), false)",
        "SELECT coalesce(current_setting('pgpk.tenant', true), '')",
    ),
}

#: plain settings: a transaction-mode client keeps them instead of being pinned
REPLAYED = ("set", "set_config")

POLICIES: dict[str, Callable[[], str | Policy]] = {
    "session": lambda: "session",
    "transaction-pin": lambda: "transaction",
    "transaction-error": lambda: TransactionPolicy(on_session_state="error"),
    "statement-pin": lambda: StatementPolicy(),
    "statement-error": lambda: StatementPolicy(on_session_state="error"),
}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("policy", list(POLICIES))
def test_session_state(
    dsn: str,
    admin: Admin,
    app: str,
    role: str,
    kind: str,
    policy: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if kind == "load":
        require_auto_explain(dsn)
    caplog.set_level(logging.WARNING, logger="pgpoolkit")
    statement, probe = KINDS[kind]
    statement = statement.format(role=role)
    mode = POLICIES[policy]()
    with make_pool(dsn, app, {"autocommit": True}, mode=mode, max_size=1) as pool:
        with pool.connect() as c0:
            baseline = one(c0, probe)
            pid = one(c0, "SELECT pg_backend_pid()")

        if policy.endswith("error"):
            c1 = pool.connect()
            last = backend_query(admin, pid)
            with pytest.raises(PolicyViolation) as info:
                c1.execute(statement)
            assert policy.split("-")[0] in str(info.value)  # names the mode
            assert "mode='session'" in str(info.value)  # and the way out
            assert backend_query(admin, pid) == last  # it never reached the server
            assert state(c1) is ClientState.IDLE
            assert one(c1, probe) == baseline
            assert pool.stats().clients_pinned == 0
            c1.close()
            assert pinned_warnings(caplog) == 0
            return

        for _ in range(2):  # twice: the warning is logged once per pool
            c1 = pool.connect()
            c1.execute(statement)
            assert one(c1, probe) != baseline  # the state is there for its client
            assert one(c1, "SELECT pg_backend_pid()") == pid  # on the same backend
            if policy == "session":
                assert state(c1) is ClientState.BOUND
                assert pool.stats().clients_pinned == 0
            elif kind in REPLAYED:  # kept by the client and set on what it borrows: no pin
                assert state(c1) is ClientState.IDLE
                stats = pool.stats()
                assert stats.clients_pinned == 0 and stats.servers_active == 0
            else:
                assert state(c1) is ClientState.PINNED
                stats = pool.stats()
                assert stats.clients_pinned == 1 and stats.servers_active == 1
            c1.close()
            assert pool.stats().clients_pinned == 0
            assert pool.stats().servers_active == 0

            # the next client of that server connection: a clean session
            with pool.connect() as c2:
                assert one(c2, probe) == baseline
                if kind == "load":  # LOAD cannot be undone: that backend had to go
                    wait_for(partial(backend_ended, admin, pid), what="the backend to end")
                    pid = one(c2, "SELECT pg_backend_pid()")
                else:
                    assert one(c2, "SELECT pg_backend_pid()") == pid
                user = one(c2, "SELECT current_user || '/' || session_user")
                assert role not in user
        if kind == "advisory_lock":
            locks = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 424242"
            assert one_admin(admin, locks) == 0
        assert pinned_warnings(caplog) == (0 if policy == "session" or kind in REPLAYED else 1)


def test_pinned_inside_a_transaction_keeps_its_backend(
    dsn: str, admin: Admin, table: str, app: str
) -> None:
    with make_pool(dsn, app, mode="transaction", max_size=1) as pool:
        c1, c2 = pool.connect(), pool.connect()
        c1.execute(f"INSERT INTO {table} VALUES (1)")
        c1.execute("SET statement_timeout = '12s'")
        assert state(c1) is ClientState.PINNED
        c1.commit()
        assert state(c1) is ClientState.PINNED  # kept after the commit
        assert rows(admin, table) == [1]
        waiter = Background(lambda: one(c2, "SHOW statement_timeout"))
        wait_for(lambda: pool.stats().clients_waiting == 1, what="c2 to queue")
        assert one(c1, "SHOW statement_timeout") == "12s"
        c1.rollback()
        c1.close()
        assert waiter.outcome() == "0"  # reset before c2 got it
        c2.close()


def test_set_role_never_leaks(dsn: str, admin: Admin, app: str, role: str) -> None:
    """SET ROLE however written: composed with psycopg.sql, inside a transaction, followed
    by an error; in every mode the next client is its own user again."""
    ways: list[Callable[[PooledConnection], Any]] = [
        lambda c: c.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role))),
        lambda c: c.execute(sql.SQL("SET ROLE " + role)),
        lambda c: c.execute(f"SET ROLE {role}".encode()),
        lambda c: c.cursor().execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role))),
        lambda c: c.execute(f"SELECT 1; SET ROLE {role}"),
        lambda c: c.execute(f"set local work_mem = '1MB'; set role {role}"),
        lambda c: c.execute("SELECT set_config('role', %s, false)", (role,)),
    ]
    me = one_admin(admin, "SELECT current_user")
    for mode in ("session", "transaction", "statement"):
        with make_pool(dsn, f"{app}-{mode}", {"autocommit": True}, mode=mode, max_size=1) as pool:
            for way in ways:
                c1 = pool.connect()
                way(c1)
                assert one(c1, "SELECT current_user") == role
                c1.close()
                with pool.connect() as c2:
                    assert one(c2, "SELECT current_user || '/' || session_user") == f"{me}/{me}"


@pytest.fixture(scope="module")
def login_user(dsn: str, role: str) -> Iterator[str]:
    """A login role that is no superuser and may SET ROLE to ``role``: the server reports no
    is_superuser change when it does, so the pool has only the query text to go by."""
    name = f"pgpk_login_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN NOSUPERUSER")
        conn.execute(f"GRANT {role} TO {name}")
        yield name
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,)
        )
        conn.execute(f"DROP ROLE {name}")


def test_role_change_the_scan_cannot_be_fooled_into_missing(
    dsn: str, app: str, role: str, login_user: str
) -> None:
    """What PostgreSQL reads in a query and a naive scan does not (a quoted function name,
    psycopg.sql identifiers, nested comments, a keyword glued to a string), and what no scan
    reads (a DO block): the next client is its own user again, in every mode (issue 12)."""
    ways: list[Callable[[PooledConnection], Any]] = [
        lambda c: c.execute(f"""SELECT "set_config"('role', '{role}', false)"""),
        lambda c: c.execute(
            sql.SQL("SELECT {}('role', {}, false)").format(
                sql.Identifier("set_config"), sql.Literal(role)
            )
        ),
        lambda c: c.execute(f"SELECT 1 /* /* */ ' */ ; SET ROLE {role}; SELECT ' '"),
        lambda c: c.execute(
            f"SELECT CASE WHEN true THEN 'a' ELSE'\\' END; SET ROLE {role}; SELECT ' '"
        ),
        lambda c: c.execute(f"DO $$ BEGIN PERFORM set_config('role', '{role}', false); END $$"),
    ]
    for mode in ("session", "transaction"):
        with make_pool(
            dsn, f"{app}-{mode}", {"autocommit": True, "user": login_user}, mode=mode, max_size=1
        ) as pool:
            for way in ways:
                c1 = pool.connect()
                way(c1)
                assert one(c1, "SELECT current_user") == role
                c1.close()
                with pool.connect() as c2:
                    assert one(c2, "SELECT current_user") == login_user


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_reset_always_resets_what_no_scan_sees(
    dsn: str, admin: Admin, app: str, role: str, login_user: str, mode: str
) -> None:
    """A function that switches the role and a setting, called by a user the server reports
    nothing of: with reset_always=True the next client is its own user, with its settings."""
    fn = f"pgpk_tenant_{uuid.uuid4().hex[:8]}"
    admin.execute(
        f"CREATE FUNCTION {fn}(r text) RETURNS void LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM set_config('role', r, false);"
        " PERFORM set_config('pgpk.tenant', r, false); END $$"
    )
    try:
        with make_pool(
            dsn,
            f"{app}-{mode}",
            {"autocommit": True, "user": login_user},
            mode=mode,
            max_size=1,
            reset_always=True,
        ) as pool:
            for _ in range(2):
                with pool.connection() as c1, c1.transaction():  # one borrowing in any mode
                    c1.execute(f"SELECT {fn}(%s)", (role,))
                    assert one(c1, "SELECT current_user") == role
                with pool.connection() as c2:
                    assert one(c2, "SELECT current_user") == login_user
                    assert one(c2, "SELECT current_setting('pgpk.tenant', true)") in ("", None)
    finally:
        admin.execute(f"DROP FUNCTION {fn}(text)")


def test_undetectable_role_change_is_caught_by_the_server_report(
    dsn: str, admin: Admin, app: str, role: str
) -> None:
    """A function that switches the role: the text tells nothing, the server reports
    is_superuser changing; the client is pinned and its connection reset on close."""
    fn = f"pgpk_become_{uuid.uuid4().hex[:8]}"
    admin.execute(
        f"CREATE FUNCTION {fn}(r text) RETURNS void LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM set_config('role', r, false); END $$"
    )
    me = one_admin(admin, "SELECT current_user")
    try:
        for mode in ("session", "transaction", "statement"):
            with make_pool(
                dsn, f"{app}-{mode}", {"autocommit": True}, mode=mode, max_size=1
            ) as pool:
                c1 = pool.connect()
                c1.execute(f"SELECT {fn}(%s)", (role,))
                if mode != "session":
                    # parked, its connection is c1's own: the change is found when it would
                    # leave c1, which is pinned then and keeps it
                    with pytest.raises(PoolTimeout):
                        pool.getconn(timeout=0.2)
                    assert state(c1) is ClientState.PINNED
                assert one(c1, "SELECT current_user") == role
                c1.close()
                with pool.connect() as c2:
                    assert one(c2, "SELECT current_user || '/' || session_user") == f"{me}/{me}"
    finally:
        admin.execute(f"DROP FUNCTION {fn}(text)")


def test_notifications_and_handlers_stay_with_their_client(
    dsn: str, admin: Admin, app: str
) -> None:
    """What a client left on the psycopg connection (notifications received for its LISTEN,
    notify and notice handlers) goes with it: the next client never sees them."""
    with make_pool(dsn, app, {"autocommit": True}, max_size=1) as pool:  # session mode
        c0 = pool.connect()
        c0.execute("LISTEN pgpk_secrets")
        admin.execute("NOTIFY pgpk_secrets, 'for c0 only'")
        c0.execute("SELECT 1")  # the notification arrives, queued for c0's notifies()
        c0.close()
        c1 = pool.connect()
        got: list[str] = []
        c1.add_notify_handler(lambda n: got.append(n.payload))
        c1.execute("LISTEN pgpk_secrets")
        admin.execute("NOTIFY pgpk_secrets, 'for c1 only'")
        c1.execute("SELECT 1")  # the notification arrives with this result
        assert got == ["for c1 only"]
        c1.close()
        with pool.connect() as c2:
            c2.execute("LISTEN pgpk_secrets")
            assert list(c2.notifies(timeout=0)) == []  # nothing of c1's queued for c2
            admin.execute("NOTIFY pgpk_secrets, 'for c2 only'")
            assert [n.payload for n in c2.notifies(timeout=5, stop_after=1)] == ["for c2 only"]
        assert got == ["for c1 only"]  # c1's handler heard nothing of c2's

    with make_pool(dsn, f"{app}-t", mode="transaction", max_size=1) as pool:
        c1, c2 = pool.connect(), pool.connect()
        notices: list[str] = []
        with c1.transaction():
            c1.add_notice_handler(lambda d: notices.append(str(d.message_primary)))
            c1.execute("DO $$ BEGIN RAISE NOTICE 'c1 notice'; END $$")
        c2.execute("DO $$ BEGIN RAISE NOTICE 'c2 notice'; END $$")
        c2.commit()
        assert notices == ["c1 notice"]  # c2's notices never reach c1's handler
        c1.close()
        c2.close()


# -- prepared statements -------------------------------------------------------------------------


QUERIES: list[tuple[str, Callable[[int], Any]]] = [
    ("SELECT /* pgpk_q1 */ %s::int + 1", lambda n: n + 1),
    ("SELECT /* pgpk_q2 */ %s::text || 'x'", lambda n: f"{n}x"),
    ("SELECT /* pgpk_q3 */ count(*) FROM generate_series(1, %s::int)", lambda n: n),
    ("SELECT /* pgpk_q4 */ %s::int * %s::int", lambda n: n * n),
]


@pytest.mark.parametrize("mode", ["session", "transaction", "statement"])
def test_prepared_statements_with_many_clients(dsn: str, admin: Admin, app: str, mode: str) -> None:
    n_threads, per_thread, rounds = 6, 5, 3  # 30 clients over 3 connections
    errors: list[BaseException] = []
    done = [0]
    lock = threading.Lock()
    with make_pool(dsn, app, {"prepare_threshold": 0}, mode=mode, min_size=3, max_size=3) as pool:

        def worker(t: int) -> None:
            try:
                for k in range(per_thread):
                    with pool.connect() as c:
                        for r in range(rounds):
                            for query, expected in QUERIES:
                                n = t * 1000 + k * 10 + r
                                params = (n, n) if query.count("%s") == 2 else (n,)
                                assert one(c, query, params) == expected(n)
                            if mode != "statement":
                                c.commit()
                    with lock:
                        done[0] += 1
            except BaseException as ex:
                errors.append(ex)

        threads = [
            threading.Thread(target=worker, args=(t,), daemon=True) for t in range(n_threads)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert not errors, errors[:3]
        assert done[0] == n_threads * per_thread
        assert server_connections(admin, app) <= 3
        # the server did prepare them (protocol-level statements, not SQL PREPARE)
        with pool.connect() as c:
            prepared = one(
                c,
                "SELECT count(*) FROM pg_prepared_statements "
                "WHERE NOT from_sql AND statement LIKE '%%pgpk' || '_q%%'",
            )
            assert prepared == len(QUERIES)


def test_prepared_statements_after_repeated_resets(dsn: str, app: str) -> None:
    """psycopg notices a DISCARD ALL only the first time it runs that text: the pool's
    repeated resets must still keep its prepared statements cache right."""
    with make_pool(dsn, app, {"prepare_threshold": 1, "autocommit": True}, max_size=1) as pool:
        for i in range(5):
            with pool.connect() as c:
                for _ in range(1 if i == 0 else 3):  # prepared from the 2nd run on
                    assert one(c, "SELECT /* pgpk_rr */ %s::int", (i,)) == i
                c.execute("SET work_mem = '9MB'")  # reset on release


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_prepared_statements_survive_session_resets(dsn: str, app: str, mode: str) -> None:
    with make_pool(
        dsn, app, {"prepare_threshold": 0, "autocommit": True}, mode=mode, max_size=1
    ) as pool:
        for i in range(4):
            with pool.connect() as c:
                for query, expected in QUERIES:
                    params = (i, i) if query.count("%s") == 2 else (i,)
                    assert one(c, query, params) == expected(i)
                # session state: the connection is reset (DISCARD ALL) when it goes back
                c.execute("SET work_mem = '9MB'")
                if i == 2 and psycopg.__version__ >= "3.3":  # 3.2 keeps its cache: as direct
                    c.execute("DEALLOCATE ALL")
                for query, expected in QUERIES:
                    params = (i, i) if query.count("%s") == 2 else (i,)
                    assert one(c, query, params) == expected(i)


# -- server-side cursors, COPY, pipelines -------------------------------------------------------


def test_named_cursor_in_a_transaction(dsn: str, admin: Admin, table: str, app: str) -> None:
    with make_pool(dsn, app, mode="transaction", min_size=2, max_size=2) as pool:
        pool.wait()
        c1, c2 = pool.connect(), pool.connect()
        with c1.transaction():
            cur = c1.cursor(name="pgpk_nc")
            cur.execute("SELECT generate_series(1, 10)")
            assert state(c1) is ClientState.IN_TRANSACTION
            assert cur.fetchmany(3) == [(1,), (2,), (3,)]
            assert cur.fetchone() == (4,)
            cur.scroll(1)  # MOVE on the server
            assert [row for row in cur] == [(i,) for i in range(6, 11)]
        assert state(c1) is ClientState.IDLE

        # an implicit transaction: the cursor is read before the commit
        cur2 = c1.cursor("pgpk_nc2")  # the name given positionally, as psycopg allows
        cur2.execute("SELECT generate_series(1, 5)")
        assert cur2.fetchmany(2) == [(1,), (2,)]
        pid1 = c1.info.backend_pid
        c1.commit()

        # its transaction is over: reading it again raises, and never touches the server
        # connection, which is another client's now (c1 parked it between its transactions;
        # the other one taken, the pool takes it back for c2)
        other = pool.getconn()
        c2.execute(f"INSERT INTO {table} VALUES (1)")
        assert c2.info.backend_pid == pid1
        pool.putconn(other)
        last = backend_query(admin, pid1)
        with pytest.raises(PolicyViolation, match="withhold=True"):
            cur2.fetchone()
        with pytest.raises(PolicyViolation):
            cur2.fetchall()
        with pytest.raises(PolicyViolation):
            cur2.scroll(1)
        assert cur2.name == "pgpk_nc2"  # what needs no server is still there
        assert backend_query(admin, pid1) == last
        assert c2.info.transaction_status == TransactionStatus.INTRANS

        # executed again in a new transaction, on whichever connection it gets
        with c1.transaction():
            cur2.execute("SELECT generate_series(1, 3)")
            assert cur2.fetchall() == [(1,), (2,), (3,)]
            assert c1.info.backend_pid != pid1
            cur3 = c1.cursor(name="pgpk_nc3")
            cur3.execute("SELECT 1")
        # closing a cursor whose transaction ended: no round trip on c2's connection
        assert backend_query(admin, pid1) == last
        cur2.close()
        cur3.close()
        assert cur2.closed and cur3.closed
        assert backend_query(admin, pid1) == last
        c2.commit()
        assert rows(admin, table) == [1]
        c1.close()
        c2.close()
        assert pool.stats().servers_active == 0


def test_cursor_iteration(dsn: str, app: str) -> None:
    with make_pool(dsn, app, mode="transaction", max_size=1) as pool:
        c = pool.connect()
        cur = c.cursor()
        cur.execute("SELECT generate_series(1, 4)")
        c.commit()
        assert [r[0] for r in cur] == [1, 2, 3, 4]  # client-side: read after the release
        with c.transaction():
            named = c.cursor(name="pgpk_iter")
            named.itersize = 2
            named.execute("SELECT generate_series(1, 5)")
            assert [r[0] for r in named] == [1, 2, 3, 4, 5]
        c.close()


@pytest.mark.parametrize("mode", ["session", "transaction", "statement"])
def test_withhold_named_cursor_is_session_state(dsn: str, app: str, mode: str) -> None:
    with make_pool(dsn, app, {"autocommit": True}, mode=mode, max_size=1) as pool:
        c1 = pool.connect()
        cur = c1.cursor(name="pgpk_held", withhold=True)
        cur.execute("SELECT generate_series(1, 5)")
        if mode != "session":
            assert state(c1) is ClientState.PINNED
            assert pool.stats().clients_pinned == 1
        assert cur.fetchmany(2) == [(1,), (2,)]
        assert one(c1, "SELECT count(*) FROM pg_cursors") == 1
        assert cur.fetchall() == [(3,), (4,), (5,)]
        c1.close()  # the cursor left open
        with pool.connect() as c2:
            assert one(c2, "SELECT count(*) FROM pg_cursors") == 0
        assert pool.stats().clients_pinned == 0


@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_closing_a_withhold_cursor_unpins_the_client(dsn: str, app: str, mode: str) -> None:
    with make_pool(dsn, app, {"autocommit": True}, mode=mode, max_size=1) as pool:
        c1 = pool.connect()
        cur = c1.cursor(name="pgpk_held", withhold=True)
        cur.execute("SELECT generate_series(1, 3)")
        assert state(c1) is ClientState.PINNED
        assert cur.fetchall() == [(1,), (2,), (3,)]
        cur.close()  # psycopg's CLOSE, sent outside execute()
        assert cur.closed
        assert state(c1) is ClientState.IDLE
        assert pool.stats().clients_pinned == 0
        # the only server connection is no longer c1's: another client gets it
        with pool.connect(timeout=2) as c2:
            assert one(c2, "SELECT count(*) FROM pg_cursors") == 0
        assert one(c1, "SELECT 1") == 1
        c1.close()


@pytest.mark.parametrize("autocommit", [True, False])
def test_copy_keeps_the_connection_for_its_block(
    dsn: str, admin: Admin, table: str, app: str, autocommit: bool
) -> None:
    with make_pool(dsn, app, {"autocommit": autocommit}, mode="transaction", max_size=1) as pool:
        c = pool.connect()
        with c.cursor() as cur:
            with cur.copy(f"COPY {table} (id) FROM STDIN") as copy:
                assert state(c) is not ClientState.IDLE
                assert pool.stats().servers_active == 1
                for i in range(1, 6):
                    copy.write_row((i,))
            if autocommit:
                assert state(c) is ClientState.IDLE
                assert rows(admin, table) == [1, 2, 3, 4, 5]
            else:
                assert state(c) is ClientState.IN_TRANSACTION
                assert rows(admin, table) == []
                c.commit()
                assert rows(admin, table) == [1, 2, 3, 4, 5]
            with cur.copy(f"COPY (SELECT id * 10 FROM {table} ORDER BY id) TO STDOUT") as copy:
                assert pool.stats().servers_active == 1
                got = [int(r[0]) for r in copy.rows()]
            assert got == [10, 20, 30, 40, 50]
            if not autocommit:
                c.commit()
            assert state(c) is ClientState.IDLE
        c.close()
        assert pool.stats().servers_active == 0


def test_pipeline_keeps_the_connection_for_its_block(
    dsn: str, admin: Admin, table: str, app: str
) -> None:
    with make_pool(dsn, app, {"autocommit": True}, mode="transaction", max_size=1) as pool:
        c1, c2 = pool.connect(), pool.connect()
        with c1.pipeline():
            c1.execute(f"INSERT INTO {table} VALUES (1)")
            c1.execute(f"INSERT INTO {table} VALUES (2)")
            cur = c1.execute(f"SELECT count(*) FROM {table}")
            assert state(c1) is not ClientState.IDLE
            waiter = Background(lambda: one(c2, f"SELECT count(*) FROM {table}"))
            wait_for(lambda: pool.stats().clients_waiting == 1, what="c2 to queue")
        assert state(c1) is ClientState.IDLE
        assert cur.fetchone() == (2,)
        assert waiter.outcome() == 2
        assert rows(admin, table) == [1, 2]
        c1.close()
        c2.close()


# -- idle_in_transaction_timeout -----------------------------------------------------------------


@pytest.mark.parametrize("how", ["implicit", "block", "nested"])
def test_idle_in_transaction_timeout(
    dsn: str, admin: Admin, table: str, app: str, how: str
) -> None:
    with make_pool(
        dsn, app, mode="transaction", max_size=1, idle_in_transaction_timeout=0.2
    ) as pool:
        c1, c2 = pool.connect(), pool.connect()
        c2.autocommit = True

        def insert_then_idle() -> None:
            c1.execute(f"INSERT INTO {table} VALUES (1)")
            # c2 wants the only server connection: it gets it when c1's transaction is taken
            waiter = Background(lambda: one(c2, f"SELECT count(*) FROM {table}"))
            assert waiter.outcome(timeout=10) == 0  # c1's insert was rolled back
            assert state(c1) is ClientState.IDLE

        if how == "implicit":
            insert_then_idle()
            with pytest.raises(IdleInTransactionTimeout, match="idle_in_transaction_timeout"):
                c1.execute(f"INSERT INTO {table} VALUES (2)")
        elif how == "block":
            with pytest.raises(IdleInTransactionTimeout), c1.transaction():
                insert_then_idle()
        else:
            with pytest.raises(IdleInTransactionTimeout), c1.transaction():
                c1.execute(f"INSERT INTO {table} VALUES (0)")
                with c1.transaction():  # a savepoint
                    insert_then_idle()
        assert rows(admin, table) == []
        # raised once: the client works again
        c1.execute(f"INSERT INTO {table} VALUES (3)")
        c1.commit()
        assert rows(admin, table) == [3]
        with c1.transaction():
            c1.execute(f"INSERT INTO {table} VALUES (4)")
        assert rows(admin, table) == [3, 4]
        c1.close()
        c2.close()
        stats = pool.stats()
        assert stats.servers_active == 0 and stats.clients_open == 0
        # the server connection was rolled back and reused, never discarded
        assert stats.connections_opened_total == 1 and stats.returns_bad_total == 0


# -- max_clients ----------------------------------------------------------------------------------


def test_max_clients(dsn: str, admin: Admin, table: str, app: str) -> None:
    with make_pool(dsn, app, mode="transaction", max_size=1, max_clients=3) as pool:
        clients = [pool.connect() for _ in range(3)]
        with pytest.raises(TooManyClients, match="max_clients=3"):
            pool.connect()
        assert pool.stats().clients_open == 3
        clients.pop().close()
        clients.append(pool.connect())  # a place was freed
        with pytest.raises(TooManyClients):
            pool.connect()

        # a client dropped without close(), holding the only server connection in a
        # transaction: its place and its server connection come back
        lost = clients.pop()
        lost.execute(f"INSERT INTO {table} VALUES (1)")
        del lost
        gc.collect()
        assert pool.stats().clients_open == 2
        c = pool.connect()
        assert one(c, f"SELECT count(*) FROM {table}") == 0  # rolled back
        c.commit()
        clients.append(c)
        for c in clients:
            c.close()
        assert pool.stats().clients_open == 0
        assert pool.stats().servers_active == 0


def test_lost_client_wakes_a_waiting_one(dsn: str, table: str, app: str) -> None:
    with make_pool(dsn, app, mode="transaction", max_size=1) as pool:
        c1, c2 = pool.connect(), pool.connect()
        c1.execute(f"INSERT INTO {table} VALUES (1)")
        waiter = Background(lambda: one(c2, f"SELECT count(*) FROM {table}"))
        wait_for(lambda: pool.stats().clients_waiting == 1, what="c2 to queue")
        del c1
        gc.collect()
        assert waiter.outcome(timeout=8) == 0
        c2.close()


def test_max_clients_counts_clients_waiting_to_connect(dsn: str, app: str) -> None:
    with make_pool(dsn, app, max_size=1, max_clients=2, timeout=5) as pool:  # session mode
        c1 = pool.connect()
        waiter = Background(pool.connect)  # waits for c1's server connection
        wait_for(lambda: pool.stats().clients_waiting == 1, what="the connect to queue")
        with pytest.raises(TooManyClients):
            pool.connect(timeout=2)
        c1.close()
        c2 = waiter.outcome()
        assert pool.stats().clients_open == 1
        c2.close()


def test_max_clients_under_concurrent_connects(dsn: str, app: str) -> None:
    with make_pool(dsn, app, mode="transaction", max_size=1, max_clients=20) as pool:
        clients: list[PooledConnection] = []
        refused = [0]
        lock = threading.Lock()
        start = threading.Barrier(40)

        def connect() -> None:
            start.wait()
            try:
                c = pool.connect()
            except TooManyClients:
                with lock:
                    refused[0] += 1
            else:
                with lock:
                    clients.append(c)

        threads = [threading.Thread(target=connect, daemon=True) for _ in range(40)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(10)
        assert (len(clients), refused[0]) == (20, 20)
        for c in clients:
            c.close()


# -- policy objects --------------------------------------------------------------------------------


def test_policy_instance_is_a_mode(dsn: str, admin: Admin, table: str, app: str) -> None:
    with make_pool(dsn, app, mode=TransactionPolicy(), max_size=1) as pool:
        assert pool.stats().mode == "transaction"
        c = pool.connect()
        c.execute(f"INSERT INTO {table} VALUES (1)")
        assert state(c) is ClientState.IN_TRANSACTION
        c.commit()
        assert state(c) is ClientState.IDLE
        c.close()
    with make_pool(dsn, app, mode=SessionPolicy, max_size=1) as pool:  # a class will do
        assert pool.policy.name == "session"
    with pytest.raises(ValueError, match="mode"):
        make_pool(dsn, app, mode="bogus")
    with pytest.raises(ValueError, match="on_session_state"):
        TransactionPolicy(on_session_state="ignore")  # type: ignore[arg-type]


class NoListen(TransactionPolicy):
    """Transaction pooling that refuses LISTEN only (other session state pins)."""

    name = "no-listen"
    way_out = "use a dedicated psycopg connection for LISTEN"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[ClientState, Event, str]] = []

    def decide(self, state: ClientState, event: Event, detail: str = "") -> Action:
        self.seen.append((state, event, detail))
        if event is Event.SESSION_STATE and "LISTEN" in detail:
            return Action.REFUSE
        return super().decide(state, event, detail)


class SessionNoTransactions(Policy):
    """A table-only policy: session binding, explicit transactions refused."""

    name = "session-autocommit"
    autocommit = True
    way_out = "run statements one by one"
    table = {
        (ClientState.IDLE, Event.CONNECT): Action.BIND,
        (None, Event.STATEMENT): Action.BIND,
        (None, Event.BEGIN): Action.REFUSE,
        (None, Event.SESSION_STATE): Action.RESET,
        (None, Event.CLOSE): Action.RELEASE,
    }


def test_custom_policies(dsn: str, admin: Admin, table: str, app: str) -> None:
    policy = NoListen()
    with make_pool(dsn, f"{app}-a", {"autocommit": True}, mode=policy, max_size=1) as pool:
        assert pool.stats().mode == "no-listen"
        c = pool.connect()
        assert "no-listen" in repr(c)
        with pytest.raises(PolicyViolation, match=r"no-listen.*LISTEN.*dedicated psycopg"):
            c.execute("LISTEN pgpk_nolisten")
        assert state(c) is ClientState.IDLE
        assert one(c, "SELECT count(*) FROM pg_listening_channels()") == 0
        c.execute("CREATE TEMP TABLE pgpk_t (x int)")  # pinned, as the base says
        assert state(c) is ClientState.PINNED
        assert (ClientState.IDLE, Event.SESSION_STATE, "LISTEN") in policy.seen
        c.close()

    custom = SessionNoTransactions()
    with make_pool(dsn, f"{app}-b", mode=custom, max_size=1) as pool:
        c = pool.connect()
        assert state(c) is ClientState.BOUND and c.autocommit is True
        pid = c.info.backend_pid
        with pytest.raises(PolicyViolation, match=r"session-autocommit.*one by one"):
            c.transaction().__enter__()
        with pytest.raises(PolicyViolation):
            c.execute(f"BEGIN; INSERT INTO {table} VALUES (1)")
        c.execute(f"INSERT INTO {table} VALUES (2)")
        c.execute("SET work_mem = '5MB'")
        assert rows(admin, table) == [2]
        assert one(c, "SELECT pg_backend_pid()") == pid
        c.close()
        assert backend_query(admin, pid) == ("DISCARD ALL", "idle")


# -- connection() blocks in transaction mode ---------------------------------------------------


def test_connection_block_in_transaction_mode(dsn: str, admin: Admin, table: str, app: str) -> None:
    with make_pool(dsn, app, mode="transaction", max_size=1) as pool:
        with pool.connection() as c:
            c.execute(f"INSERT INTO {table} VALUES (1)")
            assert state(c) is ClientState.IN_TRANSACTION
            assert rows(admin, table) == []
        assert rows(admin, table) == [1]
        assert c.closed

        with pytest.raises(ZeroDivisionError), pool.connection() as c:
            c.execute(f"INSERT INTO {table} VALUES (2)")
            1 / 0  # noqa: B018
        assert rows(admin, table) == [1]

        with pool.connection() as c:
            with c.transaction():
                c.execute(f"INSERT INTO {table} VALUES (3)")
            assert state(c) is ClientState.IDLE
            c.execute(f"INSERT INTO {table} VALUES (4)")
        assert rows(admin, table) == [1, 3, 4]
        stats = pool.stats()
        assert stats.clients_open == 0 and stats.servers_active == 0
        assert stats.servers_idle == 1


def test_pooled_connection_timeout_waiting_for_a_server(dsn: str, app: str) -> None:
    with make_pool(dsn, app, mode="transaction", max_size=1, timeout=0.3) as pool:
        c1, c2 = pool.connect(), pool.connect()
        c1.execute("SELECT 1")  # holds the connection: a transaction is open
        with pytest.raises(PoolTimeout), pool.connection() as c3:
            c3.execute("SELECT 1")
        c1.rollback()
        assert one(c2, "SELECT 2") == 2
        c1.close()
        c2.close()


# -- a pin ends when what caused it is undone -----------------------------------------------------


UNPINS = {
    "listen": (["LISTEN pgpk_a", "LISTEN pgpk_b", "UNLISTEN pgpk_a"], ["UNLISTEN *"]),
    "temp_table": (
        [
            "CREATE TEMP TABLE pgpk_t1 (x int)",
            "CREATE TEMP TABLE pgpk_t2 (x int)",
            "DROP TABLE pgpk_t1",
        ],
        ["DISCARD TEMP"],
    ),
    "advisory_lock": (
        [
            "SELECT pg_advisory_lock(4201)",
            "SELECT pg_advisory_lock(4202)",
            "SELECT pg_advisory_unlock(4201)",
        ],
        ["SELECT pg_advisory_unlock_all()"],
    ),
    "prepare": (
        ["PREPARE pgpk_p1 AS SELECT 1", "PREPARE pgpk_p2 AS SELECT 2", "DEALLOCATE pgpk_p1"],
        ["DEALLOCATE pgpk_p2"],
    ),
    # (two in one string: not a plain setting, which the client would keep instead of pinning)
    "setting": (["SET work_mem = '7MB'; SET statement_timeout = 5000"], ["RESET ALL"]),
    "role": (["SET ROLE pg_monitor"], ["RESET ROLE"]),
    "two_kinds": (
        ["LISTEN pgpk_c", "SET work_mem = '7MB'; SET x.y = 1", "RESET ALL"],
        ["UNLISTEN *"],
    ),
}


@pytest.mark.parametrize("kind", list(UNPINS))
def test_pin_ends_when_its_reasons_are_undone(dsn: str, admin: Admin, app: str, kind: str) -> None:
    pinning, undoing = UNPINS[kind]
    with make_pool(dsn, app, {"autocommit": True}, mode="transaction", max_size=2) as pool:
        c = pool.connect()
        for statement in pinning:
            c.execute(statement)
        assert state(c) is ClientState.PINNED  # something is still there
        assert pool.stats().clients_pinned == 1
        pid = one(c, "SELECT pg_backend_pid()")
        for statement in undoing:
            c.execute(statement)
        assert state(c) is ClientState.IDLE  # nothing left: borrowing per transaction again
        assert pool.stats().clients_pinned == 0 and pool.stats().servers_active == 0
        # the release that ended the pin reset the session all the same
        assert backend_query(admin, pid)[0] == "DISCARD ALL"
        c.close()


def test_load_pins_for_good(dsn: str, app: str) -> None:
    require_auto_explain(dsn)
    with make_pool(dsn, app, {"autocommit": True}, mode="transaction", max_size=1) as pool:
        c = pool.connect()
        c.execute("LOAD 'auto_explain'")
        c.execute("DISCARD ALL")  # undoes everything but the library
        assert state(c) is ClientState.PINNED
        c.close()
        assert pool.stats().clients_pinned == 0


# -- plain settings in transaction mode: kept by the client, not pinned ---------------------------


def test_plain_settings_follow_their_client(dsn: str, admin: Admin, app: str) -> None:
    with make_pool(dsn, app, {"autocommit": True}, mode="transaction", max_size=2) as pool:
        pool.wait()
        a, b = pool.connect(), pool.connect()
        a.execute("SET TIME ZONE 'Asia/Tokyo'")
        a.execute("SELECT set_config('application_name', %s, false)", ["pgpk-a"])
        a.execute("SET statement_timeout TO 4321")
        assert state(a) is ClientState.IDLE and pool.stats().clients_pinned == 0
        probe = "SELECT current_setting('TimeZone'), current_setting('statement_timeout')"
        default = one_row(b, probe)
        assert default[0] != "Asia/Tokyo"
        # whichever server connection a borrows, its settings are there; b's are the defaults
        for _ in range(3):
            with a.transaction(), b.transaction():  # both bound at once: two connections
                assert one_row(a, probe) == ("Asia/Tokyo", "4321ms")
                assert one(a, "SELECT current_setting('application_name')") == "pgpk-a"
                assert one_row(b, probe) == default
            with b.transaction(), a.transaction():  # the other way round
                assert one_row(a, probe) == ("Asia/Tokyo", "4321ms")
                assert one_row(b, probe) == default
        a.execute("RESET statement_timeout")
        a.execute("SET TIME ZONE DEFAULT")
        assert one_row(a, probe) == default
        # a raw connection from getconn() gets no client's settings
        a.execute("SET statement_timeout = 999")
        raw = pool.getconn()
        assert raw.execute("SHOW statement_timeout").fetchone() != ("999ms",)
        pool.putconn(raw)
        stats = pool.stats()
        assert stats.clients_pinned == 0 and stats.returns_bad_total == 0
        a.close()
        b.close()


def test_settings_inside_a_transaction_still_pin(dsn: str, app: str) -> None:
    with make_pool(dsn, app, mode="transaction", max_size=1) as pool:
        c = pool.connect()  # autocommit off: the SET belongs to a transaction it may roll back
        c.execute("SET work_mem = '7MB'")
        c.commit()
        assert state(c) is ClientState.PINNED
        c.close()


def test_connect_timeout_bounds_every_bind(dsn: str, app: str) -> None:
    # (issue 12: transaction mode waited the pool's timeout, not the one asked for)
    with make_pool(dsn, app, mode="transaction", max_size=1, timeout=30.0) as pool:
        holder = pool.connect()
        holder.execute("SELECT 1")  # holds the only server connection, in a transaction
        quick = pool.connect(timeout=0.3)
        t0 = time.monotonic()
        with pytest.raises(PoolTimeout, match=r"0\.3 s"):
            quick.execute("SELECT 1")
        assert time.monotonic() - t0 < 5
        holder.close()
        quick.close()


def test_broken_server_connection_goes_back_at_once(dsn: str, admin: Admin, app: str) -> None:
    # (issue 12: clients whose backends were terminated mid-transaction kept them: "4 of 4 in
    # use", and every new client timed out until they closed)
    with make_pool(dsn, app, mode="transaction", max_size=2, timeout=3.0) as pool:
        clients = [pool.connect() for _ in range(2)]
        pids = [one(c, "SELECT pg_backend_pid()") for c in clients]  # both in a transaction
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        for c in clients:
            with pytest.raises(psycopg.OperationalError):
                c.execute("SELECT 1")  # psycopg tells of the break
        assert pool.stats().servers_active == 0  # given back at once, whatever comes next
        with pool.connection() as other:  # served at once, by a new connection
            assert one(other, "SELECT 1") == 1
        for c in clients:
            with pytest.raises(psycopg.OperationalError, match="work is lost"):
                c.execute("SELECT 1")  # the transaction it was in is gone: said once
            assert one(c, "SELECT 2") == 2  # then it goes on
            c.commit()
            c.close()
        assert pool.stats().servers_active == 0


# -- what a new client starts with ----------------------------------------------------------------


def test_clients_opened_after_set_mode_follow_the_new_mode(dsn: str, app: str) -> None:
    """The settings a client starts with are kept per server connection and per mode: a mode
    change gives the clients opened after it the new mode's class and settings (statement
    mode's autocommit), and leaves those open before it as they were."""
    with make_pool(dsn, app, mode="session", min_size=1, max_size=2) as pool:
        before = pool.connect()
        assert not before.autocommit and before.state is ClientState.BOUND
        pool.set_mode("transaction")
        during = pool.connect()
        assert not during.autocommit and during.state is ClientState.IDLE
        pool.set_mode("statement")
        after = pool.connect()
        assert after.autocommit  # statement mode's clients are autocommit
        assert one(after, "SELECT 1") == 1 and after.state is ClientState.IDLE
        pool.set_mode("session")
        with pool.connection() as again:  # back to session: bound, the pool's own setting
            assert not again.autocommit and again.state is ClientState.BOUND
        assert before.state is ClientState.BOUND  # still its session-mode self
        for client in (before, during, after):
            client.close()


def test_a_getconn_users_changes_do_not_reach_the_next_client(dsn: str, app: str) -> None:
    """A getconn() user may change the raw connection's prepare_threshold and row factory:
    the next client of that server connection starts from the pool's settings all the same."""
    with make_pool(dsn, app, min_size=1, max_size=1) as pool:
        raw = pool.getconn()
        default = raw.prepare_threshold
        raw.prepare_threshold = None
        raw.row_factory = psycopg.rows.dict_row
        pool.putconn(raw)
        with pool.connection() as client:
            assert client.prepare_threshold == default
            assert client.execute("SELECT 1 AS one").fetchone() == (1,)
