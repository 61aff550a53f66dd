"""The fault suite (issue 12): 64 concurrent clients per scenario, real PostgreSQL, threads and
asyncio, session and transaction modes.

Every scenario asserts the same three things, through one harness (``Rig``):

- no hang: every call returned a result or an exception within its deadline, and every client
  stopped when asked;
- no leak: at the end the pool's figures and ``pg_stat_activity`` (filtered by the test's own
  ``application_name``) agree, and nothing is checked out or connecting;
- recovery: the pool is back to ``min_size`` after the fault.

The recovery times measured (from the server's return to the first client served) are printed
(``pytest -s``) and written to ``/tmp/pgpoolkit-fault-suite.json`` (``PGPOOLKIT_FAULT_RECORD``
to move it), so that they can be quoted. The retry delays are the library's own: nothing here
shortens them.

``Rig`` runs an ``AsyncPool`` and its client tasks on an event loop of their own in a thread,
so that one synchronous test body drives the faults (stop the server, terminate backends, cut
the proxy) for both shells.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
import pytest

from pgpoolkit import AsyncPool, Pool, PoolClosed, PoolError, PoolTimeout
from pgpoolkit.testing import TcpProxy, TemporaryPostgres

T = TypeVar("T")
Admin = psycopg.Connection[tuple[Any, ...]]

KINDS = ("threads", "asyncio")
MODES = ("session", "transaction")
CLIENTS = 64
MIN_SIZE = 3
MAX_SIZE = 6
#: the pool's checkout timeout in the scenarios; every call must end within CALL_DEADLINE
TIMEOUT = 2.0
CALL_DEADLINE = TIMEOUT + 8.0  # generous: 2 CPUs shared with other jobs
SETTLE = 20.0  # seconds to get back to min_size, agreeing with the server
PASSWORD = "secret-pw-123"  # in the conninfo of the bad-input cases: never in a message
RECORD_FILE = os.environ.get("PGPOOLKIT_FAULT_RECORD", "/tmp/pgpoolkit-fault-suite.json")

both_kinds = pytest.mark.parametrize("kind", KINDS)
both_modes = pytest.mark.parametrize("mode", MODES)


# -- the harness -------------------------------------------------------------------------------


class WrongAnswer(AssertionError):
    """A statement returned another client's answer (two clients on one backend)."""


@dataclass
class Outcome:
    """What the clients saw: calls, results, errors by type, latencies."""

    calls: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    classes: dict[str, type[BaseException]] = field(default_factory=dict)
    messages: dict[str, list[str]] = field(default_factory=dict)
    max_latency: float = 0.0
    ok_times: list[float] = field(default_factory=list)
    hung: int = 0
    #: the latest message of each error type
    latest: dict[str, str] = field(default_factory=dict)
    #: messages that were empty or showed the password
    unclear: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, t0: float, error: BaseException | None) -> None:
        now = time.monotonic()
        with self.lock:
            self.calls += 1
            self.max_latency = max(self.max_latency, now - t0)
            if error is None:
                self.ok += 1
                self.ok_times.append(now)
            else:
                name = type(error).__name__
                message = str(error)
                self.errors[name] += 1
                self.classes[name] = type(error)
                self.latest[name] = message
                examples = self.messages.setdefault(name, [])
                if len(examples) < 3:
                    examples.append(message)
                if PASSWORD in message or (
                    isinstance(error, psycopg.Error) and not message.strip()
                ):
                    self.unclear.append(f"{name}: {message!r}")

    def first_ok_after(self, t: float) -> float | None:
        later = [s for s in self.ok_times if s >= t]
        return min(later) if later else None

    def check(
        self, deadline: float = CALL_DEADLINE, allowed: tuple[type[BaseException], ...] = ()
    ) -> None:
        """No hang, every call within ``deadline``, only errors of the ``allowed`` classes
        (and subclasses), and every error message clear (non-empty) and free of the
        password."""
        assert self.hung == 0, f"{self.hung} clients hung; {self.summary()}"
        assert self.max_latency <= deadline, f"a call took {self.max_latency:.1f} s: {self}"
        unexpected = {n for n, c in self.classes.items() if not _allowed(c, allowed)}
        assert not unexpected, f"unexpected errors {unexpected}: {self.summary()}"
        assert not self.unclear, self.unclear[:5]

    def summary(self) -> str:
        return (
            f"{self.calls} calls, {self.ok} ok, errors {dict(self.errors)}, "
            f"max latency {self.max_latency:.2f} s, hung {self.hung}; "
            f"messages {self.messages}"
        )


def _allowed(cls: type[BaseException], allowed: tuple[type[BaseException], ...]) -> bool:
    """``cls`` is one of ``allowed`` (or a subclass); a pool error (all are OperationalErrors)
    only if a pool error class is allowed explicitly."""
    if issubclass(cls, PoolError):
        return any(issubclass(cls, a) for a in allowed if issubclass(a, PoolError))
    return issubclass(cls, allowed)


@dataclass(frozen=True)
class Work:
    """One unit of work: ``statements`` statements in one transaction (autocommit off) in a
    ``with pool.connection()`` block, each checking its own answer; ``sleep`` seconds each;
    ``think``: seconds the client pauses between two statements, inside the transaction;
    ``raises``: an exception raised inside the block after the statements."""

    statements: int = 2
    sleep: float = 0.005
    think: float = 0.0
    raises: type[BaseException] | None = None


def unit_sync(pool: Pool, work: Work, tag: str) -> None:
    with pool.connection() as conn:
        for i in range(work.statements):
            token = f"{tag}-{i}"
            row = conn.execute("SELECT %s::text, pg_sleep(%s)", (token, work.sleep)).fetchone()
            if row is None or row[0] != token:
                raise WrongAnswer(f"asked for {token!r}, got {row!r}")
            if work.think and i < work.statements - 1:
                time.sleep(work.think)
        if work.raises is not None:
            raise work.raises("raised inside the block")


async def unit_async(pool: AsyncPool, work: Work, tag: str) -> None:
    async with pool.connection() as conn:
        for i in range(work.statements):
            token = f"{tag}-{i}"
            cur = await conn.execute("SELECT %s::text, pg_sleep(%s)", (token, work.sleep))
            row = await cur.fetchone()
            if row is None or row[0] != token:
                raise WrongAnswer(f"asked for {token!r}, got {row!r}")
            if work.think and i < work.statements - 1:
                await asyncio.sleep(work.think)
        if work.raises is not None:
            raise work.raises("raised inside the block")


class Rig:
    """A pool (``Pool`` in threads, or ``AsyncPool`` on an event loop in a thread of its own)
    with N clients doing units of work against it, recording what they see."""

    def __init__(self, kind: str, conninfo: str, app: str, **options: Any) -> None:
        self.kind = kind
        self.app = app
        options.setdefault("min_size", MIN_SIZE)
        options.setdefault("max_size", MAX_SIZE)
        options.setdefault("timeout", TIMEOUT)
        options.setdefault("max_idle", 0.5)  # back to min_size soon after a burst
        options.setdefault("name", app)
        kwargs = {"application_name": app, **options.pop("kwargs", {})}
        self.min_size: int = options["min_size"]
        self.stop_event = threading.Event()
        self.outcome = Outcome()
        self._threads: list[threading.Thread] = []
        self._finished: set[int] = set()
        self._interrupt_lock = threading.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        if kind == "threads":
            self.pool: Any = Pool(conninfo, kwargs=kwargs, **options)
        else:
            self.loop = asyncio.new_event_loop()
            self._loop_thread = threading.Thread(
                target=self.loop.run_forever, name=f"rig-loop-{app}", daemon=True
            )
            self._loop_thread.start()

            async def make() -> AsyncPool:
                pool = AsyncPool(conninfo, kwargs=kwargs, **options)
                await pool.open()
                return pool

            self.pool = self.run_async(make())

    # running things where the pool lives

    def run_async(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, sync: Callable[[], T], asyn: Callable[[], Awaitable[T]]) -> T:
        """``sync()`` for a threaded pool, ``await asyn()`` on the loop for an AsyncPool."""
        if self.kind == "threads":
            return sync()

        async def run() -> T:
            return await asyn()

        return self.run_async(run())

    def stats(self) -> Any:
        if self.kind == "threads":
            return self.pool.stats()

        async def get() -> Any:
            return self.pool.stats()

        return self.run_async(get(), 10)

    # the clients

    def start(self, work: Work = Work(), clients: int = CLIENTS, pause: float = 0.0) -> None:
        self.stop_event.clear()
        self.outcome = Outcome()
        self._finished = set()
        if self.kind == "threads":
            for n in range(clients):
                thread = threading.Thread(
                    target=self._client_thread, args=(n, work, pause), daemon=True
                )
                self._threads.append(thread)
                thread.start()
        else:

            async def spawn() -> None:
                for n in range(clients):
                    self._tasks.append(asyncio.create_task(self._client_task(n, work, pause)))

            self.run_async(spawn())

    def _client_thread(self, n: int, work: Work, pause: float) -> None:
        k = 0
        try:
            while True:  # twice: an injected KeyboardInterrupt may land between the two
                try:
                    while not self.stop_event.is_set():
                        k += 1
                        t0 = time.monotonic()
                        try:
                            unit_sync(self.pool, work, f"{n}-{k}")
                        except BaseException as ex:
                            self.outcome.record(t0, ex)
                        else:
                            self.outcome.record(t0, None)
                        if pause:
                            time.sleep(pause * random.random())
                    return
                except KeyboardInterrupt:
                    continue
        finally:
            while True:  # no KeyboardInterrupt for this thread any more (see interrupt())
                try:
                    with self._interrupt_lock:
                        self._finished.add(n)
                    break
                except KeyboardInterrupt:
                    continue

    def interrupt(self) -> None:
        """Raise KeyboardInterrupt in a random client thread, wherever it is (as a signal
        handler would in the main thread). Never in a thread that finished: its ident may be
        another thread's already."""
        n = random.randrange(len(self._threads))
        with self._interrupt_lock:
            thread = self._threads[n]
            # a thread that ended (a KeyboardInterrupt may kill one before its try block) may
            # have lent its ident to a new thread already: a pool worker, not ours
            if n in self._finished or thread.ident is None or not thread.is_alive():
                return
            # nor in a thread inside Thread.start(): CPython (3.11 and older) gives the new
            # thread's state its parent's ident until it runs, so that the new thread would
            # get the exception too, die before it says it started, and leave its parent
            # waiting for ever (an artifact of PyThreadState_SetAsyncExc, not of the pool)
            frame = sys._current_frames().get(thread.ident)
            while frame is not None:
                if frame.f_code.co_name == "start" and frame.f_code.co_filename.endswith(
                    "threading.py"
                ):
                    return
                frame = frame.f_back
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(thread.ident), ctypes.py_object(KeyboardInterrupt)
            )

    async def _client_task(self, n: int, work: Work, pause: float) -> None:
        k = 0
        while not self.stop_event.is_set():
            k += 1
            t0 = time.monotonic()
            try:
                await unit_async(self.pool, work, f"{n}-{k}")
            except asyncio.CancelledError:
                if self.stop_event.is_set():  # cancelled by stop(): hung
                    raise
                self.outcome.record(t0, asyncio.CancelledError("cancelled"))
            except BaseException as ex:  # KeyboardInterrupt included: kept in the task
                self.outcome.record(t0, ex)
            else:
                self.outcome.record(t0, None)
            await asyncio.sleep(pause * random.random())

    def stop(self, deadline: float = CALL_DEADLINE) -> Outcome:
        """Stop the clients; those still in a call after ``deadline`` seconds are hung."""
        self.stop_event.set()
        end = time.monotonic() + deadline
        if self.kind == "threads":
            for thread in self._threads:
                thread.join(max(0.0, end - time.monotonic()))
            self.outcome.hung = sum(t.is_alive() for t in self._threads)
            self._threads = []
        else:

            async def wait() -> int:
                if not self._tasks:
                    return 0
                _done, pending = await asyncio.wait(self._tasks, timeout=deadline)
                for task in pending:
                    task.cancel()
                return len(pending)

            self.outcome.hung = self.run_async(wait(), deadline + 30)
            self._tasks = []
        return self.outcome

    def wait_ok(self, after: float, timeout: float = 30.0) -> float:
        """Wait until a client is served after ``after``; the time it was served."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            served = self.outcome.first_ok_after(after)
            if served is not None:
                return served
            time.sleep(0.005)
        pytest.fail(f"no client served within {timeout} s: {self.outcome.summary()}")

    def settle(self, admin_dsn: str, timeout: float = SETTLE) -> float:
        """Wait until the pool is at min_size with nothing in use or connecting, and the
        server has exactly as many backends for the pool: no leak. Seconds it took."""
        t0 = time.monotonic()
        last: tuple[Any, int] = (None, -1)
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            while time.monotonic() - t0 < timeout:
                stats = self.stats()
                backends = server_connections(admin, self.app)
                last = (stats, backends)
                if (
                    stats.servers_active == 0
                    and stats.servers_connecting == 0
                    and stats.servers_total == self.min_size
                    and backends == self.min_size
                ):
                    return time.monotonic() - t0
                time.sleep(0.02)
        pytest.fail(
            f"not back to min_size={self.min_size} with the server agreeing after {timeout} s: "
            f"pg_stat_activity has {last[1]} backends; {last[0]}"
        )

    def close(self) -> None:
        self.stop_event.set()
        if self.kind == "threads":
            with contextlib.suppress(Exception):  # the test closed it (and checked) already
                self.pool.close()
            return
        assert self.loop is not None and self._loop_thread is not None
        with contextlib.suppress(Exception):
            self.run_async(self.pool.close(), 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._loop_thread.join(10)
        self.loop.close()


def server_connections(admin: Admin, app: str) -> int:
    row = admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def terminate(admin: Admin, app: str, state: str | None = None) -> int:
    """Terminate the backends of ``app`` (those in ``state``, if given); how many."""
    query = (
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s"
    )
    params: tuple[str, ...] = (app,)
    if state is not None:
        query += " AND state = %s"
        params = (app, state)
    row = admin.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> float:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.01)
    return time.monotonic() - t0


# -- fixtures ----------------------------------------------------------------------------------

_records: list[dict[str, Any]] = []


def record(scenario: str, **figures: Any) -> None:
    """Keep a measured figure for the report (printed, and written to RECORD_FILE)."""
    entry = {"scenario": scenario, **figures}
    _records.append(entry)
    print(f"\n[fault-suite] {json.dumps(entry)}")


@pytest.fixture(scope="module", autouse=True)
def _write_records() -> Iterator[None]:
    yield
    if _records:
        with open(RECORD_FILE, "w", encoding="utf-8") as f:
            json.dump(_records, f, indent=1)


@pytest.fixture(scope="module")
def cluster() -> Iterator[TemporaryPostgres]:
    """This module's own server: restarted, stopped and filled up by the scenarios.
    max_connections is small so that another client can take every slot."""
    with TemporaryPostgres(settings={"max_connections": 60}) as pg:
        yield pg


@pytest.fixture
def pg(cluster: TemporaryPostgres) -> Iterator[TemporaryPostgres]:
    cluster.start()
    yield cluster
    cluster.start()


@pytest.fixture
def app(request: pytest.FixtureRequest) -> str:
    return f"fs-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def rig_factory(app: str) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(kind: str, conninfo: str, **options: Any) -> Rig:
        rig = Rig(kind, conninfo, app, **options)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


# -- server restart ----------------------------------------------------------------------------


@pytest.mark.slow
@both_kinds
@both_modes
@pytest.mark.parametrize("stop_mode", ["fast", "immediate"])
def test_server_restart(
    pg: TemporaryPostgres, rig_factory: Callable[..., Rig], kind: str, mode: str, stop_mode: str
) -> None:
    rig = rig_factory(kind, pg.dsn, mode=mode)
    rig.start()
    rig.wait_ok(time.monotonic())
    pg.stop(stop_mode)
    down = time.monotonic()
    pg.start()
    back = time.monotonic()
    served = rig.wait_ok(back)
    time.sleep(0.5)  # some load after the return
    outcome = rig.stop()
    outcome.check(allowed=(psycopg.OperationalError, PoolTimeout))
    settled = rig.settle(pg.dsn)
    record(
        "server restart",
        kind=kind,
        mode=mode,
        stop=stop_mode,
        outage_s=round(back - down, 3),
        recovery_s=round(served - back, 3),
        settle_s=round(settled, 3),
        calls=outcome.calls,
        errors=dict(outcome.errors),
    )
    assert served - back < 2.0


@pytest.mark.slow
@both_kinds
def test_idle_pool_refills_after_restart(
    pg: TemporaryPostgres, rig_factory: Callable[..., Rig], kind: str
) -> None:
    # no demand at all: the pool notices by itself that its idle connections died (psycopg_pool
    # takes 0.5-1.0 s)
    rig = rig_factory(kind, pg.dsn)
    rig.settle(pg.dsn)
    pg.restart()
    back = time.monotonic()
    rig.settle(pg.dsn, timeout=5.0)
    record("idle refill after restart", kind=kind, refill_s=round(time.monotonic() - back, 3))


# -- an outage longer than the timeout ---------------------------------------------------------


@pytest.mark.slow
@both_kinds
@both_modes
def test_outage_longer_than_timeout(
    pg: TemporaryPostgres, rig_factory: Callable[..., Rig], kind: str, mode: str
) -> None:
    rig = rig_factory(kind, pg.dsn, mode=mode, timeout=1.0)
    rig.start(pause=0.05)
    rig.wait_ok(time.monotonic())
    pg.stop("fast")
    down = time.monotonic()
    wait_until(lambda: rig.outcome.errors["PoolTimeout"] >= CLIENTS, what="timeouts")
    timeouts = rig.outcome.messages["PoolTimeout"]
    assert all("last connection error" in m and "OperationalError" in m for m in timeouts), timeouts
    # long enough for the retry delay to reach its cap (0.2 s doubling to 0.8 s)
    time.sleep(max(0.0, 3.0 - (time.monotonic() - down)))
    pg.start()
    back = time.monotonic()
    served = rig.wait_ok(back)
    outcome = rig.stop()
    outcome.check(deadline=1.0 + 8.0, allowed=(psycopg.OperationalError, PoolTimeout))
    settled = rig.settle(pg.dsn)
    record(
        "outage longer than timeout",
        kind=kind,
        mode=mode,
        outage_s=round(back - down, 3),
        recovery_s=round(served - back, 3),
        settle_s=round(settled, 3),
        timeouts=outcome.errors["PoolTimeout"],
        example=timeouts[0],
    )
    assert served - back < 2.0


@both_kinds
def test_outage_refill_without_demand(
    pg: TemporaryPostgres, rig_factory: Callable[..., Rig], kind: str
) -> None:
    # the clients gave up during the outage: the pool gets back to min_size by itself
    rig = rig_factory(kind, pg.dsn, timeout=0.5)
    rig.start(clients=8)
    rig.wait_ok(time.monotonic())
    pg.stop("fast")
    wait_until(lambda: rig.outcome.errors["PoolTimeout"] >= 8, what="timeouts")
    rig.stop().check(allowed=(psycopg.OperationalError, PoolTimeout))
    pg.start()
    back = time.monotonic()
    rig.settle(pg.dsn)
    record("outage refill without demand", kind=kind, refill_s=round(time.monotonic() - back, 3))


# -- terminated backends -----------------------------------------------------------------------


@both_kinds
@both_modes
@pytest.mark.parametrize("state", ["active", "idle in transaction"])
def test_terminated_backends(
    pg: TemporaryPostgres,
    rig_factory: Callable[..., Rig],
    kind: str,
    mode: str,
    state: str,
) -> None:
    # clients run three statements in a transaction, thinking between them: at any moment
    # some backends are running a statement, some are idle in transaction
    rig = rig_factory(kind, pg.dsn, mode=mode)
    rig.start(Work(statements=3, sleep=0.01, think=0.01))
    rig.wait_ok(time.monotonic())
    killed = 0
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        for _ in range(5):
            time.sleep(0.15)
            killed += terminate(admin, rig.app, state)
    assert killed > 0
    after = time.monotonic()
    served = rig.wait_ok(after)
    outcome = rig.stop()
    outcome.check(allowed=(psycopg.OperationalError,))  # only those whose backend died under them
    rig.settle(pg.dsn)
    record(
        "terminated backends",
        kind=kind,
        mode=mode,
        state=state,
        killed=killed,
        errors=dict(outcome.errors),
        calls=outcome.calls,
        recovery_s=round(served - after, 3),
    )


@both_kinds
def test_terminated_idle_backends_cost_no_client_an_error(
    pg: TemporaryPostgres, rig_factory: Callable[..., Rig], kind: str
) -> None:
    # backends idle in the pool: the checkout's probe sees them dead, no client sees it
    rig = rig_factory(kind, pg.dsn, min_size=MAX_SIZE)
    rig.settle(pg.dsn)
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        assert terminate(admin, rig.app) == MAX_SIZE
        wait_until(lambda: server_connections(admin, rig.app) == 0, what="backends gone")
    rig.start()
    rig.wait_ok(time.monotonic())
    time.sleep(0.3)
    outcome = rig.stop()
    outcome.check(allowed=())
    assert rig.stats().connections_lost_total >= MAX_SIZE
    rig.settle(pg.dsn)


@both_kinds
def test_broken_mid_transaction_connection_goes_back(
    pg: TemporaryPostgres, rig_factory: Callable[..., Rig], kind: str
) -> None:
    # (issue 12 item 1) four long-lived transaction-mode clients inside a transaction lose
    # their backends and stay open; new clients must still be served
    rig = rig_factory(kind, pg.dsn, mode="transaction", min_size=4, max_size=4, timeout=3)
    clients: list[Any] = []

    def hold_sync() -> None:
        for _ in range(4):
            conn = rig.pool.connect()
            conn.execute("SELECT 1")  # a transaction open (autocommit off)
            clients.append(conn)

    async def hold_async() -> None:
        for _ in range(4):
            conn = await rig.pool.connect()
            await conn.execute("SELECT 1")
            clients.append(conn)

    rig.call(hold_sync, hold_async)
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        assert terminate(admin, rig.app, "idle in transaction") == 4
        wait_until(lambda: server_connections(admin, rig.app) == 0, what="backends gone")

    def use_sync() -> None:
        for conn in clients:  # each client sees its error once...
            with contextlib.suppress(psycopg.OperationalError):
                conn.execute("SELECT 1")
        unit_sync(rig.pool, Work(), "new")  # ...and a new client is served

    async def use_async() -> None:
        for conn in clients:
            with contextlib.suppress(psycopg.OperationalError):
                await conn.execute("SELECT 1")
        await unit_async(rig.pool, Work(), "new")

    try:
        rig.call(use_sync, use_async)
    finally:
        for conn in clients:
            with contextlib.suppress(Exception):
                rig.call(conn.close, conn.close)


# -- network faults through the proxy ----------------------------------------------------------


@pytest.fixture
def proxy(pg: TemporaryPostgres) -> Iterator[TcpProxy]:
    with TcpProxy(pg.host, pg.port) as p:
        yield p


@both_kinds
@both_modes
def test_network_reset(
    pg: TemporaryPostgres,
    proxy: TcpProxy,
    rig_factory: Callable[..., Rig],
    kind: str,
    mode: str,
) -> None:
    rig = rig_factory(kind, proxy.dsn_for(pg.dsn), mode=mode)
    rig.start(Work(sleep=0.01))
    rig.wait_ok(time.monotonic())
    for _ in range(3):
        time.sleep(0.2)
        proxy.reset_all()
    after = time.monotonic()
    served = rig.wait_ok(after)
    outcome = rig.stop()
    outcome.check(allowed=(psycopg.OperationalError,))
    rig.settle(pg.dsn)
    # the proxy counts a connection until it sees it closed, a moment after the pool closed it
    wait_until(lambda: proxy.active_connections == MIN_SIZE, what="the proxy's connections")
    record(
        "network reset",
        kind=kind,
        mode=mode,
        errors=dict(outcome.errors),
        recovery_s=round(served - after, 3),
    )


@pytest.mark.slow
@both_kinds
@both_modes
def test_network_black_hole_for_queries(
    pg: TemporaryPostgres,
    proxy: TcpProxy,
    rig_factory: Callable[..., Rig],
    kind: str,
    mode: str,
) -> None:
    # a network cut of 3 s: the queries in flight wait for it to heal (nothing in the pool can
    # tell a slow query from a lost network), every other request gets PoolTimeout in time
    rig = rig_factory(kind, proxy.dsn_for(pg.dsn), mode=mode, timeout=1.0)
    rig.start(Work(sleep=0.01))
    rig.wait_ok(time.monotonic())
    proxy.blackhole()
    cut = time.monotonic()
    wait_until(lambda: rig.outcome.errors["PoolTimeout"] >= CLIENTS - MAX_SIZE, what="timeouts")
    time.sleep(max(0.0, 3.0 - (time.monotonic() - cut)))
    proxy.resume()
    back = time.monotonic()
    served = rig.wait_ok(back)
    outcome = rig.stop()
    outcome.check(deadline=3.0 + CALL_DEADLINE, allowed=(PoolTimeout,))
    message = outcome.messages["PoolTimeout"][0]
    assert "6 of 6 in use" in message, message
    rig.settle(pg.dsn)
    record(
        "network black hole for queries",
        kind=kind,
        mode=mode,
        cut_s=round(back - cut, 3),
        recovery_s=round(served - back, 3),
        timeouts=outcome.errors["PoolTimeout"],
        example=message,
    )


@pytest.mark.slow
@both_kinds
def test_network_black_hole_for_connects(
    pg: TemporaryPostgres, proxy: TcpProxy, rig_factory: Callable[..., Rig], kind: str
) -> None:
    # every link cut and new ones hang: libpq's connect_timeout ends each attempt, the requests
    # get PoolTimeout naming it, and the pool recovers when the network heals
    conninfo = proxy.dsn_for(pg.dsn) + " connect_timeout=1"
    rig = rig_factory(kind, conninfo, timeout=1.5)
    rig.settle(pg.dsn)
    rig.start(Work(sleep=0.01), pause=0.05)
    rig.wait_ok(time.monotonic())
    proxy.blackhole()
    proxy.reset_all()
    cut = time.monotonic()
    wait_until(lambda: rig.stats().connections_failed_total >= 2, what="failed attempts")
    wait_until(
        lambda: "timeout expired" in rig.outcome.latest.get("PoolTimeout", ""),
        what="a PoolTimeout naming the connect timeout",
    )
    example = rig.outcome.latest["PoolTimeout"]
    proxy.resume()
    back = time.monotonic()
    served = rig.wait_ok(back)
    outcome = rig.stop()
    outcome.check(allowed=(psycopg.OperationalError, PoolTimeout))
    rig.settle(pg.dsn)
    record(
        "network black hole for connects",
        kind=kind,
        cut_s=round(back - cut, 3),
        recovery_s=round(served - back, 3),
        example=example,
    )


# -- max_connections reached by someone else ---------------------------------------------------


@both_kinds
@both_modes
def test_max_connections_taken_by_someone_else(
    pg: TemporaryPostgres, rig_factory: Callable[..., Rig], kind: str, mode: str
) -> None:
    rig = rig_factory(kind, pg.dsn, mode=mode, timeout=1.0)
    rig.settle(pg.dsn)
    hogs: list[psycopg.Connection[Any]] = []
    try:
        while True:  # someone else takes every connection the server has left
            try:
                hogs.append(psycopg.connect(pg.dsn, autocommit=True))
            except psycopg.OperationalError as ex:
                assert "too many clients" in str(ex) or "reserved" in str(ex), ex
                break
        rig.start(Work(sleep=0.02), pause=0.02)
        # the pool serves with what it has, and cannot grow
        wait_until(lambda: rig.stats().connections_failed_total >= 1, what="a refused attempt")
        wait_until(lambda: rig.outcome.ok >= 20, what="clients served meanwhile")
    finally:
        for hog in hogs:
            hog.close()
    freed = time.monotonic()
    wait_until(lambda: rig.stats().servers_total == MAX_SIZE, what="growth once freed")
    outcome = rig.stop()
    outcome.check(allowed=(PoolTimeout,))
    for message in outcome.messages.get("PoolTimeout", []):
        assert "too many clients" in message or "reserved" in message, message
    rig.settle(pg.dsn)
    record(
        "max_connections reached",
        kind=kind,
        mode=mode,
        hogs=len(hogs),
        growth_s=round(time.monotonic() - freed, 3),
        errors=dict(outcome.errors),
        example=(outcome.messages.get("PoolTimeout") or [""])[0],
    )


# -- asyncio cancellation ----------------------------------------------------------------------


@pytest.mark.slow
@both_modes
def test_cancellation_at_every_await_point(
    pg: TemporaryPostgres, rig_factory: Callable[..., Rig], mode: str
) -> None:
    rig = rig_factory("asyncio", pg.dsn, mode=mode, min_size=2, max_size=2)
    pool: AsyncPool = rig.pool

    async def walk() -> int:
        # one unit cancelled after 0, 1, 2, ... loop iterations, until one completes: every
        # await point of checkout, statements, commit and return is hit once
        steps = 0
        while True:
            task = asyncio.create_task(unit_async(pool, Work(statements=2, sleep=0), f"c{steps}"))
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                steps += 1
                continue
            return steps

    async def storm() -> int:
        # 64 tasks, cancelled at random moments, while others work
        async def one(n: int) -> None:
            await unit_async(pool, Work(statements=2, sleep=0.002), f"s{n}")

        cancelled = 0
        for n in range(24):
            tasks = [asyncio.create_task(one(n * CLIENTS + i)) for i in range(CLIENTS // 4)]
            await asyncio.sleep(random.random() * 0.02)
            for task in random.sample(tasks, len(tasks) // 2):
                task.cancel()
            done, pending = await asyncio.wait(tasks, timeout=CALL_DEADLINE)
            assert not pending, "tasks hung"
            for task in done:
                if task.cancelled():
                    cancelled += 1
                elif task.exception() is not None:
                    raise AssertionError(f"{task.exception()!r}")
        return cancelled

    steps = rig.run_async(walk(), 120)
    cancelled = rig.run_async(storm(), 120)
    assert steps > 5
    rig.settle(pg.dsn)
    rig.start()
    rig.wait_ok(time.monotonic())
    rig.stop().check()
    record("asyncio cancellation", mode=mode, await_points=steps, cancelled=cancelled)


# -- exceptions and KeyboardInterrupt inside blocks --------------------------------------------


@both_kinds
@both_modes
@pytest.mark.parametrize("raises", [ValueError, KeyboardInterrupt])
def test_exception_inside_block(
    pg: TemporaryPostgres,
    rig_factory: Callable[..., Rig],
    kind: str,
    mode: str,
    raises: type[BaseException],
) -> None:
    rig = rig_factory(kind, pg.dsn, mode=mode)
    rig.start(Work(raises=raises))
    wait_until(lambda: rig.outcome.calls >= 200, what="200 units")
    outcome = rig.stop()
    outcome.check(allowed=(raises,))
    assert outcome.errors[raises.__name__] == outcome.calls  # each block raised, nothing else
    rig.settle(pg.dsn)
    stats = rig.stats()
    assert stats.returns_bad_total == 0  # rolled back and reused, not thrown away


def keyboard_interrupt_storm(mode: str, dsn: str, rounds: int) -> str | None:
    """KeyboardInterrupt raised asynchronously in 32 client threads at random points, in
    rounds; after each round the pool must get back to min_size with the server agreeing.
    Connections expire all the time (``max_lifetime=0.02``), so that the client threads start
    connection attempts. What went wrong, or None."""
    # the injector looks at a thread's frames and injects without letting go of the GIL in
    # between (it lets go when it sleeps, or when the client threads wait for the server)
    sys.setswitchinterval(1.0)
    app = f"fs-{uuid.uuid4().hex[:10]}"
    rig = Rig("threads", dsn, app, mode=mode, min_size=2, max_size=6, max_lifetime=0.02)
    try:
        for n in range(rounds):
            rig.start(Work(sleep=0.001), clients=CLIENTS // 2)
            rig.wait_ok(time.monotonic())
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:
                rig.interrupt()
                time.sleep(0.002)
            try:
                rig.stop().check(allowed=(KeyboardInterrupt, psycopg.OperationalError, PoolTimeout))
                rig.settle(dsn, timeout=3)
            except BaseException as ex:
                return f"round {n + 1}: {type(ex).__name__}: {ex}"
        rig.pool.close()
    except BaseException as ex:
        return f"{type(ex).__name__}: {ex}"
    return None


@pytest.mark.slow
@both_modes
def test_keyboard_interrupt_storm_in_threads(pg: TemporaryPostgres, mode: str) -> None:
    # in a process of its own: a thread left stuck in the pool's code (the threaded pools share
    # one module-wide lock for their workers) takes no other test down with it
    try:
        run = subprocess.run(
            [sys.executable, __file__, "storm", mode, pg.dsn, "20"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the storm hung (killed after 120 s)")
    lines = run.stdout.strip().splitlines()
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    failure = json.loads(lines[-1])
    assert failure is None, failure


# -- fork --------------------------------------------------------------------------------------


def _child_uses_pool_sync(pool: Pool, parent_pids: set[int]) -> int:
    with pool.connection(timeout=10) as conn:
        row = conn.execute("SELECT pg_backend_pid(), 'child'").fetchone()
    assert row is not None and row[1] == "child" and row[0] not in parent_pids, row
    pool.close()
    return 0


async def _child_uses_pool_async(pool: AsyncPool, parent_pids: set[int]) -> int:
    await pool.open()
    async with pool.connection(timeout=10) as conn:
        cur = await conn.execute("SELECT pg_backend_pid(), 'child'")
        row = await cur.fetchone()
    assert row is not None and row[1] == "child" and row[0] not in parent_pids, row
    await pool.close()
    return 0


def _fork(child: Callable[[], int]) -> int:
    """Fork; the child runs ``child()`` and exits with its status (1 on an exception)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 1
        try:
            status = child()
        except BaseException as ex:
            print(f"child failed: {ex!r}", flush=True)
        finally:
            os._exit(status)
    return pid


def _wait_child(pid: int, timeout: float) -> int | None:
    """The child's exit status, or None if it did not exit within ``timeout`` s (killed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


@both_kinds
@both_modes
def test_fork_with_parent_under_load(
    pg: TemporaryPostgres, rig_factory: Callable[..., Rig], kind: str, mode: str
) -> None:
    rig = rig_factory(kind, pg.dsn, mode=mode)
    rig.start(Work(sleep=0.002))
    rig.wait_ok(time.monotonic())
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        parent_pids = {
            int(r[0])
            for r in admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (rig.app,)
            ).fetchall()
        }
    statuses = []
    for _ in range(3):
        if kind == "threads":
            pid = _fork(lambda: _child_uses_pool_sync(rig.pool, parent_pids))
        else:

            def child() -> int:  # in the child: a new event loop in a new thread
                result: list[int] = []
                thread = threading.Thread(
                    target=lambda: result.append(
                        asyncio.run(_child_uses_pool_async(rig.pool, parent_pids))
                    )
                )
                thread.start()
                thread.join(30)
                return result[0] if result else 1

            async def fork_on_loop() -> int:  # between two steps of the client tasks
                return _fork(child)

            pid = rig.run_async(fork_on_loop())
        statuses.append(_wait_child(pid, 30.0))
        time.sleep(0.2)
    outcome = rig.stop()
    assert statuses == [0, 0, 0]
    outcome.check(allowed=())  # the parent's clients saw nothing
    rig.settle(pg.dsn)


@pytest.mark.slow
@both_modes
def test_fork_while_the_pool_starts_threads(
    pg: TemporaryPostgres, rig_factory: Callable[..., Rig], mode: str
) -> None:
    # connections expire all the time: the parent's threads start connection attempts (new
    # threads) all the time; each child must use the pool and exit
    rig = rig_factory("threads", pg.dsn, mode=mode, max_lifetime=0.02)
    rig.start(Work(sleep=0.001))
    rig.wait_ok(time.monotonic())
    try:
        for i in range(30):
            time.sleep(random.random() * 0.02)
            pid = _fork(lambda: _child_uses_pool_sync(rig.pool, set()))
            status = _wait_child(pid, 10.0)
            assert status == 0, f"fork {i + 1}: the child {status=} (None: hung, killed)"
    finally:
        outcome = rig.stop()
    outcome.check(allowed=())
    rig.settle(pg.dsn)


# -- bad input ---------------------------------------------------------------------------------


def _bad_settings() -> list[tuple[dict[str, Any], type[Exception], str]]:
    return [
        ({"min_size": -1}, ValueError, "min_size"),
        ({"min_size": 4, "max_size": 2}, ValueError, "max_size"),
        ({"min_size": 0}, ValueError, "max_size"),
        ({"timeout": float("nan")}, ValueError, "timeout"),
        ({"timeout": -1}, ValueError, "timeout"),
        ({"timeout": "5"}, TypeError, "timeout"),
        ({"max_lifetime": 0}, ValueError, "max_lifetime"),
        ({"max_idle": float("nan")}, ValueError, "max_idle"),
        ({"reconnect_timeout": -1.0}, ValueError, "reconnect_timeout"),
        ({"max_waiting": -1}, ValueError, "max_waiting"),
        ({"num_workers": 0}, ValueError, "num_workers"),
        ({"mode": "bogus"}, ValueError, "mode"),
        ({"max_size": True}, TypeError, "max_size"),
        ({"idle_in_transaction_timeout": -5}, ValueError, "idle_in_transaction_timeout"),
        ({"configure": 3}, TypeError, "configure"),
        ({"kwargs": [1]}, TypeError, "kwargs"),
    ]


@both_kinds
def test_bad_settings(kind: str) -> None:
    cls: Any = Pool if kind == "threads" else AsyncPool
    for options, error, name in _bad_settings():
        with pytest.raises(error) as info:
            cls(f"host=127.0.0.1 password={PASSWORD}", open=False, **options)
        message = str(info.value)
        assert name in message and PASSWORD not in message, (options, message)


@both_kinds
@pytest.mark.parametrize(
    "conninfo",
    [
        f"host=127.0.0.1 password='{PASSWORD}",  # unterminated quote
        f"nonsense {PASSWORD}",  # not key=value
        f"postgresql://u:{PASSWORD}@[bad",  # a malformed URI
        f"host=127.0.0.1 password={PASSWORD} bogus_option=1",  # an unknown keyword
    ],
)
def test_invalid_conninfo(kind: str, conninfo: str) -> None:
    cls: Any = Pool if kind == "threads" else AsyncPool
    with pytest.raises(ValueError, match="conninfo") as info:
        cls(conninfo, open=False)
    assert PASSWORD not in str(info.value)


@both_kinds
@pytest.mark.parametrize("where", ["refused", "wrong password", "no such database"])
def test_unreachable_or_refused(
    pg: TemporaryPostgres, rig_factory: Callable[..., Rig], kind: str, where: str
) -> None:
    good = pg.create_user("fault_user", PASSWORD)
    conninfo = {
        "refused": f"host=127.0.0.1 port=1 user=u password={PASSWORD} connect_timeout=2",
        "wrong password": good.replace(PASSWORD, PASSWORD + "x"),
        "no such database": good.replace("dbname=postgres", "dbname=nowhere"),
    }[where]
    expected = {
        "refused": "Connection refused",
        "wrong password": "password authentication failed",
        "no such database": 'database "nowhere" does not exist',
    }[where]
    rig = rig_factory(kind, conninfo, min_size=1, max_size=2, timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        rig.call(rig.pool.getconn, rig.pool.getconn)
    assert time.monotonic() - t0 < CALL_DEADLINE
    message = str(info.value)
    assert "last connection error" in message and expected in message, message
    assert PASSWORD not in message and PASSWORD not in repr(rig.pool)
    record("bad input", kind=kind, case=where, example=message)


@both_kinds
def test_getconn_putconn_misuse_and_use_after_close(
    pg: TemporaryPostgres, rig_factory: Callable[..., Rig], kind: str
) -> None:
    rig = rig_factory(kind, pg.dsn, min_size=1, max_size=2)
    other = rig_factory(kind, pg.dsn, min_size=1, max_size=1)
    pool, pool2 = rig.pool, other.pool
    conn = rig.call(pool.getconn, pool.getconn)
    with pytest.raises(ValueError, match="did not come from this pool"):
        other.call(lambda: pool2.putconn(conn), lambda: pool2.putconn(conn))
    rig.call(lambda: pool.putconn(conn), lambda: pool.putconn(conn))
    with pytest.raises(ValueError, match="returned already"):
        rig.call(lambda: pool.putconn(conn), lambda: pool.putconn(conn))

    def stranger_sync() -> None:
        with psycopg.connect(pg.dsn) as stranger:
            pool.putconn(stranger)

    async def stranger_async() -> None:
        async with await psycopg.AsyncConnection.connect(pg.dsn) as stranger:
            await pool.putconn(stranger)

    with pytest.raises(ValueError, match="did not come from this pool"):
        rig.call(stranger_sync, stranger_async)
    for bad in (float("nan"), -1.0, 0):
        for method in (pool.getconn, pool.connect):
            call = functools.partial(method, timeout=bad)
            with pytest.raises(ValueError, match="timeout"):
                rig.call(call, call)
    with pytest.raises(TypeError, match="timeout"):
        rig.call(lambda: pool.getconn(timeout="1"), lambda: pool.getconn(timeout="1"))

    held = rig.call(pool.connect, pool.connect)
    rig.call(pool.close, pool.close)
    t0 = time.monotonic()
    for name in ("getconn", "connect", "wait"):
        with pytest.raises(PoolClosed, match="is closed"):
            rig.call(getattr(pool, name), getattr(pool, name))
    assert time.monotonic() - t0 < 1.0  # at once, not after a timeout
    # a client open when the pool closed keeps working until it closes, then its server
    # connection closes with it
    rig.call(lambda: held.execute("SELECT 1"), lambda: held.execute("SELECT 1"))
    rig.call(held.close, held.close)
    with pytest.raises(psycopg.OperationalError):
        rig.call(lambda: held.execute("SELECT 1"), lambda: held.execute("SELECT 1"))
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        wait_until(lambda: server_connections(admin, rig.app) == 1, what="closed pool's gone")


def test_nan_timeout_async_does_not_hang(pg: TemporaryPostgres) -> None:
    # issue 12 item 4: AsyncPool(timeout=nan) used to hang; it is refused now
    with pytest.raises(ValueError, match="timeout"):
        AsyncPool(pg.dsn, timeout=math.nan)


if __name__ == "__main__":  # the storm's own process (test_keyboard_interrupt_storm_in_threads)
    if sys.argv[1] == "storm":
        print(json.dumps(keyboard_interrupt_storm(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        sys.stdout.flush()
        os._exit(0)  # whatever threads are left (hung ones included)
