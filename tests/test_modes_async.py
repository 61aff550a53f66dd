"""Pooling modes with AsyncPool, against a real PostgreSQL server: the asyncio twin of
test_modes.py (the same policies drive both shells; these tests show the asyncio shell carries
them out the same way).

Each pool gets its own application_name, so that pg_stat_activity shows its backends only;
waits for an event poll with a deadline, never sleep.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.pq import TransactionStatus

from conftest import server_connections
from pgpoolkit import (
    Action,
    AsyncPool,
    AsyncPooledConnection,
    ClientState,
    Event,
    IdleInTransactionTimeout,
    Policy,
    PolicyViolation,
    PoolTimeout,
    StatementPolicy,
    TooManyClients,
    TransactionPolicy,
)

Admin = psycopg.Connection[tuple[Any, ...]]
AConn = AsyncPooledConnection


# -- helpers ----------------------------------------------------------------------------------


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.005)


async def outcome(task: asyncio.Task[Any], timeout: float = 15.0) -> Any:
    """The result of a background task, which must end within ``timeout``."""
    done, _ = await asyncio.wait({task}, timeout=timeout)
    assert done, "the background call did not end"
    return task.result()


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


def state(conn: AConn) -> ClientState:
    """The client's state (a function, so that type checkers do not narrow it)."""
    return conn.state


def rows(admin: Admin, table: str) -> list[int]:
    return [int(r[0]) for r in admin.execute(f"SELECT id FROM {table} ORDER BY id").fetchall()]


def make_pool(
    dsn: str, app: str, conn_kwargs: dict[str, Any] | None = None, **kwargs: Any
) -> AsyncPool:
    kwargs.setdefault("timeout", 10.0)
    kwargs.setdefault("min_size", 1)
    return AsyncPool(dsn, kwargs={"application_name": app, **(conn_kwargs or {})}, **kwargs)


async def one(conn: AConn, query: Any, params: Any = None) -> Any:
    row = await (await conn.execute(query, params)).fetchone()
    assert row is not None
    return row[0]


def one_admin(admin: Admin, query: str) -> Any:
    row = admin.execute(query).fetchone()
    assert row is not None
    return row[0]


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


class Sampler:
    """Counts a pool's backends in a thread of its own, with a connection of its own, while
    the event loop runs the clients."""

    def __init__(self, dsn: str, app: str) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._conn = psycopg.connect(dsn, autocommit=True)
        self._thread = threading.Thread(target=self._run, args=(app,), daemon=True)
        self._thread.start()

    def _run(self, app: str) -> None:
        while not self._stop.is_set():
            self.samples.append(server_connections(self._conn, app))

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join(10)
        self._conn.close()
        return self.samples


# -- transaction mode: many clients over few server connections ---------------------------------


async def test_200_clients_over_5_server_connections(dsn: str, app: str) -> None:
    n_clients, rounds = 200, 3
    async with make_pool(dsn, app, mode="transaction", max_size=5, timeout=60) as pool:
        clients = [await pool.connect() for _ in range(n_clients)]
        for k, c in enumerate(clients):
            await c.set_autocommit(k % 2 == 0)  # half autocommit, half explicit commits
        stats = pool.stats()
        assert (stats.clients_open, stats.clients_idle) == (n_clients, n_clients)
        assert stats.servers_active == 0

        async def work(k: int, c: AConn) -> list[int]:
            got = []
            for r in range(rounds):
                n = k * 100 + r
                row = await (await c.execute("SELECT %s::int * 2", (n,))).fetchone()
                assert row is not None
                got.append(row[0] - 2 * n)
                if not c.autocommit:
                    await c.commit()
            return got

        sampler = Sampler(dsn, app)
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(work(k, c) for k, c in enumerate(clients))), 60
            )
        finally:
            samples = sampler.stop()
        assert results == [[0] * rounds] * n_clients

        stats = pool.stats()
        assert stats.clients_open == stats.clients_idle == n_clients
        assert stats.clients_active == stats.servers_active == stats.clients_waiting == 0
        assert stats.servers_idle <= 5
        assert stats.requests_queued_total > 0  # the clients did have to queue
        executes = n_clients * rounds
        assert stats.transactions_total == executes
        assert stats.statements_total == executes + n_clients // 2 * rounds  # and commits
        for c in clients:
            await c.close()
        assert pool.stats().clients_open == 0
    assert len(samples) >= 3, "pg_stat_activity was not sampled while the clients ran"
    assert 1 <= max(samples) <= 5


# -- transaction mode: a held transaction --------------------------------------------------------


@pytest.mark.parametrize("how", ["implicit", "block"])
async def test_held_transaction_blocks_another_client(
    dsn: str, admin: Admin, table: str, app: str, how: str
) -> None:
    async with make_pool(dsn, app, mode="transaction", max_size=1) as pool:
        c1, c2 = await pool.connect(), await pool.connect()

        if how == "implicit":
            await c1.execute(f"INSERT INTO {table} VALUES (1)")
            assert state(c1) is ClientState.IN_TRANSACTION
            waiter = asyncio.create_task(one(c2, f"SELECT count(*) FROM {table}"))
            await wait_for(lambda: pool.stats().clients_waiting == 1, what="c2 to queue")
            assert not waiter.done()
            await c1.commit()
        else:
            async with c1.transaction():
                await c1.execute(f"INSERT INTO {table} VALUES (1)")
                waiter = asyncio.create_task(one(c2, f"SELECT count(*) FROM {table}"))
                await wait_for(lambda: pool.stats().clients_waiting == 1, what="c2 to queue")
                assert state(c1) is ClientState.IN_TRANSACTION
                assert not waiter.done()
        assert await outcome(waiter) == 1  # c2 ran after the commit and saw the row
        assert state(c2) is ClientState.IN_TRANSACTION
        await c2.commit()
        assert state(c1) is ClientState.IDLE and state(c2) is ClientState.IDLE
        assert rows(admin, table) == [1]
        await c1.close()
        await c2.close()


async def test_results_stay_readable_after_release(dsn: str, app: str) -> None:
    async with make_pool(dsn, app, {"autocommit": True}, mode="transaction", max_size=1) as pool:
        c1, c2 = await pool.connect(), await pool.connect()
        cur = await c1.execute("SELECT generate_series(1, 10), pg_backend_pid()")
        assert state(c1) is ClientState.IDLE  # released: the statement is over
        pcur = c1.cursor()
        await pcur.execute("SELECT 'x' || generate_series(1, 3)")
        assert state(c1) is ClientState.IDLE
        # the only server connection goes to c2 meanwhile
        assert await one(c2, "SELECT generate_series(100, 200)") == 100
        await c2.execute("SELECT 'other', 1, 2, 3")
        got = await cur.fetchall()
        assert [r[0] for r in got] == list(range(1, 11))
        assert len({r[1] for r in got}) == 1
        assert await pcur.fetchone() == ("x1",)
        assert [r async for r in pcur] == [("x2",), ("x3",)]
        await c1.close()
        await c2.close()


# -- statement mode -----------------------------------------------------------------------------


async def test_statement_mode_refuses_transactions_before_the_server(
    dsn: str, admin: Admin, table: str, app: str
) -> None:
    async with make_pool(dsn, app, mode="statement", max_size=1) as pool:
        c = await pool.connect()
        assert c.autocommit is True
        pid = await one(c, "SELECT pg_backend_pid()")
        await c.execute(f"INSERT INTO {table} VALUES (1)")
        assert rows(admin, table) == [1]  # autocommit: visible at once
        last = backend_query(admin, pid)
        assert last == (f"INSERT INTO {table} VALUES (1)", "idle")

        async def refused(call: Callable[[], Awaitable[Any]], what: str) -> None:
            with pytest.raises(PolicyViolation) as info:
                await call()
            message = str(info.value)
            assert "statement" in message and what in message
            assert "mode='transaction'" in message  # the way out
            assert backend_query(admin, pid) == last  # nothing reached the server
            assert rows(admin, table) == [1]
            assert state(c) is ClientState.IDLE

        await refused(lambda: c.transaction().__aenter__(), "transaction()")
        await refused(lambda: c.set_autocommit(False), "autocommit")
        for text in (
            f"INSERT INTO {table} VALUES (2); BEGIN",
            f"BEGIN; INSERT INTO {table} VALUES (2); COMMIT",
            f"START TRANSACTION; INSERT INTO {table} VALUES (2)",
            "  begin isolation level serializable",
            f"/* hi */ BEGIN; INSERT INTO {table} VALUES (2)",
        ):
            await refused(lambda text=text: c.execute(text), "BEGIN")  # type: ignore[misc]
            await refused(
                lambda text=text: c.cursor().execute(text),
                "BEGIN",  # type: ignore[misc]
            )
        with pytest.raises(PolicyViolation):
            async with c.transaction():
                await c.execute(f"INSERT INTO {table} VALUES (3)")
        with pytest.raises(AttributeError, match="set_autocommit"):
            c.autocommit = False  # asyncio: the setter is a coroutine, as in psycopg
        assert c.autocommit is True
        assert rows(admin, table) == [1]
        stats = pool.stats()
        assert stats.servers_active == 0 and stats.clients_idle == 1

        # plain statements keep working, each its own transaction
        await c.execute(f"INSERT INTO {table} VALUES (4)")
        await c.execute(f"INSERT INTO {table} VALUES (5); INSERT INTO {table} VALUES (6)")
        assert await one(c, "SELECT 'BEGIN'") == "BEGIN"  # the word in a string is no BEGIN
        assert rows(admin, table) == [1, 4, 5, 6]
        await c.close()
        # one per execute (a multi-statement string is one), refused ones not counted
        assert pool.stats().transactions_total == pool.stats().statements_total == 5


# -- session mode ---------------------------------------------------------------------------------


async def test_session_mode_one_backend_and_free_clean_release(
    dsn: str, admin: Admin, app: str
) -> None:
    async with make_pool(dsn, app, max_size=1) as pool:
        assert pool.policy.name == "session"
        c1 = await pool.connect()
        assert state(c1) is ClientState.BOUND  # bound from connect
        pid = c1.info.backend_pid
        for _ in range(3):
            assert await one(c1, "SELECT pg_backend_pid()") == pid
            await c1.commit()
        async with c1.transaction():
            assert await one(c1, "SELECT pg_backend_pid()") == pid
        await c1.set_autocommit(True)
        marker = f"SELECT 'clean-{uuid.uuid4().hex}'"
        await c1.execute(marker)
        assert pool.stats().clients_idle == 0
        await c1.close()
        # a clean client: its release sent nothing to the server
        assert backend_query(admin, pid) == (marker, "idle")

        c2 = await pool.connect()
        assert c2.info.backend_pid == pid
        assert c2.autocommit is False  # the pool's default again
        await c2.execute("SET work_mem = '7MB'")
        await c2.commit()
        await c2.close()
        assert backend_query(admin, pid) == ("DISCARD ALL", "idle")

        async with await pool.connect() as c3:
            assert c3.info.backend_pid == pid
            assert await one(c3, "SHOW work_mem") == one_admin(admin, "SHOW work_mem")
        # committed at block end: a round trip the client asked for, no reset
        assert backend_query(admin, pid) == ("COMMIT", "idle")


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
        "SELECT pg_advisory_lock(424243)",
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
async def test_session_state(
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
    async with make_pool(
        dsn, app, {"autocommit": True}, mode=POLICIES[policy](), max_size=1
    ) as pool:
        async with await pool.connect() as c0:
            baseline = await one(c0, probe)
            pid = await one(c0, "SELECT pg_backend_pid()")

        if policy.endswith("error"):
            c1 = await pool.connect()
            last = backend_query(admin, pid)
            with pytest.raises(PolicyViolation) as info:
                await c1.execute(statement)
            assert policy.split("-")[0] in str(info.value)  # names the mode
            assert "mode='session'" in str(info.value)  # and the way out
            assert backend_query(admin, pid) == last  # it never reached the server
            assert state(c1) is ClientState.IDLE
            assert await one(c1, probe) == baseline
            assert pool.stats().clients_pinned == 0
            await c1.close()
            assert pinned_warnings(caplog) == 0
            return

        for _ in range(2):  # twice: the warning is logged once per pool
            c1 = await pool.connect()
            await c1.execute(statement)
            assert await one(c1, probe) != baseline  # the state is there for its client
            assert await one(c1, "SELECT pg_backend_pid()") == pid  # on the same backend
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
            await c1.close()
            assert pool.stats().clients_pinned == 0
            assert pool.stats().servers_active == 0

            # the next client of that server connection: a clean session
            async with await pool.connect() as c2:
                assert await one(c2, probe) == baseline
                if kind == "load":  # LOAD cannot be undone: that backend had to go
                    await wait_for(partial(backend_ended, admin, pid), what="the backend to end")
                    pid = await one(c2, "SELECT pg_backend_pid()")
                else:
                    assert await one(c2, "SELECT pg_backend_pid()") == pid
                user = await one(c2, "SELECT current_user || '/' || session_user")
                assert role not in user
        if kind == "advisory_lock":
            locks = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 424243"
            assert one_admin(admin, locks) == 0
        assert pinned_warnings(caplog) == (0 if policy == "session" or kind in REPLAYED else 1)


async def test_pinned_inside_a_transaction_keeps_its_backend(
    dsn: str, admin: Admin, table: str, app: str
) -> None:
    async with make_pool(dsn, app, mode="transaction", max_size=1) as pool:
        c1, c2 = await pool.connect(), await pool.connect()
        await c1.execute(f"INSERT INTO {table} VALUES (1)")
        await c1.execute("SET statement_timeout = '12s'")
        assert state(c1) is ClientState.PINNED
        await c1.commit()
        assert state(c1) is ClientState.PINNED  # kept after the commit
        assert rows(admin, table) == [1]
        waiter = asyncio.create_task(one(c2, "SHOW statement_timeout"))
        await wait_for(lambda: pool.stats().clients_waiting == 1, what="c2 to queue")
        assert await one(c1, "SHOW statement_timeout") == "12s"
        await c1.rollback()
        await c1.close()
        assert await outcome(waiter) == "0"  # reset before c2 got it
        await c2.close()


async def test_set_role_never_leaks(dsn: str, admin: Admin, app: str, role: str) -> None:
    """SET ROLE however written: composed with psycopg.sql, as bytes, among other
    statements; in every mode the next client is its own user again."""
    ways: list[Callable[[AConn], Awaitable[Any]]] = [
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
        async with make_pool(
            dsn, f"{app}-{mode}", {"autocommit": True}, mode=mode, max_size=1
        ) as pool:
            for way in ways:
                c1 = await pool.connect()
                await way(c1)
                assert await one(c1, "SELECT current_user") == role
                await c1.close()
                async with await pool.connect() as c2:
                    who = await one(c2, "SELECT current_user || '/' || session_user")
                    assert who == f"{me}/{me}"


async def test_undetectable_role_change_is_caught_by_the_server_report(
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
            async with make_pool(
                dsn, f"{app}-{mode}", {"autocommit": True}, mode=mode, max_size=1
            ) as pool:
                c1 = await pool.connect()
                await c1.execute(f"SELECT {fn}(%s)", (role,))
                if mode != "session":
                    # parked, its connection is c1's own: the change is found when it would
                    # leave c1, which is pinned then and keeps it
                    with pytest.raises(PoolTimeout):
                        await pool.getconn(timeout=0.2)
                    assert state(c1) is ClientState.PINNED
                assert await one(c1, "SELECT current_user") == role
                await c1.close()
                async with await pool.connect() as c2:
                    who = await one(c2, "SELECT current_user || '/' || session_user")
                    assert who == f"{me}/{me}"
    finally:
        admin.execute(f"DROP FUNCTION {fn}(text)")


async def test_notifications_and_handlers_stay_with_their_client(
    dsn: str, admin: Admin, app: str
) -> None:
    """What a client left on the psycopg connection (notifications received for its LISTEN,
    notify and notice handlers) goes with it: the next client never sees them."""
    async with make_pool(dsn, app, {"autocommit": True}, max_size=1) as pool:  # session mode
        c0 = await pool.connect()
        await c0.execute("LISTEN pgpk_secrets")
        admin.execute("NOTIFY pgpk_secrets, 'for c0 only'")
        await c0.execute("SELECT 1")  # the notification arrives, queued for c0's notifies()
        await c0.close()
        c1 = await pool.connect()
        got: list[str] = []
        c1.add_notify_handler(lambda n: got.append(n.payload))
        await c1.execute("LISTEN pgpk_secrets")
        admin.execute("NOTIFY pgpk_secrets, 'for c1 only'")
        await c1.execute("SELECT 1")  # the notification arrives with this result
        assert got == ["for c1 only"]
        await c1.close()
        async with await pool.connect() as c2:
            await c2.execute("LISTEN pgpk_secrets")
            assert [n async for n in c2.notifies(timeout=0)] == []  # nothing of c1's
            admin.execute("NOTIFY pgpk_secrets, 'for c2 only'")
            heard = [n.payload async for n in c2.notifies(timeout=5, stop_after=1)]
            assert heard == ["for c2 only"]
        assert got == ["for c1 only"]  # c1's handler heard nothing of c2's

    async with make_pool(dsn, f"{app}-t", mode="transaction", max_size=1) as pool:
        c1, c2 = await pool.connect(), await pool.connect()
        notices: list[str] = []
        async with c1.transaction():
            c1.add_notice_handler(lambda d: notices.append(str(d.message_primary)))
            await c1.execute("DO $$ BEGIN RAISE NOTICE 'c1 notice'; END $$")
        await c2.execute("DO $$ BEGIN RAISE NOTICE 'c2 notice'; END $$")
        await c2.commit()
        assert notices == ["c1 notice"]  # c2's notices never reach c1's handler
        await c1.close()
        await c2.close()


# -- prepared statements -------------------------------------------------------------------------


QUERIES: list[tuple[str, Callable[[int], Any]]] = [
    ("SELECT /* pgpk_q1 */ %s::int + 1", lambda n: n + 1),
    ("SELECT /* pgpk_q2 */ %s::text || 'x'", lambda n: f"{n}x"),
    ("SELECT /* pgpk_q3 */ count(*) FROM generate_series(1, %s::int)", lambda n: n),
    ("SELECT /* pgpk_q4 */ %s::int * %s::int", lambda n: n * n),
]


def params_for(query: str, n: int) -> tuple[int, ...]:
    return (n, n) if query.count("%s") == 2 else (n,)


@pytest.mark.parametrize("mode", ["session", "transaction", "statement"])
async def test_prepared_statements_with_many_clients(
    dsn: str, admin: Admin, app: str, mode: str
) -> None:
    n_clients, rounds = 30, 3  # 30 clients over 3 connections
    async with make_pool(
        dsn, app, {"prepare_threshold": 0}, mode=mode, min_size=3, max_size=3
    ) as pool:

        async def client(k: int) -> int:
            async with await pool.connect() as c:
                for r in range(rounds):
                    for query, expected in QUERIES:
                        n = k * 10 + r
                        assert await one(c, query, params_for(query, n)) == expected(n)
                    if mode != "statement":
                        await c.commit()
            return k

        done = await asyncio.wait_for(asyncio.gather(*(client(k) for k in range(n_clients))), 60)
        assert done == list(range(n_clients))
        assert server_connections(admin, app) <= 3
        # the server did prepare them (protocol-level statements, not SQL PREPARE)
        async with await pool.connect() as c:
            prepared = await one(
                c,
                "SELECT count(*) FROM pg_prepared_statements "
                "WHERE NOT from_sql AND statement LIKE '%%pgpk' || '_q%%'",
            )
            assert prepared == len(QUERIES)


async def test_prepared_statements_after_repeated_resets(dsn: str, app: str) -> None:
    """psycopg notices a DISCARD ALL only the first time it runs that text: the pool's
    repeated resets must still keep its prepared statements cache right."""
    async with make_pool(
        dsn, app, {"prepare_threshold": 1, "autocommit": True}, max_size=1
    ) as pool:
        for i in range(5):
            async with await pool.connect() as c:
                for _ in range(1 if i == 0 else 3):  # prepared from the 2nd run on
                    assert await one(c, "SELECT /* pgpk_rr */ %s::int", (i,)) == i
                await c.execute("SET work_mem = '9MB'")  # reset on release


@pytest.mark.parametrize("mode", ["session", "transaction"])
async def test_prepared_statements_survive_session_resets(dsn: str, app: str, mode: str) -> None:
    async with make_pool(
        dsn, app, {"prepare_threshold": 0, "autocommit": True}, mode=mode, max_size=1
    ) as pool:
        for i in range(4):
            async with await pool.connect() as c:
                for query, expected in QUERIES:
                    assert await one(c, query, params_for(query, i)) == expected(i)
                # session state: the connection is reset (DISCARD ALL) when it goes back
                await c.execute("SET work_mem = '9MB'")
                if i == 2 and psycopg.__version__ >= "3.3":  # 3.2 keeps its cache: as direct
                    await c.execute("DEALLOCATE ALL")
                for query, expected in QUERIES:
                    assert await one(c, query, params_for(query, i)) == expected(i)


# -- server-side cursors, COPY, pipelines -------------------------------------------------------


async def test_named_cursor_in_a_transaction(dsn: str, admin: Admin, table: str, app: str) -> None:
    async with make_pool(dsn, app, mode="transaction", min_size=2, max_size=2) as pool:
        await pool.wait()
        c1, c2 = await pool.connect(), await pool.connect()
        async with c1.transaction():
            cur = c1.cursor(name="pgpk_nc")
            await cur.execute("SELECT generate_series(1, 10)")
            assert state(c1) is ClientState.IN_TRANSACTION
            assert await cur.fetchmany(3) == [(1,), (2,), (3,)]
            assert await cur.fetchone() == (4,)
            await cur.scroll(1)  # MOVE on the server
            assert [row async for row in cur] == [(i,) for i in range(6, 11)]
        assert state(c1) is ClientState.IDLE

        # an implicit transaction: the cursor is read before the commit
        cur2 = c1.cursor("pgpk_nc2")  # the name given positionally, as psycopg allows
        await cur2.execute("SELECT generate_series(1, 5)")
        assert await cur2.fetchmany(2) == [(1,), (2,)]
        pid1 = c1.info.backend_pid
        await c1.commit()

        # its transaction is over: reading it again raises, and never touches the server
        # connection, which is another client's now (c1 parked it between its transactions;
        # the other one taken, the pool takes it back for c2)
        other = await pool.getconn()
        await c2.execute(f"INSERT INTO {table} VALUES (1)")
        assert c2.info.backend_pid == pid1
        await pool.putconn(other)
        last = backend_query(admin, pid1)
        with pytest.raises(PolicyViolation, match="withhold=True"):
            await cur2.fetchone()
        with pytest.raises(PolicyViolation):
            await cur2.fetchall()
        with pytest.raises(PolicyViolation):
            await cur2.scroll(1)
        assert cur2.name == "pgpk_nc2"  # what needs no server is still there
        assert backend_query(admin, pid1) == last
        assert c2.info.transaction_status == TransactionStatus.INTRANS

        # executed again in a new transaction, on whichever connection it gets
        async with c1.transaction():
            await cur2.execute("SELECT generate_series(1, 3)")
            assert await cur2.fetchall() == [(1,), (2,), (3,)]
            assert c1.info.backend_pid != pid1
            cur3 = c1.cursor(name="pgpk_nc3")
            await cur3.execute("SELECT 1")
        # closing a cursor whose transaction ended: no round trip on c2's connection
        await cur2.close()
        await cur3.close()
        assert cur2.closed and cur3.closed
        assert backend_query(admin, pid1) == last
        await c2.commit()
        assert rows(admin, table) == [1]
        await c1.close()
        await c2.close()
        assert pool.stats().servers_active == 0


async def test_cursor_iteration(dsn: str, app: str) -> None:
    async with make_pool(dsn, app, mode="transaction", max_size=1) as pool:
        c = await pool.connect()
        cur = c.cursor()
        await cur.execute("SELECT generate_series(1, 4)")
        await c.commit()
        assert [r[0] async for r in cur] == [1, 2, 3, 4]  # client-side: read after release
        async with c.transaction():
            named = c.cursor(name="pgpk_iter")
            named.itersize = 2
            await named.execute("SELECT generate_series(1, 5)")
            assert [r[0] async for r in named] == [1, 2, 3, 4, 5]
        await c.close()


@pytest.mark.parametrize("mode", ["session", "transaction", "statement"])
async def test_withhold_named_cursor_is_session_state(dsn: str, app: str, mode: str) -> None:
    async with make_pool(dsn, app, {"autocommit": True}, mode=mode, max_size=1) as pool:
        c1 = await pool.connect()
        cur = c1.cursor(name="pgpk_held", withhold=True)
        await cur.execute("SELECT generate_series(1, 5)")
        if mode != "session":
            assert state(c1) is ClientState.PINNED
            assert pool.stats().clients_pinned == 1
        assert await cur.fetchmany(2) == [(1,), (2,)]
        assert await one(c1, "SELECT count(*) FROM pg_cursors") == 1
        assert await cur.fetchall() == [(3,), (4,), (5,)]
        await c1.close()  # the cursor left open
        async with await pool.connect() as c2:
            assert await one(c2, "SELECT count(*) FROM pg_cursors") == 0
        assert pool.stats().clients_pinned == 0


@pytest.mark.parametrize("mode", ["transaction", "statement"])
async def test_closing_a_withhold_cursor_unpins_the_client(dsn: str, app: str, mode: str) -> None:
    async with make_pool(dsn, app, {"autocommit": True}, mode=mode, max_size=1) as pool:
        c1 = await pool.connect()
        cur = c1.cursor(name="pgpk_held", withhold=True)
        await cur.execute("SELECT generate_series(1, 3)")
        assert state(c1) is ClientState.PINNED
        assert await cur.fetchall() == [(1,), (2,), (3,)]
        await cur.close()  # psycopg's CLOSE, sent outside execute()
        assert cur.closed
        assert state(c1) is ClientState.IDLE
        assert pool.stats().clients_pinned == 0
        # the only server connection is no longer c1's: another client gets it
        async with await pool.connect(timeout=2) as c2:
            assert await one(c2, "SELECT count(*) FROM pg_cursors") == 0
        assert await one(c1, "SELECT 1") == 1
        await c1.close()


@pytest.mark.parametrize("autocommit", [True, False])
async def test_copy_keeps_the_connection_for_its_block(
    dsn: str, admin: Admin, table: str, app: str, autocommit: bool
) -> None:
    async with make_pool(
        dsn, app, {"autocommit": autocommit}, mode="transaction", max_size=1
    ) as pool:
        c = await pool.connect()
        async with c.cursor() as cur:
            async with cur.copy(f"COPY {table} (id) FROM STDIN") as copy:
                assert state(c) is not ClientState.IDLE
                assert pool.stats().servers_active == 1
                for i in range(1, 6):
                    await copy.write_row((i,))
            if autocommit:
                assert state(c) is ClientState.IDLE
                assert rows(admin, table) == [1, 2, 3, 4, 5]
            else:
                assert state(c) is ClientState.IN_TRANSACTION
                assert rows(admin, table) == []
                await c.commit()
                assert rows(admin, table) == [1, 2, 3, 4, 5]
            query = f"COPY (SELECT id * 10 FROM {table} ORDER BY id) TO STDOUT"
            async with cur.copy(query) as copy:
                assert pool.stats().servers_active == 1
                got = [int(r[0]) async for r in copy.rows()]
            assert got == [10, 20, 30, 40, 50]
            if not autocommit:
                await c.commit()
            assert state(c) is ClientState.IDLE
        await c.close()
        assert pool.stats().servers_active == 0


async def test_pipeline_keeps_the_connection_for_its_block(
    dsn: str, admin: Admin, table: str, app: str
) -> None:
    async with make_pool(dsn, app, {"autocommit": True}, mode="transaction", max_size=1) as pool:
        c1, c2 = await pool.connect(), await pool.connect()
        async with c1.pipeline():
            await c1.execute(f"INSERT INTO {table} VALUES (1)")
            await c1.execute(f"INSERT INTO {table} VALUES (2)")
            cur = await c1.execute(f"SELECT count(*) FROM {table}")
            assert state(c1) is not ClientState.IDLE
            waiter = asyncio.create_task(one(c2, f"SELECT count(*) FROM {table}"))
            await wait_for(lambda: pool.stats().clients_waiting == 1, what="c2 to queue")
        assert state(c1) is ClientState.IDLE
        assert await cur.fetchone() == (2,)
        assert await outcome(waiter) == 2
        assert rows(admin, table) == [1, 2]
        await c1.close()
        await c2.close()


# -- idle_in_transaction_timeout -----------------------------------------------------------------


@pytest.mark.parametrize("how", ["implicit", "block", "nested"])
async def test_idle_in_transaction_timeout(
    dsn: str, admin: Admin, table: str, app: str, how: str
) -> None:
    async with make_pool(
        dsn, app, mode="transaction", max_size=1, idle_in_transaction_timeout=0.2
    ) as pool:
        c1, c2 = await pool.connect(), await pool.connect()
        await c2.set_autocommit(True)

        async def insert_then_idle() -> None:
            await c1.execute(f"INSERT INTO {table} VALUES (1)")
            # c2 wants the only server connection: it gets it when c1's transaction is taken
            waiter = asyncio.create_task(one(c2, f"SELECT count(*) FROM {table}"))
            assert await outcome(waiter, timeout=10) == 0  # c1's insert was rolled back
            assert state(c1) is ClientState.IDLE

        if how == "implicit":
            await insert_then_idle()
            with pytest.raises(IdleInTransactionTimeout, match="idle_in_transaction_timeout"):
                await c1.execute(f"INSERT INTO {table} VALUES (2)")
        elif how == "block":
            with pytest.raises(IdleInTransactionTimeout):
                async with c1.transaction():
                    await insert_then_idle()
        else:
            with pytest.raises(IdleInTransactionTimeout):
                async with c1.transaction():
                    await c1.execute(f"INSERT INTO {table} VALUES (0)")
                    async with c1.transaction():  # a savepoint
                        await insert_then_idle()
        assert rows(admin, table) == []
        # raised once: the client works again
        await c1.execute(f"INSERT INTO {table} VALUES (3)")
        await c1.commit()
        assert rows(admin, table) == [3]
        async with c1.transaction():
            await c1.execute(f"INSERT INTO {table} VALUES (4)")
        assert rows(admin, table) == [3, 4]
        await c1.close()
        await c2.close()
        stats = pool.stats()
        assert stats.servers_active == 0 and stats.clients_open == 0
        # the server connection was rolled back and reused, never discarded
        assert stats.connections_opened_total == 1 and stats.returns_bad_total == 0


# -- max_clients ----------------------------------------------------------------------------------


async def test_max_clients(dsn: str, admin: Admin, table: str, app: str) -> None:
    async with make_pool(dsn, app, mode="transaction", max_size=1, max_clients=3) as pool:
        clients = [await pool.connect() for _ in range(3)]
        with pytest.raises(TooManyClients, match="max_clients=3"):
            await pool.connect()
        assert pool.stats().clients_open == 3
        await clients.pop().close()
        clients.append(await pool.connect())  # a place was freed
        with pytest.raises(TooManyClients):
            await pool.connect()

        # a client dropped without close(), holding the only server connection in a
        # transaction: its place and its server connection come back
        lost = clients.pop()
        await lost.execute(f"INSERT INTO {table} VALUES (1)")
        del lost
        gc.collect()
        assert pool.stats().clients_open == 2
        c = await pool.connect()
        assert await one(c, f"SELECT count(*) FROM {table}") == 0  # rolled back
        await c.commit()
        clients.append(c)
        for c in clients:
            await c.close()
        assert pool.stats().clients_open == 0
        assert pool.stats().servers_active == 0


async def test_lost_client_wakes_a_waiting_one(dsn: str, table: str, app: str) -> None:
    async with make_pool(dsn, app, mode="transaction", max_size=1) as pool:
        c1, c2 = await pool.connect(), await pool.connect()
        await c1.execute(f"INSERT INTO {table} VALUES (1)")
        waiter = asyncio.create_task(one(c2, f"SELECT count(*) FROM {table}"))
        await wait_for(lambda: pool.stats().clients_waiting == 1, what="c2 to queue")
        del c1
        gc.collect()
        assert await outcome(waiter, timeout=8) == 0
        await c2.close()


async def test_lost_client_collected_in_another_thread(dsn: str, table: str, app: str) -> None:
    """The last reference to a client dropped in another thread: the pool's work is handed to
    its event loop, never done from that thread."""
    async with make_pool(dsn, app, mode="transaction", max_size=1) as pool:
        c1, c2 = await pool.connect(), await pool.connect()
        await c1.execute(f"INSERT INTO {table} VALUES (1)")
        holder = [c1]
        del c1
        waiter = asyncio.create_task(one(c2, f"SELECT count(*) FROM {table}"))
        await wait_for(lambda: pool.stats().clients_waiting == 1, what="c2 to queue")
        thread = threading.Thread(target=holder.clear)
        thread.start()
        thread.join(5)
        assert await outcome(waiter, timeout=8) == 0
        await c2.close()


async def test_max_clients_counts_clients_waiting_to_connect(dsn: str, app: str) -> None:
    async with make_pool(dsn, app, max_size=1, max_clients=2, timeout=5) as pool:  # session
        c1 = await pool.connect()
        waiter = asyncio.create_task(pool.connect())  # waits for c1's server connection
        await wait_for(lambda: pool.stats().clients_waiting == 1, what="the connect to queue")
        with pytest.raises(TooManyClients):
            await pool.connect(timeout=2)
        await c1.close()
        c2 = await outcome(waiter)
        assert pool.stats().clients_open == 1
        await c2.close()

        # a connect that times out gives its place back
        c3 = await pool.connect()
        with pytest.raises(PoolTimeout):
            await pool.connect(timeout=0.1)
        assert pool.stats().clients_open == 1
        await c3.close()


# -- policy objects --------------------------------------------------------------------------------


async def test_policy_instance_is_a_mode(dsn: str, table: str, app: str) -> None:
    async with make_pool(dsn, app, mode=TransactionPolicy(), max_size=1) as pool:
        assert pool.stats().mode == "transaction"
        c = await pool.connect()
        await c.execute(f"INSERT INTO {table} VALUES (1)")
        assert state(c) is ClientState.IN_TRANSACTION
        await c.commit()
        assert state(c) is ClientState.IDLE
        await c.close()


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


async def test_custom_policies(dsn: str, admin: Admin, table: str, app: str) -> None:
    policy = NoListen()
    async with make_pool(dsn, f"{app}-a", {"autocommit": True}, mode=policy, max_size=1) as pool:
        assert pool.stats().mode == "no-listen"
        c = await pool.connect()
        with pytest.raises(PolicyViolation, match=r"no-listen.*LISTEN.*dedicated psycopg"):
            await c.execute("LISTEN pgpk_nolisten")
        assert state(c) is ClientState.IDLE
        assert await one(c, "SELECT count(*) FROM pg_listening_channels()") == 0
        await c.execute("CREATE TEMP TABLE pgpk_t (x int)")  # pinned, as the base says
        assert state(c) is ClientState.PINNED
        assert (ClientState.IDLE, Event.SESSION_STATE, "LISTEN") in policy.seen
        await c.close()

    async with make_pool(dsn, f"{app}-b", mode=SessionNoTransactions(), max_size=1) as pool:
        c = await pool.connect()
        assert state(c) is ClientState.BOUND and c.autocommit is True
        pid = c.info.backend_pid
        with pytest.raises(PolicyViolation, match=r"session-autocommit.*one by one"):
            await c.transaction().__aenter__()
        with pytest.raises(PolicyViolation):
            await c.execute(f"BEGIN; INSERT INTO {table} VALUES (1)")
        await c.execute(f"INSERT INTO {table} VALUES (2)")
        await c.execute("SET work_mem = '5MB'")
        assert rows(admin, table) == [2]
        assert await one(c, "SELECT pg_backend_pid()") == pid
        await c.close()
        assert backend_query(admin, pid) == ("DISCARD ALL", "idle")


# -- connection() blocks in transaction mode ---------------------------------------------------


async def test_connection_block_in_transaction_mode(
    dsn: str, admin: Admin, table: str, app: str
) -> None:
    async with make_pool(dsn, app, mode="transaction", max_size=1) as pool:
        async with pool.connection() as c:
            await c.execute(f"INSERT INTO {table} VALUES (1)")
            assert state(c) is ClientState.IN_TRANSACTION
            assert rows(admin, table) == []
        assert rows(admin, table) == [1]
        assert c.closed

        with pytest.raises(ZeroDivisionError):
            async with pool.connection() as c:
                await c.execute(f"INSERT INTO {table} VALUES (2)")
                1 / 0  # noqa: B018
        assert rows(admin, table) == [1]

        async with pool.connection() as c:
            async with c.transaction():
                await c.execute(f"INSERT INTO {table} VALUES (3)")
            assert state(c) is ClientState.IDLE
            await c.execute(f"INSERT INTO {table} VALUES (4)")
        assert rows(admin, table) == [1, 3, 4]
        stats = pool.stats()
        assert stats.clients_open == 0 and stats.servers_active == 0
        assert stats.servers_idle == 1


async def test_cancelled_client_gives_its_server_connection_back(
    dsn: str, table: str, app: str
) -> None:
    async with make_pool(dsn, app, mode="transaction", max_size=1) as pool:
        c1, c2 = await pool.connect(), await pool.connect()
        await c1.execute(f"INSERT INTO {table} VALUES (1)")
        # c2 queues for the server connection, and is cancelled while it waits
        task = asyncio.create_task(c2.execute("SELECT 1"))
        await wait_for(lambda: pool.stats().clients_waiting == 1, what="c2 to queue")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.stats().clients_waiting == 0
        assert state(c2) is ClientState.IDLE
        await c1.commit()
        # c2 works after its cancelled statement
        assert await one(c2, f"SELECT count(*) FROM {table}") == 1
        await c2.commit()
        await c1.close()
        await c2.close()
        assert pool.stats().servers_active == 0


async def test_pin_ends_when_its_reasons_are_undone(dsn: str, app: str) -> None:
    async with make_pool(dsn, app, {"autocommit": True}, mode="transaction", max_size=2) as pool:
        c = await pool.connect()
        await c.execute("LISTEN pgpk_a")
        await c.execute("CREATE TEMP TABLE pgpk_t (x int)")
        await c.execute("UNLISTEN *")
        assert state(c) is ClientState.PINNED  # the temporary table is still there
        await c.execute("DROP TABLE pgpk_t")
        assert state(c) is ClientState.IDLE
        assert pool.stats().clients_pinned == 0 and pool.stats().servers_active == 0
        assert await one(c, "SELECT count(*) FROM pg_listening_channels()") == 0
        await c.close()


async def test_plain_settings_follow_their_client(dsn: str, app: str) -> None:
    async with make_pool(dsn, app, {"autocommit": True}, mode="transaction", max_size=2) as pool:
        await pool.wait()
        a, b = await pool.connect(), await pool.connect()
        await a.execute("SET search_path = pg_catalog, public")
        assert state(a) is ClientState.IDLE and pool.stats().clients_pinned == 0
        for _ in range(2):
            async with a.transaction(), b.transaction():
                assert await one(a, "SHOW search_path") == "pg_catalog, public"
                assert await one(b, "SHOW search_path") != "pg_catalog, public"
            async with b.transaction(), a.transaction():
                assert await one(a, "SHOW search_path") == "pg_catalog, public"
                assert await one(b, "SHOW search_path") != "pg_catalog, public"
        await a.close()
        await b.close()
        assert pool.stats().returns_bad_total == 0
