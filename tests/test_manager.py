"""PoolManager: named pools sharing one server's connection budget, against a real server."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgpoolkit import (
    AsyncPoolManager,
    Budget,
    BudgetExceeded,
    PolicyViolation,
    PoolClosed,
    PoolManager,
    PoolTimeout,
    UnknownPool,
)
from pgpoolkit._shared_budget import slot_namespace
from pgpoolkit.pool import IDLE_PROBE_INTERVAL
from pgpoolkit.testing import TemporaryPostgres

Admin = psycopg.Connection[tuple[Any, ...]]


@pytest.fixture
def databases(admin: Admin) -> Iterator[tuple[str, str]]:
    names = tuple(f"pgpk_{uuid.uuid4().hex[:8]}" for _ in range(2))
    for name in names:
        admin.execute(f"CREATE DATABASE {name}")
    yield names  # type: ignore[misc]
    for name in names:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def backends(admin: Admin, database: str) -> int:
    row = admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [database]
    ).fetchone()
    assert row is not None
    return int(row[0])


def under_load(
    admin: Admin, pools: list[Any], databases: tuple[str, str], threads: int
) -> tuple[int, list[int]]:
    """Clients of the pools (alternately) running short statements until both pools served
    20 of them: the most backends the two databases had together, and what each pool served."""
    stop = threading.Event()
    errors: list[BaseException] = []
    served = [0, 0]

    def work(k: int) -> None:
        try:
            conn = pools[k % 2].connect()
            conn.autocommit = True
            while not stop.is_set():
                conn.execute("SELECT pg_sleep(0.004)")
                served[k % 2] += 1
            conn.close()
        except BaseException as ex:
            errors.append(ex)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    peak = 0
    deadline = time.monotonic() + 15
    while min(served) < 20 and time.monotonic() < deadline:  # both pools at work
        peak = max(peak, sum(backends(admin, database) for database in databases))
    stop.set()
    for t in workers:
        t.join(30)
    assert not errors, errors[:2]
    return peak, served


def test_the_seeds_workflow(dsn: str, admin: Admin, databases: tuple[str, str]) -> None:
    db_a, db_b = databases
    with PoolManager(dsn, budget=20, timeout=5.0) as manager:
        a = manager.create_pool("app", database=db_a, size=12)
        b = manager.create_pool("reports", database=db_b, mode="session", size=6, min_size=1)
        assert manager.budget() == Budget(total=20, allocated=18, available=2)
        infos = {info.name: info for info in manager.list_pools()}
        assert (infos["app"].database, infos["app"].mode, infos["app"].size) == (
            db_a,
            "transaction",
            12,
        )
        assert (infos["reports"].mode, infos["reports"].min_size) == ("session", 1)
        assert manager.get_pool("app") is a
        with a.connection() as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (db_a,)
        with b.connection() as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (db_b,)

        # live changes: a size within the budget, a mode for the connections opened next
        held = a.connect()
        held.execute("SELECT 1")  # inside a transaction (autocommit off): holds its server
        manager.update_pool("app", size=14, mode="session")
        assert a.max_size == 14 and a.policy.name == "session"
        held.execute("SELECT 2")
        held.commit()  # the transaction begun before the change finished
        newer = a.connect()
        assert newer.state.value == "bound"  # session mode: bound from connect
        newer.close()
        held.close()
        with pytest.raises(BudgetExceeded, match=r"'app' asks for 15.*14 of the budget of 20"):
            manager.update_pool("app", size=15)

        # delete drains: a transaction in flight finishes, new requests are refused
        inflight = b.connect()
        inflight.execute("SELECT 1")
        done = threading.Event()

        def finish() -> None:
            inflight.execute("SELECT pg_sleep(0.3)")
            inflight.commit()
            inflight.close()
            done.set()

        worker = threading.Thread(target=finish)
        worker.start()
        manager.delete_pool("reports", timeout=10.0)
        worker.join(10)
        assert done.is_set()
        with pytest.raises(PoolClosed):
            b.connect()
        with pytest.raises(UnknownPool, match=r"no pool named 'reports'.*'app'"):
            manager.get_pool("reports")
        assert manager.budget().allocated == 14
    assert backends(admin, db_a) == 0 and backends(admin, db_b) == 0


def test_names_and_budget_errors(dsn: str) -> None:
    with PoolManager(dsn, budget=10) as manager:
        manager.create_pool("one", size=6)
        with pytest.raises(ValueError, match="'one' exists already"):
            manager.create_pool("one", size=1)
        with pytest.raises(BudgetExceeded, match=r"'two' asks for 5.*4 of the budget of 10.*'one'"):
            manager.create_pool("two", size=5)
        with pytest.raises(UnknownPool) as info:
            manager.update_pool("three", size=1)
        assert isinstance(info.value, KeyError) and "'one'" in str(info.value)
        with pytest.raises(ValueError, match="size"):
            manager.create_pool("zero", size=0)
        assert [p.name for p in manager.list_pools()] == ["one"]
    with pytest.raises(ValueError, match="budget"):
        PoolManager(dsn, budget=0)
    with pytest.raises(TypeError, match="'max_size' is set per pool"):
        PoolManager(dsn, max_size=3)


def test_budget_from_the_server() -> None:
    settings = {"max_connections": 30, "superuser_reserved_connections": 2}
    with TemporaryPostgres(settings=settings) as pg, PoolManager(pg.dsn, reserve=3) as manager:
        assert manager.budget().total == 30 - 2 - 3  # (and reserved_connections on 16+)


def test_pools_never_exceed_the_budget_under_load(
    dsn: str, admin: Admin, databases: tuple[str, str]
) -> None:
    db_a, db_b = databases
    with PoolManager(dsn, budget=6, timeout=20.0) as manager:
        pools = [
            manager.create_pool("a", database=db_a, size=4),
            manager.create_pool("b", database=db_b, size=2),
        ]
        peak, served = under_load(admin, pools, (db_a, db_b), threads=12)
        assert 0 < peak <= 6
        assert served[0] and served[1]  # every pool was served


async def test_async_manager(dsn: str) -> None:
    async with AsyncPoolManager(dsn, budget=5) as manager:
        pool = await manager.create_pool("x", size=3, mode="statement")
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT 1")
            assert await cur.fetchone() == (1,)
            with pytest.raises(PolicyViolation):
                async with conn.transaction():
                    pass
        with pytest.raises(BudgetExceeded):
            await manager.create_pool("y", size=3)
        await manager.update_pool("x", size=2)
        await manager.create_pool("y", size=3)
        assert manager.budget().available == 0
        await manager.delete_pool("x")
        assert [p.name for p in manager.list_pools()] == ["y"]


GOOD_TOML = """
conninfo = "{dsn}"
budget = 10
timeout = 5.0

[pools.web]
size = 4
mode = "transaction"
max_lifetime = 1800.0

[pools.jobs]
mode = "session"
size = 2
min_size = 1
"""


def test_pools_from_toml(dsn: str, tmp_path: Any) -> None:
    path = tmp_path / "pools.toml"
    path.write_text(GOOD_TOML.format(dsn=dsn))
    with PoolManager.from_file(path) as manager:
        infos = {info.name: info for info in manager.list_pools()}
        assert (infos["web"].mode, infos["web"].size) == ("transaction", 4)
        assert (infos["jobs"].mode, infos["jobs"].min_size) == ("session", 1)
        assert manager.get_pool("web").max_lifetime == 1800.0
        assert manager.get_pool("web").timeout == 5.0  # the top level's default
        assert manager.budget() == Budget(10, 6, 4)
        with manager.get_pool("web").connection() as conn:
            conn.execute("SELECT 1")
        stats = manager.stats()
        assert set(stats.pools) == {"web", "jobs"}
        assert stats.totals["total_query_count"] >= 1
        rows = {row["pool"]: row for row in stats.show_pools()}
        assert rows["jobs"]["pool_mode"] == "session" and "sv_idle" in rows["web"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[pools.web]\nsize = 4\nsizes = 3\n", r"pool 'web': unknown key 'sizes'; allowed: .*size"),
        ("colour = 1\n", r"unknown key 'colour' at the top.*conninfo"),
        ("[pools.web]\nsize = 'big'\n", r"pool 'web': size must be an integer"),
        ("[pools.web]\nmode = 'sometimes'\n", r"pool 'web': mode must be one of"),
        ("[pools.web]\nconfigure = 'x'\n", r"pool 'web': unknown key 'configure'"),
        ("[pools\n", r"not valid TOML"),
    ],
)
def test_bad_toml_says_where(dsn: str, tmp_path: Any, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f'conninfo = "{dsn}"\nbudget = 10\n' + text)
    with pytest.raises((ValueError, TypeError), match=message), PoolManager.from_file(path):
        pass


# -- overcommit: sizes are caps, the connections held together stay within the budget ------------


def test_overcommit_never_exceeds_the_budget(
    dsn: str, admin: Admin, databases: tuple[str, str]
) -> None:
    db_a, db_b = databases
    with PoolManager(dsn, budget=4, overcommit=True, timeout=20.0) as manager:
        pools = [
            manager.create_pool("a", database=db_a, size=4),
            manager.create_pool("b", database=db_b, size=4),
        ]
        assert manager.budget().allocated == 8  # caps: their sum may exceed the budget
        peak, served = under_load(admin, pools, (db_a, db_b), threads=10)
        assert 0 < peak <= 4
        assert served[0] > 0 and served[1] > 0


def test_overcommit_a_pool_under_its_share_is_not_starved(
    dsn: str, admin: Admin, databases: tuple[str, str]
) -> None:
    db_a, db_b = databases
    with PoolManager(dsn, budget=4, overcommit=True, timeout=10.0) as manager:
        busy = manager.create_pool("busy", database=db_a, size=4)
        quiet = manager.create_pool("quiet", database=db_b, size=4)
        # the busy pool takes the whole budget with long transactions, one after another
        stop = threading.Event()

        def hog() -> None:
            while not stop.is_set():
                with busy.connection() as conn:
                    conn.execute("SELECT pg_sleep(0.05)")

        hogs = [threading.Thread(target=hog) for _ in range(6)]
        for t in hogs:
            t.start()
        deadline = 200
        while backends(admin, db_a) < 4 and deadline:
            stop.wait(0.01)
            deadline -= 1
        # the quiet pool, under its fair share (2 of 4), gets a connection all the same
        with quiet.connection(timeout=5.0) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert backends(admin, db_a) + backends(admin, db_b) <= 4
        stop.set()
        for t in hogs:
            t.join(10)


def test_overcommit_evicts_an_idle_sibling(
    dsn: str, admin: Admin, databases: tuple[str, str]
) -> None:
    db_a, db_b = databases
    with PoolManager(dsn, budget=3, overcommit=True, timeout=5.0) as manager:
        a = manager.create_pool("a", database=db_a, size=3)
        b = manager.create_pool("b", database=db_b, size=3)
        held = [a.getconn() for _ in range(3)]
        for conn in held:
            a.putconn(conn)  # three idle connections in a: the whole budget
        assert a.stats().servers_idle == 3
        with b.connection(timeout=3.0) as conn:  # one of a's idle ones makes room
            assert conn.execute("SELECT current_database()").fetchone() == (db_b,)
        assert a.stats().servers_idle == 2
        assert backends(admin, db_a) + backends(admin, db_b) <= 3


def test_overcommit_takes_a_parked_connection_back_for_a_sibling(
    dsn: str, admin: Admin, databases: tuple[str, str]
) -> None:
    """Transaction-mode clients keep their server connections between transactions while
    nobody in their pool waits: a sibling pool that needs the room gets one all the same."""
    db_a, db_b = databases
    with PoolManager(dsn, budget=2, overcommit=True, timeout=5.0) as manager:
        a = manager.create_pool("a", database=db_a, size=2)
        b = manager.create_pool("b", database=db_b, size=2)
        clients = [a.connect() for _ in range(2)]
        for conn in clients:
            conn.execute("SELECT 1")  # a transaction each, open at once: a's two connections
        for conn in clients:
            conn.commit()  # parked: the whole budget
        assert all(conn._parked for conn in clients)  # type: ignore[attr-defined]
        assert a.stats().servers_idle == 2
        # a parked one of a's makes room, at once (not after a's maintenance round took it
        # back: IDLE_PROBE_INTERVAL)
        with b.connection(timeout=IDLE_PROBE_INTERVAL * 0.8) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (db_b,)
        assert backends(admin, db_a) + backends(admin, db_b) <= 2
        for conn in clients:
            assert conn.execute("SELECT current_database()").fetchone() == (db_a,)
            conn.close()


async def test_async_overcommit(dsn: str) -> None:
    async with AsyncPoolManager(dsn, budget=2, overcommit=True, timeout=5.0) as manager:
        a = await manager.create_pool("a", size=2)
        b = await manager.create_pool("b", size=2)
        with pytest.raises(BudgetExceeded, match="keep 3 connections open"):
            await manager.create_pool("c", size=3, min_size=3)
        raw = [await a.getconn(), await a.getconn()]
        for conn in raw:
            await a.putconn(conn)
        async with b.connection(timeout=3.0) as conn:  # an idle one of a's makes room
            cur = await conn.execute("SELECT 1")
            assert await cur.fetchone() == (1,)
        assert a.stats().servers_idle + b.stats().servers_idle + b.stats().servers_active <= 2


# -- a budget PostgreSQL enforces across processes --------------------------------------------

WORKER = str(Path(__file__).with_name("across_processes_worker.py"))


def by_app(admin: Admin, app: str) -> int:
    row = admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [app]
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_budget_across_processes(dsn: str, admin: Admin) -> None:
    app = f"pgpk-xp-{uuid.uuid4().hex[:8]}"
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, dsn, app, "8", "0"], stdout=subprocess.PIPE, text=True
        )
        for _ in range(8)
    ]
    slots_peak = 0
    while any(p.poll() is None for p in procs):
        row = admin.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2"
            " AND classid::bigint = %s",
            [slot_namespace("shared")],
        ).fetchone()
        assert row is not None
        slots_peak = max(slots_peak, int(row[0]))
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert all("served 24" in out for out in outputs), outputs  # no process starved
    # the most statements the server ran at once, by its own clock, across the processes (a
    # connection is opened before it looks for a free slot, and one that finds none closes
    # at once having run nothing else: pg_stat_activity would count it for a moment)
    events = sorted(
        (float(t), delta)
        for out in outputs
        for line in out.splitlines()
        if line.startswith("span ")
        for t, delta in zip(line.split()[1:], (1, -1), strict=True)
    )
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert 0 < peak <= 3  # the pool's size, across the eight processes together
    assert 0 < slots_peak <= 3


def test_slots_of_a_killed_process_are_freed(dsn: str, admin: Admin) -> None:
    app = f"pgpk-xp-{uuid.uuid4().hex[:8]}"
    holder = subprocess.Popen(
        [sys.executable, WORKER, dsn, app, "0", "60"], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().startswith("holding 3")
    with PoolManager(dsn, budget=50, across_processes=True) as manager:
        pool = manager.create_pool(
            "shared", size=3, min_size=0, timeout=1.0, kwargs={"application_name": app}
        )
        with pytest.raises(PoolTimeout, match="slots"):
            pool.getconn()  # every slot is the holder's
        assert by_app(admin, app) == 3
        holder.kill()  # its connections go, and their locks with them
        holder.wait(10)
        conn = pool.getconn(timeout=15.0)
        assert conn.execute("SELECT 1").fetchone() == (1,)
        pool.putconn(conn)


def test_a_client_unlock_does_not_lose_the_slot(dsn: str, admin: Admin) -> None:
    app = f"pgpk-xp-{uuid.uuid4().hex[:8]}"
    slot_locks = (
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2"
        " AND classid::bigint = %s"
    )
    with PoolManager(dsn, budget=50, across_processes=True) as manager:
        pool = manager.create_pool(
            "unlocker", size=1, min_size=1, kwargs={"application_name": app, "autocommit": True}
        )
        pool.wait()
        namespace = slot_namespace("unlocker")
        c = pool.connect()
        c.execute("SELECT pg_advisory_lock(77)")  # session state: pinned
        assert c.state.value == "pinned"
        c.execute("SELECT pg_advisory_unlock_all()")  # releases the slot's lock too
        assert c.state.value == "idle"  # unpinned: the pool's own lock is not the client's
        row = admin.execute(slot_locks, [namespace]).fetchone()
        assert row is not None and row[0] == 1  # the reset took the slot again
        assert c.execute("SELECT 1").fetchone() == (1,)
        c.close()
