"""Configuration of Pool and AsyncPool: bad input is refused at construction, by name.

Every bad parameter raises ValueError (a wrong value) or TypeError (a wrong type) whose message
names the parameter, before anything is opened; the conninfo (which may hold a password) never
shows in a message or a repr.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import psycopg
import pytest

import pgpoolkit
from pgpoolkit import AsyncPool, Pool, PoolClosed
from pgpoolkit._config import PARAMETERS, redact

PASSWORD = "Hunter2-ultra-secret"
SECRET_DSN = f"host=127.0.0.1 port=1 user=bob password={PASSWORD} dbname=x"

# (keyword arguments, exception type, the parameter the message must name)
BAD: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"min_size": -1}, ValueError, "min_size"),
    ({"min_size": 3, "max_size": 2}, ValueError, "max_size"),
    ({"min_size": 0}, ValueError, "max_size"),
    ({"min_size": 0, "max_size": 0}, ValueError, "max_size"),
    ({"max_size": -5}, ValueError, "max_size"),
    ({"min_size": True}, TypeError, "min_size"),
    ({"min_size": 1, "max_size": True}, TypeError, "max_size"),
    ({"min_size": 2.0}, TypeError, "min_size"),
    ({"min_size": "2"}, TypeError, "min_size"),
    ({"max_size": None, "min_size": None}, TypeError, "min_size"),
    ({"timeout": 0}, ValueError, "timeout"),
    ({"timeout": -1}, ValueError, "timeout"),
    ({"timeout": math.nan}, ValueError, "timeout"),
    ({"timeout": True}, TypeError, "timeout"),
    ({"timeout": "30"}, TypeError, "timeout"),
    ({"max_waiting": -1}, ValueError, "max_waiting"),
    ({"max_waiting": False}, TypeError, "max_waiting"),
    ({"max_waiting": 1.5}, TypeError, "max_waiting"),
    ({"max_lifetime": 0}, ValueError, "max_lifetime"),
    ({"max_lifetime": -3600}, ValueError, "max_lifetime"),
    ({"max_lifetime": True}, TypeError, "max_lifetime"),
    ({"max_idle": -1}, ValueError, "max_idle"),
    ({"max_idle": 0}, ValueError, "max_idle"),
    ({"max_idle": math.nan}, ValueError, "max_idle"),
    ({"reconnect_timeout": -0.5}, ValueError, "reconnect_timeout"),
    ({"reconnect_timeout": True}, TypeError, "reconnect_timeout"),
    ({"mode": "bogus"}, ValueError, "mode"),
    ({"mode": "SESSION"}, ValueError, "mode"),
    ({"mode": None}, ValueError, "mode"),
    ({"mode": 1}, ValueError, "mode"),
    ({"name": ""}, ValueError, "name"),
    ({"name": 42}, ValueError, "name"),
    ({"configure": "SET x = 1"}, TypeError, "configure"),
    ({"check": 1}, TypeError, "check"),
    ({"reset": object()}, TypeError, "reset"),
    ({"reconnect_failed": "log"}, TypeError, "reconnect_failed"),
    ({"kwargs": ["application_name", "x"]}, TypeError, "kwargs"),
    ({"kwargs": "application_name=x"}, TypeError, "kwargs"),
    ({"connection_class": int}, TypeError, "connection_class"),
    ({"connection_class": "psycopg.Connection"}, TypeError, "connection_class"),
    ({"num_workers": 0}, ValueError, "num_workers"),
    ({"num_workers": 2.5}, TypeError, "num_workers"),
    ({"close_returns": 1}, TypeError, "close_returns"),
    ({"max_clients": -1}, ValueError, "max_clients"),
    ({"idle_in_transaction_timeout": 0}, ValueError, "idle_in_transaction_timeout"),
]


def _ids(case: tuple[dict[str, Any], type[Exception], str]) -> str:
    return ",".join(f"{k}={v!r}" for k, v in case[0].items())


@pytest.mark.parametrize("case", BAD, ids=[_ids(c) for c in BAD])
def test_bad_config_sync(case: tuple[dict[str, Any], type[Exception], str]) -> None:
    kwargs, exc, param = case
    with pytest.raises(exc, match=param) as info:
        Pool(SECRET_DSN, **kwargs)
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize("case", BAD, ids=[_ids(c) for c in BAD])
async def test_bad_config_async(case: tuple[dict[str, Any], type[Exception], str]) -> None:
    kwargs, exc, param = case
    with pytest.raises(exc, match=param) as info:
        AsyncPool(SECRET_DSN, **kwargs)
    assert PASSWORD not in str(info.value)


def test_bad_config_messages_say_what_is_accepted() -> None:
    with pytest.raises(ValueError, match=r"min_size=3, max_size=2"):
        Pool(SECRET_DSN, min_size=3, max_size=2)
    with pytest.raises(ValueError, match=r"max_waiting must be an integer >= 0, got -1"):
        Pool(SECRET_DSN, max_waiting=-1)
    with pytest.raises(TypeError, match=r"timeout must be a number of seconds, got bool True"):
        Pool(SECRET_DSN, timeout=True)
    with pytest.raises(ValueError, match=r"'session'"):
        Pool(SECRET_DSN, mode="bogus")


@pytest.mark.parametrize(
    ("mode", "policy"),
    [
        ("session", "SessionPolicy"),
        ("transaction", "TransactionPolicy"),
        ("statement", "StatementPolicy"),
    ],
)
def test_modes_by_name(mode: str, policy: str) -> None:
    pool = Pool(SECRET_DSN, mode=mode, open=False)
    assert type(pool.policy).__name__ == policy
    assert f"mode={mode}" in repr(pool)


def test_bad_policy_options() -> None:
    with pytest.raises(ValueError, match="on_session_state must be 'pin' or 'error'"):
        pgpoolkit.TransactionPolicy(on_session_state="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_clients must be an integer >= 0"):
        Pool(SECRET_DSN, max_clients=-1, open=False)


def test_conninfo_type() -> None:
    with pytest.raises(TypeError, match="conninfo"):
        Pool(b"dbname=x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="conninfo"):
        Pool(None)  # type: ignore[arg-type]


def test_connection_class_must_match_the_shell() -> None:
    # a sync connection class in the asyncio pool (or the reverse) could never work
    with pytest.raises(TypeError, match="connection_class"):
        AsyncPool(SECRET_DSN, connection_class=psycopg.Connection)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="connection_class"):
        Pool(SECRET_DSN, connection_class=psycopg.AsyncConnection)  # type: ignore[arg-type]

    class MyConnection(psycopg.Connection[Any]):
        pass

    pool = Pool(SECRET_DSN, open=False, connection_class=MyConnection)
    assert pool.connection_class is MyConnection


def test_good_config_and_defaults() -> None:
    pool = Pool(SECRET_DSN, open=False)
    assert (pool.min_size, pool.max_size, pool.timeout) == (4, 4, 30.0)
    assert pool.policy.name == "session"
    assert pool.closed
    assert pool.name.startswith("pool-")
    pool2 = Pool(SECRET_DSN, open=False, min_size=0, max_size=3, name="api", mode="session")
    assert (pool2.min_size, pool2.max_size, pool2.name) == (0, 3, "api")
    assert pool.name != Pool(SECRET_DSN, open=False).name
    # integers are accepted where seconds are expected, and a zero reconnect_timeout
    Pool(SECRET_DSN, open=False, timeout=1, max_lifetime=10, max_idle=5, reconnect_timeout=0)
    # a policy instance or class is accepted as mode
    assert Pool(SECRET_DSN, open=False, mode=pgpoolkit.SessionPolicy()).policy.name == "session"
    policy_class: Any = pgpoolkit.SessionPolicy
    assert Pool(SECRET_DSN, open=False, mode=policy_class).policy.name == "session"


def test_infinite_timeout_is_accepted_and_works(dsn: str) -> None:
    # an infinite timeout means "wait as long as it takes", not a crash in the lock
    with Pool(dsn, min_size=1, timeout=math.inf, max_lifetime=math.inf, max_idle=math.inf) as p:
        with p.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with p.connection(timeout=math.inf) as conn:
            assert conn.execute("SELECT 2").fetchone() == (2,)


async def test_infinite_timeout_is_accepted_and_works_async(dsn: str) -> None:
    async with AsyncPool(dsn, min_size=1, timeout=math.inf, max_lifetime=math.inf) as p:
        conn = await p.connect(timeout=math.inf)
        cur = await conn.execute("SELECT 1")
        assert await cur.fetchone() == (1,)
        await conn.close()


def test_no_password_in_repr_or_stats() -> None:
    pool = Pool(SECRET_DSN, open=False, name="secretive")
    apool = AsyncPool(SECRET_DSN, name="asecretive")
    for text in (
        repr(pool),
        str(pool),
        repr(apool),
        str(apool),
        repr(pool.stats()),
        repr(apool.stats()),
        repr(pool.get_stats()),
        repr(pool.stats().as_dict()),
    ):
        assert PASSWORD not in text
    assert "secretive" in repr(pool)


def test_not_opened_pool_refuses_checkout() -> None:
    pool = Pool(SECRET_DSN, open=False)
    with pytest.raises(PoolClosed, match="not open yet"):
        pool.getconn(timeout=0.1)


async def test_async_pool_cannot_open_in_constructor() -> None:
    with pytest.raises(TypeError, match="async with"):
        AsyncPool(SECRET_DSN, open=True)
    pool = AsyncPool(SECRET_DSN)  # open=None: not opened
    assert pool.closed
    with pytest.raises(PoolClosed, match="not open yet"):
        await pool.getconn(timeout=0.1)


def test_async_pool_constructed_outside_a_loop() -> None:
    # building the pool at import time (no running loop), then using it in asyncio.run()
    pool = AsyncPool(SECRET_DSN, min_size=0, max_size=1, timeout=0.2)

    async def main() -> None:
        async with pool:
            assert not pool.closed

    asyncio.run(main())
    assert pool.closed


def test_bad_resize() -> None:
    pool = Pool(SECRET_DSN, open=False, min_size=1, max_size=2)
    with pytest.raises(ValueError, match="max_size"):
        pool.resize(3, 2)
    with pytest.raises(ValueError, match="min_size"):
        pool.resize(-1, 2)
    with pytest.raises(TypeError, match="max_size"):
        pool.resize(1, True)
    assert (pool.min_size, pool.max_size) == (1, 2)


def test_bad_open_wait_timeout(dsn: str) -> None:
    with Pool(dsn, min_size=1) as pool:
        with pytest.raises(ValueError, match="timeout"):
            pool.wait(timeout=-1)
        assert not pool.closed


@pytest.mark.parametrize(
    "text",
    [
        f'in URI: "postgresql://bob:{PASSWORD}@[::1:5432/db"',
        f'invalid URI query parameter in "postgres://bob:{PASSWORD}@h/db?x=1"',
        f"postgresql://h/db?password={PASSWORD}&sslmode=disable",
        f"host=h password={PASSWORD} user=bob",
        f"host=h password = '{PASSWORD} with spaces' user=bob",
    ],
)
def test_redact(text: str) -> None:
    # what the pool logs and puts in PoolTimeout from a failed connection attempt
    out = redact(text)
    assert PASSWORD not in out and "***" in out
    assert "bob" in out or "sslmode" in out or "user" in out


def test_redact_leaves_other_messages_alone() -> None:
    msg = (
        'connection to server at "127.0.0.1", port 5432 failed: FATAL:  password '
        'authentication failed for user "bob"'
    )
    assert redact(msg) == msg


@pytest.mark.parametrize("cls", [Pool, AsyncPool])
def test_constructors_follow_the_declared_parameters(cls: type[Any]) -> None:
    # one declaration (_config.PARAMETERS) for the constructors, pgpoolkit.connect() and the
    # docs' table: a parameter added to one place only fails here
    import inspect

    signature = list(inspect.signature(cls.__init__).parameters)[1:]
    assert sorted(signature) == sorted(p.name for p in PARAMETERS)


def test_num_workers_caps_connection_attempts(dsn: str) -> None:
    with Pool(dsn, min_size=4, num_workers=1) as pool:
        assert pool.num_workers == 1
        assert pool._core.connecting <= 1
        pool.wait(10.0)
        assert pool.stats().servers_idle == 4


@pytest.mark.skipif(psycopg.__version__ < "3.3", reason="psycopg 3.3's close() hook")
def test_close_returns(dsn: str) -> None:
    with Pool(dsn, min_size=1, close_returns=True) as pool:
        conn = pool.getconn()
        pid = conn.info.backend_pid
        conn.close()  # psycopg's close(): back to the pool, as psycopg_pool does
        assert not conn.closed and pool.stats().servers_active == 0
        again = pool.getconn()
        assert again.info.backend_pid == pid
        pool.putconn(again)


def test_policy_tables_are_validated_when_the_pool_is_built() -> None:
    class Leaky(pgpoolkit.Policy):
        name = "leaky"
        table = {(None, pgpoolkit.Event.STATEMENT): pgpoolkit.Action.BIND}

    with pytest.raises(ValueError, match=r"'leaky'.*\(IDLE, SESSION_STATE\) -> NONE.*PIN"):
        Pool(SECRET_DSN, mode=Leaky(), open=False)

    class Confused(pgpoolkit.TransactionPolicy):
        name = "confused"

        def decide(
            self, state: pgpoolkit.ClientState, event: pgpoolkit.Event, detail: str = ""
        ) -> pgpoolkit.Action:
            if event is pgpoolkit.Event.CLOSE:
                return pgpoolkit.Action.PIN
            return super().decide(state, event, detail)

    with pytest.raises(ValueError, match=r"'confused'.*CLOSE\) -> PIN is not an action"):
        Pool(SECRET_DSN, mode=Confused(), open=False)

    class BadKey(pgpoolkit.SessionPolicy):
        table = {("idle", pgpoolkit.Event.CONNECT): pgpoolkit.Action.BIND}  # type: ignore[dict-item]

    with pytest.raises(ValueError, match="table key"):
        Pool(SECRET_DSN, mode=BadKey(), open=False)


@pytest.mark.parametrize("bad", [math.nan, -1.0, 0, "1"])
def test_bad_per_call_timeout_is_refused_not_waited(dsn: str, bad: Any) -> None:
    # (issue 12: an AsyncPool given timeout=nan hung)
    with Pool(dsn, min_size=1, max_size=1) as pool:
        held = pool.getconn()  # the only connection: a checkout would have to wait
        with pytest.raises((ValueError, TypeError), match="timeout"):
            pool.getconn(timeout=bad)
        with pytest.raises((ValueError, TypeError), match="timeout"):
            pool.connect(timeout=bad)
        pool.putconn(held)


async def test_wait_on_an_unopened_async_pool_says_so(dsn: str) -> None:
    # (issue 12: it answered "was not ready after 3.0 s")
    pool = AsyncPool(dsn, min_size=1)
    with pytest.raises(PoolClosed, match="not open yet"):
        await pool.wait(timeout=3.0)


def test_bad_per_call_timeout_in_transaction_mode(dsn: str) -> None:
    with Pool(dsn, min_size=1, mode="transaction") as pool:
        with pytest.raises(ValueError, match="timeout"):
            pool.connect(timeout=math.nan)
        with pytest.raises(ValueError, match="timeout"):
            pool.connection(timeout=-5)


@pytest.mark.parametrize(
    "conninfo",
    ["host=x password=Hunter2-ultra-secret dbname", "postgresql://bob:Hunter2-ultra-secret@[::1"],
)
def test_unparsable_conninfo_fails_at_construction(conninfo: str) -> None:
    # (issue 12: it was retried for ever)
    with pytest.raises(ValueError, match="conninfo cannot be parsed") as info:
        Pool(conninfo, open=False)
    assert PASSWORD not in str(info.value)
    with pytest.raises(ValueError, match="conninfo cannot be parsed"):
        AsyncPool(conninfo)
