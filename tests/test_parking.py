"""Transaction mode's parked server connections (lazy release).

A transaction-mode client whose transaction ended keeps its server connection, clean and idle,
while no request waits for one: its next transaction needs no checkout. The pool takes it back
when a request finds nothing idle, and before it pauses, drains, resizes, closes, checks its
connections or runs its maintenance round. To everyone else a parked connection is idle: the
client's state, the stats, pause(), the wait queue's order.
"""

from __future__ import annotations

import asyncio
import gc
import random
import sys
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest

from conftest import run_in_threads, start_threads
from pgpoolkit import AsyncPool, ClientState, Pool
from test_faults import await_for, wait_for

Admin = psycopg.Connection[tuple[Any, ...]]


@pytest.fixture
def app() -> str:
    return f"pgpk-{uuid.uuid4().hex[:12]}"


def make_pool(dsn: str, app: str, **kwargs: Any) -> Pool:
    kwargs.setdefault("timeout", 5.0)
    kwargs.setdefault("mode", "transaction")
    return Pool(dsn, kwargs={"application_name": app, "autocommit": True}, **kwargs)


def pid(conn: Any) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


async def apid(conn: Any) -> int:
    row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
    assert row is not None
    return int(row[0])


def test_a_client_keeps_its_server_connection_between_transactions(dsn: str, app: str) -> None:
    with make_pool(dsn, app, min_size=2, max_size=2) as pool:
        pool.wait()
        client = pool.connect()
        first = pid(client)
        requests = pool.stats().requests_total
        assert [pid(client) for _ in range(5)] == [first] * 5
        assert client._parked  # type: ignore[attr-defined]
        assert pool.stats().requests_total == requests  # no checkout per statement
        # between transactions it is idle, as if it held nothing
        assert client.state is ClientState.IDLE
        stats = pool.stats()
        assert (stats.servers_active, stats.servers_idle) == (0, 2)
        assert (stats.clients_active, stats.clients_idle) == (0, 1)
        assert stats.statements_total == 6
        with pytest.raises(Exception, match="holds no server connection between transactions"):
            client.info.backend_pid  # noqa: B018  (as before parking: the stand-in answers)
        client.close()
        assert pool.stats().servers_idle == 2


def test_a_request_takes_a_parked_connection_back(dsn: str, app: str) -> None:
    with make_pool(dsn, app, min_size=1, max_size=1) as pool:
        c1, c2 = pool.connect(), pool.connect()
        only = pid(c1)
        assert c1._parked  # type: ignore[attr-defined]
        assert pid(c2) == only  # the pool's only one: taken back from c1 at once
        assert not c1._parked and c2._parked  # type: ignore[attr-defined]
        raw = pool.getconn()
        assert pid(raw) == only and not c2._parked  # type: ignore[attr-defined]
        pool.putconn(raw)
        assert pid(c1) == only
        assert pool.stats().timeouts_total == 0
        c1.close()
        c2.close()


def test_a_transaction_ends_for_the_oldest_waiter_not_for_its_client(dsn: str, app: str) -> None:
    """With requests waiting, the end of a transaction gives the connection to the oldest of
    them: nothing is parked then (the FIFO promise)."""
    with make_pool(dsn, app, min_size=1, max_size=1) as pool:
        client = pool.connect()
        queued = pool.stats().requests_queued_total
        client.autocommit = False
        client.execute("SELECT 1")  # a transaction: the pool's only connection is held
        got: list[int] = []
        waiter = threading.Thread(target=lambda: got.append(pid(pool.connect())))
        waiter.start()
        wait_for(lambda: pool.stats().clients_waiting == 1, what="a request waiting")
        client.commit()
        waiter.join(5)
        assert got and not client._parked  # type: ignore[attr-defined]
        assert pool.stats().requests_queued_total == queued + 1
        client.close()


@pytest.mark.parametrize(
    "action",
    ["pause", "drain", "resize", "check", "close", "maintenance"],
)
def test_the_pool_takes_parked_connections_back(
    dsn: str, admin: Admin, app: str, action: str
) -> None:
    pool = make_pool(dsn, app, min_size=2, max_size=2)
    pool.open(wait=True)
    clients = [pool.connect() for _ in range(2)]
    for c in clients:
        c.autocommit = False
        c.execute("SELECT 1")  # both connections held at once, then both parked
    for c in clients:
        c.commit()
        c.autocommit = True
    before = {c._slot.conn.info.backend_pid for c in clients}  # type: ignore[attr-defined]
    assert all(c._parked for c in clients)  # type: ignore[attr-defined]

    def none_parked() -> bool:
        return not any(c._parked for c in clients)  # type: ignore[attr-defined]

    if action == "pause":
        pool.pause(timeout=1.0)  # returns at once: nothing is in use
        assert none_parked() and pool.stats().servers_active == 0
        pool.resume()
    elif action == "drain":
        pool.drain()  # parked ones close now, as idle ones do
        assert none_parked()
        wait_for(lambda: not before & server_pid_set(admin, app), what="drained backends gone")
        assert pid(clients[0]) not in before
    elif action == "resize":
        pool.resize(1, 1)
        assert none_parked()
        wait_for(lambda: len(server_pid_set(admin, app)) == 1, what="one backend left")
    elif action == "check":
        pool.check()
        assert none_parked() and pool.stats().servers_idle == 2
    elif action == "close":
        pool.close()
        assert none_parked()
        wait_for(lambda: not server_pid_set(admin, app), what="no backend left")
        return
    else:  # the maintenance round takes back what was parked since the last round
        wait_for(none_parked, what="the maintenance round")
    assert [c.state for c in clients] == [ClientState.IDLE] * 2
    for c in clients:
        c.close()
    pool.close()


def server_pid_set(admin: Admin, app: str) -> set[int]:
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,)
    ).fetchall()
    return {int(row[0]) for row in rows}


def test_a_parked_backend_terminated_is_replaced_unseen(dsn: str, admin: Admin, app: str) -> None:
    with make_pool(dsn, app, min_size=1, max_size=2) as pool:
        client = pool.connect()
        old = pid(client)
        assert client._parked  # type: ignore[attr-defined]
        admin.execute("SELECT pg_terminate_backend(%s, 5000)", (old,))
        assert pid(client) != old  # no error: the client binds another one
        assert pool.stats().connections_lost_total == 1
        client.close()


def test_a_dropped_client_parked_connection_is_reused(dsn: str, app: str) -> None:
    with make_pool(dsn, app, min_size=1, max_size=1) as pool:
        client = pool.connect()
        parked = pid(client)
        del client
        gc.collect()
        wait_for(lambda: pool.stats().servers_idle == 1, what="the connection back")
        stats = pool.stats()
        assert (stats.connections_closed_total, stats.returns_bad_total) == (0, 0)
        with pool.connection() as conn:
            assert pid(conn) == parked


def test_an_unseen_session_change_is_found_when_the_connection_leaves_its_client(
    dsn: str, admin: Admin, app: str
) -> None:
    """A function changes a reported parameter: no statement text shows it. Parked, the
    connection is its client's own; closed or dropped, the client's connection is reset or
    closed, never handed on changed."""
    fn = f"pgpk_rename_{uuid.uuid4().hex[:8]}"
    admin.execute(
        f"CREATE FUNCTION {fn}() RETURNS void LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM set_config('application_name', 'renamed', false); END $$"
    )
    try:
        with make_pool(dsn, app, min_size=1, max_size=1) as pool:
            for how in ("close", "drop"):
                client = pool.connect()
                client.execute(f"SELECT {fn}()")
                assert client._parked  # type: ignore[attr-defined]
                assert client.execute("SHOW application_name").fetchone() == ("renamed",)
                if how == "close":
                    client.close()
                else:
                    bad = pool.stats().returns_bad_total
                    del client
                    gc.collect()
                    wait_for(lambda b=bad: pool.stats().returns_bad_total == b + 1, what="closed")
                with pool.connection() as conn:
                    assert conn.execute("SHOW application_name").fetchone() == (app,)
    finally:
        admin.execute(f"DROP FUNCTION {fn}()")


def test_dropped_clients_leave_no_error_behind(
    dsn: str, app: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clients dropped without close(), never bound, bound, parked, in reference cycles: their
    finalizers run without an error (one that raises is only printed, as "Exception ignored
    in")."""
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with make_pool(dsn, app, min_size=1, max_size=2) as pool:
        never_bound = pool.connect()
        in_transaction = pool.connect()
        in_transaction.autocommit = False
        in_transaction.execute("SELECT 1")
        parked = pool.connect()
        pid(parked)
        assert parked._parked  # type: ignore[attr-defined]
        for client in (never_bound, in_transaction, parked):
            client.__dict__["cycle"] = client  # collected by gc: its weak reference dies first
        del never_bound, in_transaction, parked, client
        gc.collect()
        wait_for(lambda: pool.stats().servers_active == 0, what="the connections back")
    assert not unraisable, unraisable[0].exc_value


def test_the_parked_registry_keeps_no_client_it_does_not_need(dsn: str, app: str) -> None:
    """A client that takes its connection up again may stay in the registry until someone
    looks (cheaper than leaving it at every statement); closed or dropped, it goes."""
    with make_pool(dsn, app, min_size=1, max_size=2) as pool:
        for _ in range(50):
            with pool.connection() as conn:  # parks after its statement, closes
                pid(conn)
        assert not pool._parked_clients
        kept = [pool.connect() for _ in range(3)]
        for client in kept:
            pid(client)
            client.__dict__["cycle"] = client  # collected by gc, its weak reference dead first
        del kept, client
        gc.collect()
        assert not pool._parked_clients


@pytest.mark.parametrize(
    "option",
    [
        {"check": Pool.check_connection},
        {"reset": lambda conn: None},
        {"reset_always": True},
        {"leak_timeout": 60.0},
    ],
    ids=["check", "reset", "reset_always", "leak_timeout"],
)
def test_no_parking_when_every_checkout_or_return_counts(
    dsn: str, app: str, option: dict[str, Any]
) -> None:
    """check= on every checkout, reset= or reset_always on every return, leak_timeout per
    lease: each transaction checks out and gives back, as they promise."""
    with make_pool(dsn, app, min_size=1, max_size=1, **option) as pool:
        client = pool.connect()
        before = pool.stats().requests_total
        for _ in range(3):
            pid(client)
            assert not client._parked  # type: ignore[attr-defined]
        assert pool.stats().requests_total == before + 3
        client.close()


def test_threads_sharing_few_connections_never_share_one(dsn: str, app: str) -> None:
    """8 threads, a client each, over 3 server connections: autocommit statements (parked,
    taken back) and transactions; a backend is never in two transactions at once, and a
    transaction stays on its backend."""
    in_transaction: dict[int, int] = {}
    guard = threading.Lock()
    with make_pool(dsn, app, min_size=3, max_size=3, timeout=20.0) as pool:

        def work(k: int) -> None:
            client = pool.connect()
            for i in range(60):
                if i % 3:
                    pid(client)
                    continue
                with client.transaction():
                    mine = pid(client)
                    with guard:
                        assert mine not in in_transaction, "a backend in two transactions"
                        in_transaction[mine] = k
                    assert pid(client) == mine
                    with guard:
                        del in_transaction[mine]
            client.close()

        run_in_threads(work, 8)
        stats = pool.stats()
        assert stats.servers_active == 0 and stats.servers_total <= 3
        assert stats.timeouts_total == 0


def test_threads_under_pause_drain_and_resize_never_share_a_backend(dsn: str, app: str) -> None:
    """3 threads with clients (statements, transactions, clients closed and dropped: most of
    the time parked between them) and 1 with getconn() (which takes parked connections back),
    over 2-3 server connections, while the pool pauses, drains and resizes every 50 ms: a
    backend is never held by two at once, nothing fails, nothing hangs."""
    held: dict[int, object] = {}
    guard = threading.Lock()
    stop = time.monotonic() + 3.0

    def claim(backend: int, who: object) -> None:
        with guard:
            assert backend not in held, f"backend {backend} held by {held[backend]} and {who}"
            held[backend] = who

    def unclaim(backend: int) -> None:
        with guard:
            del held[backend]

    with make_pool(dsn, app, min_size=2, max_size=3, timeout=30.0) as pool:

        def work(k: int) -> None:
            rnd = random.Random(k)
            if k == 3:  # a getconn() user, now and then (the clients park meanwhile)
                while time.monotonic() < stop:
                    raw = pool.getconn()
                    backend = pid(raw)
                    claim(backend, f"getconn {k}")
                    unclaim(backend)
                    pool.putconn(raw)
                    time.sleep(0.002)
                return
            client = pool.connect()
            while time.monotonic() < stop:
                r = rnd.random()
                if r < 0.6:
                    pid(client)
                elif r < 0.9:
                    with client.transaction():
                        backend = pid(client)
                        claim(backend, k)
                        assert pid(client) == backend
                        unclaim(backend)
                elif r < 0.95:
                    client.close()
                    client = pool.connect()
                else:
                    client = pool.connect()  # the last one dropped without close()
            client.close()

        def administer(_: int) -> None:
            rnd = random.Random(99)
            while time.monotonic() < stop:
                action = rnd.choice(["pause", "drain", "resize"])
                if action == "pause":
                    pool.pause(timeout=10.0)
                    pool.resume()
                elif action == "drain":
                    pool.drain()
                else:
                    pool.resize(1, rnd.choice([2, 3]))
                assert pool.stats().servers_total <= 3
                time.sleep(0.05)

        join = start_threads(4, work)
        run_in_threads(administer, 1)
        join()
        gc.collect()
        wait_for(lambda: pool.stats().servers_active == 0, what="every connection back")


async def test_tasks_sharing_few_connections_never_share_one(dsn: str, app: str) -> None:
    in_transaction: dict[int, int] = {}

    async with AsyncPool(
        dsn,
        mode="transaction",
        min_size=3,
        max_size=3,
        timeout=20.0,
        kwargs={"application_name": app, "autocommit": True},
    ) as pool:

        async def work(k: int) -> None:
            client = await pool.connect()
            for i in range(40):
                if i % 3:
                    await apid(client)
                    continue
                async with client.transaction():
                    mine = await apid(client)
                    assert mine not in in_transaction, "a backend in two transactions"
                    in_transaction[mine] = k
                    await asyncio.sleep(0)  # let the others run meanwhile
                    assert await apid(client) == mine
                    del in_transaction[mine]
            await client.close()

        await asyncio.gather(*(work(k) for k in range(16)))
        stats = pool.stats()
        assert stats.servers_active == 0 and stats.servers_total <= 3
        assert stats.timeouts_total == 0


async def test_tasks_under_pause_drain_and_resize_never_share_a_backend(dsn: str, app: str) -> None:
    """The asynchronous twin: 3 tasks with clients and 1 with getconn() over 2-3 server
    connections, while the pool pauses, drains and resizes."""
    held: dict[int, object] = {}
    stop = time.monotonic() + 3.0

    async with AsyncPool(
        dsn,
        mode="transaction",
        min_size=2,
        max_size=3,
        timeout=30.0,
        kwargs={"application_name": app, "autocommit": True},
    ) as pool:

        async def use_getconn(k: int) -> None:
            while time.monotonic() < stop:
                raw = await pool.getconn()
                backend = await apid(raw)
                assert backend not in held, f"backend {backend} held by {held[backend]} and {k}"
                held[backend] = k
                await asyncio.sleep(0)
                del held[backend]
                await pool.putconn(raw)
                await asyncio.sleep(0.002)  # now and then: the clients park meanwhile

        async def use_client(k: int) -> None:
            rnd = random.Random(k)
            client = await pool.connect()
            while time.monotonic() < stop:
                r = rnd.random()
                if r < 0.6:
                    await apid(client)
                elif r < 0.9:
                    async with client.transaction():
                        backend = await apid(client)
                        assert backend not in held, f"{backend} held by {held[backend]} and {k}"
                        held[backend] = k
                        await asyncio.sleep(0)
                        assert await apid(client) == backend
                        del held[backend]
                elif r < 0.95:
                    await client.close()
                    client = await pool.connect()
                else:
                    client = await pool.connect()  # the last one dropped without close()
            await client.close()

        async def administer() -> None:
            rnd = random.Random(99)
            while time.monotonic() < stop:
                action = rnd.choice(["pause", "drain", "resize"])
                if action == "pause":
                    await pool.pause(timeout=10.0)
                    await pool.resume()
                elif action == "drain":
                    await pool.drain()
                else:
                    await pool.resize(1, rnd.choice([2, 3]))
                assert pool.stats().servers_total <= 3
                await asyncio.sleep(0.05)

        await asyncio.wait_for(
            asyncio.gather(
                *(use_client(k) for k in range(3)),
                use_getconn(3),
                administer(),
            ),
            60.0,
        )
        gc.collect()
        await await_for(lambda: pool.stats().servers_active == 0, what="every connection back")


async def test_async_a_parked_backend_terminated_is_replaced_unseen(
    dsn: str, admin: Admin, app: str
) -> None:
    async with AsyncPool(
        dsn, mode="transaction", min_size=1, max_size=2, kwargs={"application_name": app}
    ) as pool:
        client = await pool.connect()
        await client.set_autocommit(True)
        cur = await client.execute("SELECT pg_backend_pid()")
        row = await cur.fetchone()
        assert row is not None and client._parked  # type: ignore[attr-defined]
        admin.execute("SELECT pg_terminate_backend(%s, 5000)", (row[0],))
        cur = await client.execute("SELECT pg_backend_pid()")
        again = await cur.fetchone()
        assert again is not None and again[0] != row[0]
        await await_for(lambda: pool.stats().servers_total >= 1, what="a replacement")
        await client.close()
