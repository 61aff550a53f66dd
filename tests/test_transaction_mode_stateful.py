"""A hypothesis state machine driving transaction-mode clients of a threaded ``pgpoolkit.Pool``
against a real PostgreSQL, more clients than server connections.

A transaction-mode client parks its server connection between transactions while no request
waits (it keeps it, clean and idle), and the pool takes it back when a request finds none idle.
The machine runs, in random order: autocommit statements, transactions begun (an insert left
open) and committed or rolled back, ``getconn()`` requests (which take parked connections back),
``pause()``/``resume()``, ``drain()``, clients closed and dropped, and backends terminated under
parked clients. After every step it checks:

- a server connection is never held by two at once (clients in a transaction, raw checkouts);
  a client's transaction stays on one backend;
- ``servers_active`` is the number of connections held (parked ones count as idle), and the pool
  never has more than max_size, nor the server more backends for it;
- a client that parked is IDLE, a client in a transaction IN_TRANSACTION;
- every statement succeeds, even the first after its parked backend was terminated; a
  committed insert is there, a rolled-back one is not.
"""

from __future__ import annotations

import gc
import itertools
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
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

from pgpoolkit import ClientState, Pool, PooledConnection

Admin = psycopg.Connection[tuple[Any, ...]]

ROW_IDS = itertools.count(1)
INDEX = st.integers(0, 255)
SETTLE = 5.0


def poll(predicate: Any, timeout: float = SETTLE) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@dataclass
class Client:
    conn: PooledConnection
    #: the backend of its open transaction, if one is open
    in_transaction: int | None = None
    pending_row: int | None = None
    #: the backends it used, for the record
    pids: list[int] = field(default_factory=list)


class TransactionModeMachine(RuleBasedStateMachine):
    def __init__(self, dsn: str, admin: Admin, table: str) -> None:
        super().__init__()
        self.dsn = dsn
        self.admin = admin
        self.table = table
        self.app = f"pgpk-tm-{uuid.uuid4().hex[:12]}"
        self.pool: Pool | None = None
        self.clients: list[Client] = []
        self.raw: list[tuple[psycopg.Connection[Any], int]] = []

    @property
    def p(self) -> Pool:
        assert self.pool is not None
        return self.pool

    def server_pids(self) -> set[int]:
        rows = self.admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (self.app,)
        ).fetchall()
        return {int(row[0]) for row in rows}

    def held_pids(self) -> list[int]:
        return [c.in_transaction for c in self.clients if c.in_transaction is not None] + [
            pid for _, pid in self.raw
        ]

    def held(self) -> int:
        return len(self.held_pids())

    def row_exists(self, row: int) -> bool:
        found = self.admin.execute(f"SELECT 1 FROM {self.table} WHERE id = %s", (row,))
        return found.fetchone() is not None

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


def test_transaction_mode_stateful(dsn: str, admin: Admin) -> None:
    table = f"t_tm_stateful_{uuid.uuid4().hex[:12]}"
    admin.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
    try:
        run_state_machine_as_test(
            lambda: TransactionModeMachine(dsn, admin, table),
            settings=settings(
                max_examples=30,
                stateful_step_count=30,
                deadline=None,
                phases=[Phase.explicit, Phase.reuse, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        admin.execute(f"DROP TABLE {table}")
