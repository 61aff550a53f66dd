"""A hypothesis state machine driving a threaded ``pgpoolkit.Pool`` against a real PostgreSQL.

Each example opens a pool with its own ``application_name`` and runs a random sequence of
``getconn``/``putconn`` (returning connections clean, in a transaction, in error, or closed),
``connect()`` + ``execute`` + ``close()`` clients (some leaving a transaction open),
``connection()`` blocks that commit or raise, ``resize()``, ``drain()``, requests that must time
out because every connection is held, and backends killed by an admin connection (held ones and
idle ones). After every step it checks what the server and the pool's stats say:

- pg_stat_activity never shows more backends for the pool than max_size (after ``resize()``
  lowered it: than the pool held then, shrinking);
- no backend is handed to two clients at once, nor handed out after ``drain()``;
- ``servers_active`` is the number of connections held, the servers in all are within max_size,
  ``requests_total`` is the number of checkouts asked for, ``timeouts_total`` those that timed out;
- every connection is handed out alive and clean (IDLE); a ``connection()`` block's insert is
  there if the block succeeded and only then; a transaction a client left open is rolled back.

At the end of each example every connection goes back, the pool closes, and the server's count of
its backends must drop to 0.

A second machine drives transaction-mode clients, more of them than server connections. A client
parks its server connection between transactions while no request waits (it keeps it, clean and
idle), and the pool takes it back when a request finds none idle. It runs autocommit statements,
transactions begun (an insert left open) and committed or rolled back, ``getconn()`` requests
(which take parked connections back), ``pause()``/``resume()``, ``drain()``, clients closed and
dropped, and backends terminated under parked clients; after every step: a server connection is
never held by two at once and a transaction stays on its backend; ``servers_active`` is the
number held (parked ones count as idle), never more than max_size in the pool or on the server; a
client between transactions is IDLE, one in a transaction IN_TRANSACTION; every statement
succeeds, even the first after its parked backend was terminated.
"""

from __future__ import annotations

import gc
import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from psycopg import errors as e
from psycopg.pq import TransactionStatus

from pgpoolkit import ClientState, Pool, PoolClosed, PooledConnection, PoolTimeout

Admin = psycopg.Connection[tuple[Any, ...]]

#: how long a request may wait when every connection is held (it must time out)
FULL_TIMEOUT = 0.05
#: ids of the rows inserted, unique across examples (they share the table)
ROW_IDS = itertools.count(1)
#: how long the server may take to show a change (a backend exiting after its client closed)
SETTLE = 5.0


class Boom(Exception):
    """Raised inside a connection() block."""


@dataclass
class Held:
    """A checkout the test holds: a raw connection (getconn) or a client (connect)."""

    conn: psycopg.Connection[Any] | PooledConnection
    pid: int
    raw: bool
    #: its backend was terminated by the admin connection
    dead: bool = False
    #: a row inserted in a transaction left open (client only): must vanish on close
    pending_row: int | None = None


def poll(predicate: Callable[[], bool], timeout: float = SETTLE) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


#: which one of several to take (modulo their number): every rule draws the same values
#: whatever the state, as what the server shows varies from one run to the next and hypothesis
#: replays the prefixes of earlier examples
INDEX = st.integers(0, 255)


class ServerMachine(RuleBasedStateMachine):
    """What both machines share: a pool of their own, and what the server says of it."""

    def __init__(self, dsn: str, admin: Admin, table: str) -> None:
        super().__init__()
        self.dsn = dsn
        self.admin = admin
        self.table = table
        self.app = f"pgpk-sm-{uuid.uuid4().hex[:12]}"
        self.pool: Pool | None = None

    @property
    def p(self) -> Pool:
        assert self.pool is not None
        return self.pool

    def server_pids(self) -> set[int]:
        rows = self.admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (self.app,)
        ).fetchall()
        return {int(row[0]) for row in rows}

    def row_exists(self, row: int) -> bool:
        found = self.admin.execute(f"SELECT 1 FROM {self.table} WHERE id = %s", (row,))
        return found.fetchone() is not None


class PoolMachine(ServerMachine):
    def __init__(self, dsn: str, admin: Admin, table: str) -> None:
        super().__init__(dsn, admin, table)
        self.held: list[Held] = []
        self.checkouts = 0
        self.timeouts = 0
        self.ceiling = 0
        #: backends the pool had when drain() was called: never handed out again
        self.drained: set[int] = set()

    # -- helpers --------------------------------------------------------------------------------

    def full(self) -> bool:
        """True when no checkout can succeed: the pool holds max_size (or more, after resize)."""
        return len(self.held) >= self.p.max_size

    def checked_out(self, conn: psycopg.Connection[Any] | PooledConnection, raw: bool) -> Held:
        """Check a connection just handed out: alive, clean, and nobody else's."""
        pid = conn.info.backend_pid
        assert pid not in {h.pid for h in self.held}, f"backend {pid} handed out twice"
        assert pid not in self.drained, f"backend {pid} handed out after drain()"
        assert conn.info.transaction_status == TransactionStatus.IDLE
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None and row[0] == pid
        held = Held(conn, pid, raw)
        self.held.append(held)
        return held

    # -- set up ---------------------------------------------------------------------------------

    @initialize(min_size=st.integers(0, 2), extra=st.integers(0, 2))
    def start(self, min_size: int, extra: int) -> None:
        max_size = max(1, min_size + extra)
        self.pool = Pool(
            self.dsn,
            open=False,
            name=self.app,
            min_size=min_size,
            max_size=max_size,
            timeout=5.0,
            kwargs={"application_name": self.app},
        )
        self.pool.open(wait=True, timeout=10.0)
        self.ceiling = max_size

    # -- checkouts --------------------------------------------------------------------------------

    @precondition(lambda self: not self.full())
    @rule(raw=st.booleans(), left_open=st.booleans())
    def checkout(self, raw: bool, left_open: bool) -> None:
        """getconn(), or a client: connect(), a query, maybe an insert in a transaction that
        it leaves open."""
        self.checkouts += 1
        if raw:
            self.checked_out(self.p.getconn(), raw=True)
            return
        held = self.checked_out(self.p.connect(), raw=False)
        if left_open:
            held.pending_row = next(ROW_IDS)
            held.conn.execute(f"INSERT INTO {self.table} VALUES (%s)", (held.pending_row,))
            assert held.conn.info.transaction_status == TransactionStatus.INTRANS

    @precondition(lambda self: self.full())
    @rule(how=st.sampled_from(["getconn", "connect", "connection"]))
    def checkout_times_out(self, how: str) -> None:
        """Every connection is held: a request times out."""
        self.checkouts += 1
        t0 = time.monotonic()
        with pytest.raises(PoolTimeout):
            if how == "getconn":
                self.p.getconn(timeout=FULL_TIMEOUT)
            elif how == "connect":
                self.p.connect(timeout=FULL_TIMEOUT)
            else:
                with self.p.connection(timeout=FULL_TIMEOUT):
                    pytest.fail("connection() gave a connection beyond max_size")
        assert time.monotonic() - t0 < FULL_TIMEOUT + 2.0
        self.timeouts += 1

    @precondition(lambda self: not self.full())
    @rule(raises=st.booleans())
    def connection_block(self, raises: bool) -> None:
        """A connection() block inserts a row: committed, or rolled back if the block raises."""
        self.checkouts += 1
        row = next(ROW_IDS)
        held: Held | None = None
        try:
            with self.p.connection() as conn:
                held = self.checked_out(conn, raw=False)
                conn.execute(f"INSERT INTO {self.table} VALUES (%s)", (row,))
                if raises:
                    raise Boom
        except Boom:
            pass
        finally:
            if held is not None:
                self.held.remove(held)
        assert conn.closed
        assert self.row_exists(row) is not raises

    @precondition(lambda self: self.held)
    @rule(index=INDEX, state=st.sampled_from(["idle", "in transaction", "in error", "closed"]))
    def give_back(self, index: int, state: str) -> None:
        """putconn() a raw connection, or close() a client; in the state drawn."""
        held = self.held.pop(index % len(self.held))
        bad_before = self.p.stats().returns_bad_total
        if held.dead:  # returned untouched (the pool finds out later), or after a failure
            if state != "idle":
                with pytest.raises(psycopg.OperationalError):
                    held.conn.execute("SELECT 1")
        elif state == "in transaction":
            held.conn.execute("SELECT 1")
            assert held.conn.info.transaction_status == TransactionStatus.INTRANS
        elif state == "in error":
            with pytest.raises(e.DivisionByZero):
                held.conn.execute("SELECT 1 / 0")
        elif state == "closed" and held.raw:  # a client's close() is its return
            held.conn.close()
        if held.raw:
            assert isinstance(held.conn, psycopg.Connection)
            self.p.putconn(held.conn)
        else:
            held.conn.close()
            assert held.conn.closed
        if held.pending_row is not None:  # a transaction left open is rolled back
            assert not self.row_exists(held.pending_row)
        if not held.dead:  # rolled back and reused; closed ones are discarded
            discarded = state == "closed" and held.raw
            assert self.p.stats().returns_bad_total == bad_before + discarded

    # -- administration and faults --------------------------------------------------------------

    @rule(min_size=st.sampled_from([0, 0, 1, 2]), extra=st.sampled_from([0, 0, 1, 2]))
    def resize(self, min_size: int, extra: int) -> None:
        """Resize, more often down (to max_size 1) than up."""
        max_size = max(1, min_size + extra)
        self.p.resize(min_size, max_size)
        assert (self.p.min_size, self.p.max_size) == (min_size, max_size)
        # connections in use beyond the new max_size close when they come back: until then
        # the pool may stay above it, never grow
        stats = self.p.stats()
        self.ceiling = max(max_size, stats.servers_total)

    @rule()
    def drain(self) -> None:
        core = self.p._core
        with self.p._lock:
            pids = {conn.info.backend_pid for conn in core.slots}
        self.p.drain()
        self.drained |= pids
        # the idle ones are gone now; those held go when they come back
        idle = pids - {h.pid for h in self.held}
        assert poll(lambda: not (self.server_pids() & idle)), "drained backends still open"

    @rule(index=INDEX, which=st.sampled_from(["held", "idle"]))
    def terminate_backend(self, index: int, which: str) -> None:
        """The admin kills a backend of the pool (and waits until it is gone)."""
        if which == "held":
            alive = [h for h in self.held if not h.dead]
            if not alive:
                return
            victim = alive[index % len(alive)]
            pid = victim.pid
            victim.dead = True
        else:
            idle = sorted(self.server_pids() - {h.pid for h in self.held})
            if not idle:
                return
            pid = idle[index % len(idle)]
        row = self.admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone()
        # (an idle one may have been on its way out already)
        assert row is not None and (row[0] is True or which == "idle")

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def consistent(self) -> None:
        stats = self.p.stats()
        assert stats.servers_active == len(self.held)
        assert stats.clients_waiting == 0
        assert stats.servers_connecting >= 0
        assert stats.servers_total <= self.ceiling, f"{stats} above {self.ceiling}"
        # above max_size (after resize()) only with connections in use: none idle
        open_now = stats.servers_active + stats.servers_idle
        assert stats.servers_idle == 0 or open_now <= stats.max_size, f"{stats}"
        assert stats.requests_total == self.checkouts
        assert stats.timeouts_total == self.timeouts
        pids = [h.pid for h in self.held]
        assert len(set(pids)) == len(pids)
        # the server: every live connection held is there; never more backends than allowed
        # (a backend takes a moment to exit after its client closed it: poll)
        live = {h.pid for h in self.held if not h.dead}
        assert live <= self.server_pids()
        allowed = self.ceiling
        assert poll(lambda: len(self.server_pids()) <= allowed), (
            f"{len(self.server_pids())} backends for a pool of max_size {allowed}"
        )
        self.ceiling = max(self.p.max_size, stats.servers_total)

    def teardown(self) -> None:
        """Every checkout goes back; the pool closes; its backends are gone from the server."""
        if self.pool is None:
            return
        try:
            for held in self.held:
                if held.raw:
                    assert isinstance(held.conn, psycopg.Connection)
                    self.pool.putconn(held.conn)
                else:
                    held.conn.close()
            self.held.clear()
            assert self.pool.stats().servers_active == 0
        finally:
            self.pool.close()
        assert self.pool.closed
        with pytest.raises(PoolClosed):
            self.pool.getconn()
        assert poll(lambda: not self.server_pids(), timeout=10.0), "backends left after close"


# -- transaction mode: parked connections --------------------------------------------------------


@dataclass
class Client:
    conn: PooledConnection
    #: the backend of its open transaction, if one is open
    in_transaction: int | None = None
    pending_row: int | None = None
    #: the backends it used, for the record
    pids: list[int] = field(default_factory=list)


class TransactionModeMachine(ServerMachine):
    def __init__(self, dsn: str, admin: Admin, table: str) -> None:
        super().__init__(dsn, admin, table)
        self.clients: list[Client] = []
        self.raw: list[tuple[psycopg.Connection[Any], int]] = []

    def held_pids(self) -> list[int]:
        return [c.in_transaction for c in self.clients if c.in_transaction is not None] + [
            pid for _, pid in self.raw
        ]

    def held(self) -> int:
        return len(self.held_pids())

    def pid_of(self, conn: Any) -> int:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        return int(row[0])

    # -- set up ---------------------------------------------------------------------------------

    @initialize(max_size=st.integers(1, 3), clients=st.integers(1, 4))
    def start(self, max_size: int, clients: int) -> None:
        self.pool = Pool(
            self.dsn,
            name=self.app,
            mode="transaction",
            min_size=1,
            max_size=max_size,
            timeout=5.0,
            kwargs={"application_name": self.app, "autocommit": True},
        )
        self.pool.open(wait=True, timeout=10.0)
        self.clients = [Client(self.pool.connect()) for _ in range(clients)]

    def idle_clients(self) -> list[Client]:
        return [c for c in self.clients if c.in_transaction is None]

    # -- clients --------------------------------------------------------------------------------

    @precondition(lambda self: self.held() < self.p.max_size)
    @rule(index=INDEX)
    def statement(self, index: int) -> None:
        """An autocommit statement: on whatever connection, one nobody else holds; parked
        after it (no request waits)."""
        client = self.clients[index % len(self.clients)]
        pid = self.pid_of(client.conn)
        assert pid not in self.held_pids() or pid == client.in_transaction
        client.pids.append(pid)
        if client.in_transaction is None:
            assert client.conn.state is ClientState.IDLE

    @precondition(lambda self: self.held() < self.p.max_size)
    @rule(index=INDEX)
    def begin(self, index: int) -> None:
        """A transaction begun with an insert, left open."""
        idle = self.idle_clients()
        if not idle:
            return
        client = idle[index % len(idle)]
        client.conn.autocommit = False
        client.pending_row = row = next(ROW_IDS)
        client.conn.execute(f"INSERT INTO {self.table} VALUES (%s)", (row,))
        pid = self.pid_of(client.conn)
        assert pid not in self.held_pids(), f"backend {pid} held twice"
        client.in_transaction = pid
        assert client.conn.state is ClientState.IN_TRANSACTION

    @precondition(lambda self: any(c.in_transaction is not None for c in self.clients))
    @rule(index=INDEX, commit=st.booleans())
    def end(self, index: int, commit: bool) -> None:
        """The transaction commits or rolls back, on the backend it began on."""
        busy = [c for c in self.clients if c.in_transaction is not None]
        client = busy[index % len(busy)]
        assert self.pid_of(client.conn) == client.in_transaction
        if commit:
            client.conn.commit()
        else:
            client.conn.rollback()
        client.conn.autocommit = True
        assert client.pending_row is not None
        assert self.row_exists(client.pending_row) is commit
        client.in_transaction = client.pending_row = None
        assert client.conn.state is ClientState.IDLE

    @rule(index=INDEX, drop=st.booleans())
    def replace_client(self, index: int, drop: bool) -> None:
        """A client between transactions is closed, or dropped without close(); a new one comes."""
        idle = self.idle_clients()
        if not idle:
            return
        client = idle[index % len(idle)]
        self.clients.remove(client)
        conn = client.conn
        del client, idle
        if drop:  # its finalizer gives its server connection back (parked: reused)
            del conn
            gc.collect()
            assert poll(lambda: self.p.stats().servers_active == self.held())
        else:
            conn.close()
        self.clients.append(Client(self.p.connect()))

    # -- the pool's side ------------------------------------------------------------------------

    @precondition(lambda self: self.held() < self.p.max_size)
    @rule()
    def getconn(self) -> None:
        """A raw checkout: takes a parked connection back if none is idle."""
        conn = self.p.getconn()
        pid = self.pid_of(conn)
        assert pid not in self.held_pids(), f"backend {pid} held twice"
        self.raw.append((conn, pid))

    @precondition(lambda self: self.raw)
    @rule(index=INDEX)
    def putconn(self, index: int) -> None:
        conn, _ = self.raw.pop(index % len(self.raw))
        self.p.putconn(conn)

    @precondition(lambda self: self.held() == 0)
    @rule()
    def pause_and_resume(self) -> None:
        """pause() with only parked connections returns at once: it takes them back."""
        self.p.pause(timeout=2.0)
        assert self.p.stats().servers_active == 0
        self.p.resume()

    @rule()
    def drain(self) -> None:
        """drain(): the idle and parked connections close now, the held ones when they come
        back; a client's next statement runs on a new one."""
        before = {pid for c in self.clients for pid in c.pids[-1:]} - set(self.held_pids())
        self.p.drain()
        assert poll(lambda: not (self.server_pids() & before)), "drained backends still open"

    @rule(index=INDEX)
    def terminate_parked(self, index: int) -> None:
        """The admin kills the backend a client parked: its next statement runs all the same."""
        parked = [c for c in self.idle_clients() if c.conn._parked]  # type: ignore[attr-defined]
        if not parked:
            return
        client = parked[index % len(parked)]
        slot = client.conn._slot  # type: ignore[attr-defined]
        if slot is None:  # the maintenance round took it back meanwhile
            return
        pid = slot.conn.info.backend_pid
        self.admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        if self.held() < self.p.max_size:
            new = self.pid_of(client.conn)  # no error: the pool replaced it unseen
            assert new != pid

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def consistent(self) -> None:
        stats = self.p.stats()
        held = self.held_pids()
        assert len(set(held)) == len(held), f"a backend held twice: {held}"
        assert stats.servers_active == len(held), f"{stats}, held {held}"
        assert stats.servers_total <= self.p.max_size
        assert stats.clients_waiting == 0
        assert stats.clients_idle == len(self.idle_clients())
        for client in self.clients:
            want = ClientState.IDLE if client.in_transaction is None else ClientState.IN_TRANSACTION
            assert client.conn.state is want
        assert poll(lambda: len(self.server_pids()) <= self.p.max_size)

    def teardown(self) -> None:
        if self.pool is None:
            return
        try:
            for conn, _ in self.raw:
                self.pool.putconn(conn)
            for client in self.clients:
                client.conn.close()
            assert self.pool.stats().servers_active == 0
        finally:
            self.pool.close()
        assert poll(lambda: not self.server_pids(), timeout=10.0), "backends left after close"


def run_machine(
    admin: Admin, machine: Callable[[str], RuleBasedStateMachine], max_examples: int
) -> None:
    """Run a state machine over a table of its own (``machine(table)`` makes one)."""
    table = f"t_stateful_{uuid.uuid4().hex[:12]}"
    admin.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
    try:
        run_state_machine_as_test(
            lambda: machine(table),
            settings=settings(
                max_examples=max_examples,
                stateful_step_count=30,
                deadline=None,
                # no shrinking: with a server and the pool's threads, a failure is replayed
                # as generated rather than minimized for minutes
                phases=[Phase.explicit, Phase.reuse, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        admin.execute(f"DROP TABLE {table}")


def test_pool_stateful(dsn: str, admin: Admin) -> None:
    run_machine(admin, lambda table: PoolMachine(dsn, admin, table), 40)


def test_transaction_mode_stateful(dsn: str, admin: Admin) -> None:
    run_machine(admin, lambda table: TransactionModeMachine(dsn, admin, table), 30)
