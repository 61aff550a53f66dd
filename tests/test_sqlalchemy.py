"""SQLAlchemy 2 on pgpoolkit: the ``postgresql+pgpoolkit://`` dialect and its helpers
(``pgpoolkit.sqlalchemy.create_engine`` / ``create_async_engine``), sync and asyncio, in session,
transaction and statement modes; and SQLAlchemy's own ``creator=`` recipes, as its documentation
and psycopg_pool's give them."""

from __future__ import annotations

import asyncio
import json
import logging
import os
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

sqlalchemy = pytest.importorskip("sqlalchemy")

import sqlalchemy as sa  # noqa: E402
from sqlalchemy import JSON, String, bindparam, select, text  # noqa: E402
from sqlalchemy.dialects.postgresql import HSTORE  # noqa: E402
from sqlalchemy.exc import ArgumentError, OperationalError  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncSession  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column  # noqa: E402
from sqlalchemy.pool import NullPool, QueuePool  # noqa: E402

import pgpoolkit  # noqa: E402
from conftest import server_connections  # noqa: E402
from pgpoolkit import AsyncPool, Pool, PoolManager, PoolTimeout  # noqa: E402
from pgpoolkit.sqlalchemy import (  # noqa: E402
    create_async_engine,
    create_engine,
    register_pool,
    unregister_pool,
)

Admin = psycopg.Connection[tuple[Any, ...]]


def make_model(table: str) -> Any:
    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = table
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(50))

    return Base, Item


def app_name() -> str:
    return f"sa-{uuid.uuid4().hex[:8]}"


def assert_no_leak(pool: Pool | AsyncPool, admin: Admin, app: str) -> None:
    """Nothing held: no client open, no server connection lent, and the server has no more
    backends for this pool than the pool keeps idle."""
    stats = pool.stats()
    assert stats.clients_open == 0, stats
    assert stats.servers_active == 0, stats
    assert server_connections(admin, app) == stats.servers_idle


def backend_pid(conn: Any) -> int:
    return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


# -- the ORM under load -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_orm_unit_of_work_threads(dsn: str, admin: Admin, mode: str) -> None:
    """20 threads over a pool of 5, each running ORM units of work (Session.begin())."""
    app = app_name()
    Base, Item = make_model(f"sa_{uuid.uuid4().hex[:8]}")
    with Pool(
        dsn, mode=mode, min_size=1, max_size=5, timeout=30.0, kwargs={"application_name": app}
    ) as pool:
        engine = create_engine(pool)
        assert isinstance(engine.pool, NullPool)
        Base.metadata.create_all(engine)
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(5):
                    with Session(engine) as session, session.begin():
                        session.add(Item(name=f"t{n}-{i}"))
                        session.flush()
                        session.add(Item(name=f"t{n}-{i}b"))
            except BaseException as ex:
                errors.append(ex)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors[:2]
        with Session(engine) as session:
            assert len(session.scalars(select(Item)).all()) == 200
        assert pool.stats().servers_active == 0
        Base.metadata.drop_all(engine)
        engine.dispose()
        assert pool.stats().max_size == 5
        assert_no_leak(pool, admin, app)


@pytest.mark.parametrize("mode", ["session", "transaction"])
async def test_orm_unit_of_work_asyncio(dsn: str, admin: Admin, mode: str) -> None:
    """50 tasks over a pool of 5, each running ORM units of work (AsyncSession.begin())."""
    app = app_name()
    Base, Item = make_model(f"sa_{uuid.uuid4().hex[:8]}")
    async with AsyncPool(
        dsn, mode=mode, min_size=1, max_size=5, timeout=30.0, kwargs={"application_name": app}
    ) as pool:
        engine = create_async_engine(pool)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)

        async def work(n: int) -> None:
            for i in range(3):
                async with AsyncSession(engine) as session, session.begin():
                    session.add(Item(name=f"a{n}-{i}"))
                    await session.flush()
                    session.add(Item(name=f"a{n}-{i}b"))

        await asyncio.gather(*(work(n) for n in range(50)))
        async with AsyncSession(engine) as session:
            assert len((await session.scalars(select(Item))).all()) == 300
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
        await engine.dispose()
        assert_no_leak(pool, admin, app)


# -- transaction mode: a unit of work is one borrowing ----------------------------------------


def test_unit_of_work_is_one_borrowing(dsn: str) -> None:
    """In transaction mode a Session's transaction binds one server connection, from its first
    statement to its commit, and holds none between units of work."""
    Base, Item = make_model(f"sa_{uuid.uuid4().hex[:8]}")
    with Pool(dsn, mode="transaction", min_size=2, max_size=2) as pool:
        engine = create_engine(pool)
        Base.metadata.create_all(engine)
        with Session(engine) as session:
            for unit in range(3):
                before = pool.stats().requests_total
                with session.begin():
                    pid = backend_pid(session)
                    session.add(Item(name=f"u{unit}"))
                    session.flush()
                    assert pool.stats().servers_active == 1
                    session.execute(text("SELECT pg_sleep(0)"))
                    assert backend_pid(session) == pid
                    assert len(session.scalars(select(Item)).all()) == unit + 1
                # one bind for the whole unit of work, and nothing held after it
                assert pool.stats().requests_total == before + 1
                assert pool.stats().servers_active == 0
        Base.metadata.drop_all(engine)
        engine.dispose()
        assert pool.stats().clients_open == 0


async def test_unit_of_work_is_one_borrowing_asyncio(dsn: str) -> None:
    Base, Item = make_model(f"sa_{uuid.uuid4().hex[:8]}")
    async with AsyncPool(dsn, mode="transaction", min_size=2, max_size=2) as pool:
        engine = create_async_engine(pool)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        async with AsyncSession(engine) as session:
            for unit in range(3):
                before = pool.stats().requests_total
                async with session.begin():
                    pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
                    session.add(Item(name=f"u{unit}"))
                    await session.flush()
                    assert pool.stats().servers_active == 1
                    again = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
                    assert again == pid
                assert pool.stats().requests_total == before + 1
                assert pool.stats().servers_active == 0
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
        await engine.dispose()
        assert pool.stats().clients_open == 0


# -- engine options reach the connections -------------------------------------------------------


def wrap_dumps(obj: Any) -> str:
    return json.dumps({"dumped": obj})


def wrap_loads(data: str | bytes) -> Any:
    return {"loaded": json.loads(data)}


@pytest.mark.parametrize("mode", ["session", "transaction", "statement"])
def test_json_serializer(dsn: str, mode: str) -> None:
    """json_serializer / json_deserializer reach every connection the engine gets, not only
    the first one (the psycopg dialect gives them to psycopg.connect() as context=)."""
    with Pool(dsn, mode=mode, min_size=1, max_size=2) as pool:
        engine = create_engine(pool, json_serializer=wrap_dumps, json_deserializer=wrap_loads)
        for _ in range(3):  # the first connection, and the ones after it
            with engine.connect() as conn:
                value = conn.execute(select(bindparam("j", {"a": 1}, type_=JSON))).scalar_one()
                assert value == {"loaded": {"dumped": {"a": 1}}}
                # read only: what the server sends back goes through the deserializer
                raw = conn.execute(text("SELECT '[1]'::json")).scalar_one()
                assert raw == {"loaded": [1]}
        engine.dispose()
        # the functions went on the clients: the pool's server connections still use json's
        with pool.connection() as conn:
            row = conn.execute("SELECT '{\"b\": 2}'::json").fetchone()
            assert row == ({"b": 2},)


def test_native_inet_types_off(dsn: str) -> None:
    """native_inet_types=False (inet read as str) reaches the pooled connections too."""
    with Pool(dsn, mode="transaction", min_size=1, max_size=1) as pool:
        engine = create_engine(pool, native_inet_types=False)
        for _ in range(2):
            with engine.connect() as conn:
                value = conn.execute(text("SELECT '10.0.0.1'::inet")).scalar_one()
                assert value == "10.0.0.1"
        engine.dispose()


async def test_json_serializer_asyncio(dsn: str) -> None:
    async with AsyncPool(dsn, mode="transaction", min_size=1, max_size=2) as pool:
        engine = create_async_engine(pool, json_serializer=wrap_dumps, json_deserializer=wrap_loads)
        for _ in range(2):
            async with engine.connect() as conn:
                result = await conn.execute(select(bindparam("j", [1, 2], type_=JSON)))
                assert result.scalar_one() == {"loaded": {"dumped": [1, 2]}}
        await engine.dispose()


@pytest.fixture(scope="module")
def hstore_dsn(dsn: str) -> Iterator[str]:
    """A database of its own with the hstore extension (skipped if contrib is missing)."""
    name = f"sa_hstore_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params["dbname"] = name
    db_dsn = psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]
    try:
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            try:
                conn.execute("CREATE EXTENSION hstore")
            except psycopg.Error as ex:
                pytest.skip(f"no hstore extension on this server: {ex}")
        yield db_dsn
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_native_hstore(hstore_dsn: str, mode: str) -> None:
    """hstore works on every connection with no use_native_hstore=False: the dialect looks
    the type up once, and each new connection gets its adapters."""
    with Pool(hstore_dsn, mode=mode, min_size=1, max_size=2) as pool:
        engine = create_engine(pool)
        for _ in range(3):
            with engine.connect() as conn:
                value = conn.execute(select(bindparam("h", {"k": "v"}, type_=HSTORE)))
                assert value.scalar_one() == {"k": "v"}
        assert engine.dialect._has_native_hstore
        engine.dispose()
        assert pool.stats().servers_active == 0


def test_statement_mode_hstore_lookup(hstore_dsn: str) -> None:
    """Statement mode refuses the transaction TypeInfo.fetch() opens: the dialect looks the
    type up on a server connection of its own; and hstore values dump."""
    with Pool(hstore_dsn, mode="statement", min_size=1, max_size=2) as pool:
        engine = create_engine(pool)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
            row = conn.execute(
                select(sa.cast(bindparam("h", {"k": "v"}, type_=HSTORE), String))
            ).scalar_one()
            assert row == '"k"=>"v"'
        assert engine.dialect._has_native_hstore
        engine.dispose()
        assert pool.stats().servers_active == 0


@pytest.mark.xfail(
    psycopg.pq.__impl__ != "python" and psycopg.__version__.startswith("3.2."),
    strict=True,
    raises=TypeError,
    reason="psycopg 3.2's C implementation: a loader made while reading rows after the client "
    "gave its server connection back (records, hstore) takes only a live PGconn",
)
@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_record_read_in_autocommit(dsn: str, mode: str) -> None:
    """Reading a record in autocommit in transaction or statement mode: the rows are loaded
    after the client released its server connection."""
    with Pool(dsn, mode=mode, min_size=1, max_size=2) as pool:
        engine = create_engine(pool, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                value = conn.execute(text("SELECT row(1, 'a')")).scalar_one()
                assert value == ("1", "a")
        finally:
            engine.dispose()


@pytest.mark.parametrize("mode", ["session", "transaction"])
@pytest.mark.parametrize("level", ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"])
def test_isolation_level(dsn: str, mode: str, level: str) -> None:
    with Pool(dsn, mode=mode, min_size=1, max_size=2) as pool:
        engine = create_engine(pool, isolation_level=level)
        with Session(engine) as session, session.begin():
            shown = session.execute(text("SHOW transaction_isolation")).scalar_one()
            assert shown == level.lower()
        with engine.connect() as conn:
            assert conn.get_isolation_level() == level
            assert conn.default_isolation_level == level
        engine.dispose()
        # the client's setting stayed on the client: a plain pooled connection has the default
        with pool.connection() as conn:
            row = conn.execute("SHOW transaction_isolation").fetchone()
            assert row == ("read committed",)


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_isolation_level_per_connection(dsn: str, mode: str) -> None:
    """execution_options(isolation_level=...) on one connection, back to the engine's default
    on the next."""
    with Pool(dsn, mode=mode, min_size=1, max_size=1) as pool:
        engine = create_engine(pool, poolclass=QueuePool, pool_size=1, max_overflow=0)
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="SERIALIZABLE")
            assert conn.execute(text("SHOW transaction_isolation")).scalar_one() == "serializable"
            conn.commit()
        with engine.connect() as conn:  # the same client again (QueuePool), reset by SQLAlchemy
            assert conn.execute(text("SHOW transaction_isolation")).scalar_one() == "read committed"
        engine.dispose()
        assert pool.stats().clients_open == 0


@pytest.mark.parametrize("mode", ["session", "transaction", "statement"])
def test_autocommit_engine(dsn: str, admin: Admin, mode: str) -> None:
    """isolation_level="AUTOCOMMIT": each statement commits as it runs; in transaction and
    statement modes the connection holds no server connection between statements."""
    table = f"sa_{uuid.uuid4().hex[:8]}"
    admin.execute(f"CREATE TABLE {table} (n int)")
    try:
        with Pool(dsn, mode=mode, min_size=1, max_size=2) as pool:
            engine = create_engine(pool, isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                assert conn.connection.driver_connection.autocommit
                conn.execute(text(f"INSERT INTO {table} VALUES (1)"))
                # committed already, seen from outside while the connection is open
                assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)
                held = 1 if mode == "session" else 0
                assert pool.stats().servers_active == held
                conn.execute(text(f"INSERT INTO {table} VALUES (2)"))
                conn.rollback()  # nothing to roll back: both rows stay
            assert admin.execute(f"SELECT count(*) FROM {table}").fetchone() == (2,)
            engine.dispose()
            assert pool.stats().clients_open == 0
    finally:
        admin.execute(f"DROP TABLE {table}")


async def test_autocommit_engine_asyncio(dsn: str) -> None:
    async with AsyncPool(dsn, mode="transaction", min_size=1, max_size=2) as pool:
        engine = create_async_engine(pool, isolation_level="AUTOCOMMIT")
        async with engine.connect() as conn:
            assert conn.sync_connection is not None
            assert conn.sync_connection.connection.driver_connection.autocommit
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
            assert pool.stats().servers_active == 0
        await engine.dispose()
        assert pool.stats().clients_open == 0


def test_statement_mode_orm_in_autocommit(dsn: str) -> None:
    """Statement mode with the AUTOCOMMIT engine it needs: ORM inserts and reads work, each
    statement on its own; asking for a transaction is refused with the way out."""
    Base, Item = make_model(f"sa_{uuid.uuid4().hex[:8]}")
    with Pool(dsn, mode="statement", min_size=1, max_size=2) as pool:
        engine = create_engine(pool, isolation_level="AUTOCOMMIT")
        Base.metadata.create_all(engine)
        with Session(engine) as session:
            session.add_all([Item(name="a"), Item(name="b")])
            session.commit()
            assert sorted(session.scalars(select(Item.name)).all()) == ["a", "b"]
        refusing = create_engine(pool, isolation_level="SERIALIZABLE")
        with pytest.raises(OperationalError, match="statement pooling mode does not allow"):
            refusing.connect()
        Base.metadata.drop_all(engine)
        engine.dispose()
        refusing.dispose()
        assert pool.stats().clients_open == 0


def test_connect_args(dsn: str) -> None:
    """connect_args: the settings of a client go on each pooled connection; timeout is the
    wait for the pool; a server's parameters are refused, naming them."""
    with Pool(dsn, mode="transaction", min_size=1, max_size=1) as pool:
        engine = create_engine(
            pool, connect_args={"prepare_threshold": None, "autocommit": True, "timeout": 0.2}
        )
        with engine.connect() as conn:
            driver = conn.connection.driver_connection
            assert driver.prepare_threshold is None
            assert driver.autocommit
            raw = pool.getconn()  # the pool's only server connection, held elsewhere
            try:
                with pytest.raises(OperationalError) as info:
                    conn.execute(text("SELECT 1"))
                assert isinstance(info.value.orig, PoolTimeout)
            finally:
                pool.putconn(raw)
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
        engine.dispose()
        bad = create_engine(pool, connect_args={"application_name": "x", "options": "-c a=b"})
        with pytest.raises(ArgumentError, match="'application_name', 'options'"):
            bad.connect()
        bad.dispose()
        assert pool.stats().clients_open == 0


async def test_connect_args_asyncio(dsn: str) -> None:
    async with AsyncPool(dsn, mode="transaction", min_size=1, max_size=1) as pool:
        engine = create_async_engine(
            pool, connect_args={"prepare_threshold": 0, "autocommit": True}
        )
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            assert raw.driver_connection.prepare_threshold == 0
            assert raw.driver_connection.autocommit
        await engine.dispose()
        assert pool.stats().clients_open == 0


def test_notices_logged_in_transaction_mode(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    """The psycopg dialect's notice handler goes on the client, in transaction mode too."""
    with Pool(dsn, mode="transaction", min_size=1, max_size=1) as pool:
        engine = create_engine(pool)
        with caplog.at_level(logging.INFO, "sqlalchemy.dialects"), engine.connect() as conn:
            conn.execute(text("DO $$ BEGIN RAISE NOTICE 'hello from the server'; END $$"))
        assert "hello from the server" in caplog.text
        engine.dispose()


# -- how the engine meets the pool ---------------------------------------------------------------


def test_url_names_a_registered_pool(dsn: str) -> None:
    name = f"sa-{uuid.uuid4().hex[:8]}"
    with Pool(dsn, name=name, min_size=1, max_size=2) as pool:
        engine = sa.create_engine(f"postgresql+pgpoolkit:///?pool={name}")
        with pytest.raises(ArgumentError, match=f"no pgpoolkit pool is registered as '{name}'"):
            engine.connect()
        assert register_pool(pool) == name
        try:
            with engine.connect() as conn:
                assert conn.execute(text("SELECT 1")).scalar_one() == 1
                assert conn.connection.driver_connection.pool is pool
            with pytest.raises(ValueError, match="registered already"):
                register_pool(Pool(dsn, name=name, open=False))
        finally:
            unregister_pool(name)
        engine.dispose()
        assert pool.stats().clients_open == 0


def test_pool_manager_pool(dsn: str) -> None:
    """A PoolManager's pool, by object and by registered name."""
    with PoolManager(dsn, budget=4) as manager:
        pool = manager.create_pool(f"sa-{uuid.uuid4().hex[:8]}", size=2)
        engine = create_engine(pool)
        register_pool(pool)
        by_name = sa.create_engine(f"postgresql+pgpoolkit:///?pool={pool.name}")
        try:
            for each in (engine, by_name):
                with Session(each) as session, session.begin():
                    assert session.execute(text("SELECT 1")).scalar_one() == 1
        finally:
            unregister_pool(pool.name)
        engine.dispose()
        by_name.dispose()
        assert pool.stats().clients_open == 0 and pool.stats().servers_active == 0


def test_url_takes_no_server() -> None:
    with pytest.raises(ArgumentError, match="takes its server from the pool"):
        sa.create_engine("postgresql+pgpoolkit://user@db.example.com/app")
    with pytest.raises(ArgumentError, match="takes no parameter but pool"):
        sa.create_engine("postgresql+pgpoolkit:///?sslmode=require")


def test_entry_point_registers_the_dialect(tmp_path: Path) -> None:
    """pyproject's sqlalchemy.dialects entry point names the dialect: a process that never
    imports pgpoolkit.sqlalchemy gets it from a URL, sync and async."""
    tomllib = pytest.importorskip("tomllib")
    with open(Path(__file__).parents[1] / "pyproject.toml", "rb") as f:
        entry_points = tomllib.load(f)["project"]["entry-points"]["sqlalchemy.dialects"]
    dist = tmp_path / "pgpoolkit_entry_points-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: pgpoolkit-entry-points\nVersion: 0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[sqlalchemy.dialects]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    )
    code = (
        "import sys, sqlalchemy\n"
        "from sqlalchemy.ext.asyncio import create_async_engine\n"
        "assert 'pgpoolkit.integrations.sqlalchemy' not in sys.modules\n"
        "for engine in (sqlalchemy.create_engine('postgresql+pgpoolkit:///?pool=app'),\n"
        "               create_async_engine('postgresql+pgpoolkit:///?pool=app')):\n"
        "    print(type(engine.dialect).__name__, type(engine.pool).__name__)\n"
    )
    src = str(Path(pgpoolkit.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), src])}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        "PGDialect_pgpoolkit",
        "NullPool",
        "PGDialectAsync_pgpoolkit",
        "NullPool",
    ]


async def test_helpers_check_the_pool_kind(dsn: str) -> None:
    apool = AsyncPool(dsn, open=False)
    pool = Pool(dsn, open=False)
    with pytest.raises(TypeError, match="for an AsyncPool, create_async_engine"):
        create_engine(apool)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="for a Pool, create_engine"):
        create_async_engine(pool)  # type: ignore[arg-type]


# -- SQLAlchemy's pooling, pre-ping, and the creator= recipes -------------------------------------


def test_queuepool_over_transaction_mode(dsn: str, admin: Admin) -> None:
    """SQLAlchemy's QueuePool over a transaction-mode pool keeps clients, not server
    connections: 10 kept clients share 2 server connections."""
    app = app_name()
    Base, Item = make_model(f"sa_{uuid.uuid4().hex[:8]}")
    with Pool(
        dsn, mode="transaction", min_size=1, max_size=2, kwargs={"application_name": app}
    ) as pool:
        engine = create_engine(pool, poolclass=QueuePool, pool_size=10, max_overflow=0)
        Base.metadata.create_all(engine)
        held = [engine.connect() for _ in range(5)]  # 5 clients open at once
        for conn in held:
            conn.execute(text("SELECT 1"))
            conn.commit()
        assert pool.stats().clients_open == 5 and pool.stats().servers_active == 0
        for conn in held:
            conn.close()
        errors: list[BaseException] = []
        ready = threading.Barrier(10)

        def work(n: int) -> None:
            try:
                ready.wait(10)
                for i in range(5):
                    with Session(engine) as session, session.begin():
                        session.add(Item(name=f"q{n}-{i}"))
            except BaseException as ex:
                errors.append(ex)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors[:2]
        stats = pool.stats()
        assert stats.clients_open == engine.pool.checkedin() >= 5  # clients kept by SQLAlchemy
        assert stats.servers_active == 0 and stats.servers_idle <= 2
        assert server_connections(admin, app) <= 2
        Base.metadata.drop_all(engine)
        engine.dispose()
        assert_no_leak(pool, admin, app)


def test_no_pre_ping_needed(dsn: str, admin: Admin) -> None:
    """Server connections killed while idle are never handed out: no pool_pre_ping."""
    app = app_name()
    with Pool(dsn, min_size=2, max_size=2, kwargs={"application_name": app}) as pool:
        pool.wait()
        engine = create_engine(pool)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = %s",
            (app,),
        ).fetchone()
        assert killed == (2,)
        deadline = time.monotonic() + 10  # pg_terminate_backend() only signals the backends
        while server_connections(admin, app) and time.monotonic() < deadline:
            time.sleep(0.01)
        for _ in range(3):
            with engine.connect() as conn:
                assert conn.execute(text("SELECT 1")).scalar_one() == 1
        assert pool.stats().connections_lost_total >= 1
        engine.dispose()


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_creator_pool_connect(dsn: str, admin: Admin, mode: str) -> None:
    """SQLAlchemy's documented recipe, with its own psycopg dialect and no flags:
    ``creator=pool.connect`` and NullPool. (Only json_serializer and hstore need the
    pgpoolkit dialect.)"""
    app = app_name()
    Base, Item = make_model(f"sa_{uuid.uuid4().hex[:8]}")
    with Pool(dsn, mode=mode, min_size=1, max_size=3, kwargs={"application_name": app}) as pool:
        engine = sa.create_engine("postgresql+psycopg://", creator=pool.connect, poolclass=NullPool)
        Base.metadata.create_all(engine)
        for i in range(5):
            with Session(engine) as session, session.begin():
                session.add(Item(name=f"c{i}"))
        Base.metadata.drop_all(engine)
        engine.dispose()
        assert_no_leak(pool, admin, app)


def test_creator_getconn_needs_close_returns(dsn: str) -> None:
    """psycopg_pool's recipe, ``creator=pool.getconn``: SQLAlchemy closes the connection,
    which returns it to the pool only with ``close_returns=True`` (psycopg 3.3+); without it
    every connection stays counted as lent."""
    if tuple(map(int, psycopg.__version__.split(".")[:2])) < (3, 3):
        pytest.skip("close_returns needs psycopg 3.3")
    with Pool(dsn, min_size=0, max_size=2, timeout=0.5) as pool:
        engine = sa.create_engine("postgresql+psycopg://", creator=pool.getconn, poolclass=NullPool)
        for _ in range(2):
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        assert pool.stats().servers_active == 2  # lent for ever
        with pytest.raises(OperationalError):
            engine.connect()
        engine.dispose()
    with Pool(dsn, min_size=0, max_size=2, timeout=5, close_returns=True) as pool:
        engine = sa.create_engine("postgresql+psycopg://", creator=pool.getconn, poolclass=NullPool)
        for _ in range(5):
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        assert pool.stats().servers_active == 0
        engine.dispose()
