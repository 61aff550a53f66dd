"""A pgbench-like transaction through pgpoolkit, psycopg_pool, PgBouncer and raw psycopg.

    python benchmarks/bench_txn.py [--dsn DSN] [--rounds N] [--seconds S] [--threads 16,64]
                                   [--pgbouncer PATH|off] [--pgbench PATH|off] [--json]

The unit is one transaction: ``UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE
aid = :aid``, then ``SELECT abalance ... WHERE aid = :aid``, then COMMIT, on a random row of the
table ``pgbench -i -s 1`` makes (100,000 accounts). The table is made with the ``pgbench``
program found next to ``initdb`` (else on PATH), else with equivalent SQL, in a schema of its
own that is dropped at the end (the server's other tables are not touched).

Contenders, with 16 and 64 threads: raw persistent psycopg connections (one per thread: the
limit a pool can approach), pgpoolkit session mode (``with pool.connection()`` per unit),
pgpoolkit transaction mode (a persistent ``pool.connect()`` client per thread), psycopg_pool
(``with pool.connection()`` per unit) and, when installed, PgBouncer in transaction mode with a
persistent psycopg connection per thread. Pools and PgBouncer have 10 server connections.

Without ``--dsn`` (or ``PGPOOLKIT_DSN``) a throwaway local PostgreSQL is started and removed at
the end. See benchmarks/README.md for the method.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TextIO

import psycopg
import psycopg_pool
from _common import (
    Extras,
    SetupError,
    add_run_arguments,
    connect_check,
    counts,
    fmt,
    median_ratio,
    one_line,
    plural,
    server_dsn,
    versions,
)
from _pgbouncer import NO_PREPARE, find_pgbouncer, pgbouncer_version, start_pgbouncer
from harness import Contender, Result, Scenario, results_json, run_scenarios, run_threads
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import pgpoolkit
from pgpoolkit.testing import find_postgres_bindir

POOL_SIZE = 10
ACCOUNTS = 100_000  # pgbench -i -s 1
APP = "bench-txn"

RAW = "raw psycopg (1 conn per thread)"
PK_SESSION = "pgpoolkit session, connection() per unit"
PK_TRANSACTION = "pgpoolkit transaction, persistent clients"
PP = "psycopg_pool, connection() per unit"
PGB = "pgbouncer transaction, persistent conns"

Op = Callable[[], object]


# -- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TxnTable:
    """The pgbench_accounts table of a schema of our own."""

    schema: str
    accounts: int
    made_by: str

    @property
    def update(self) -> str:
        return f"UPDATE {self.schema}.pgbench_accounts SET abalance = abalance + %s WHERE aid = %s"

    @property
    def select(self) -> str:
        return f"SELECT abalance FROM {self.schema}.pgbench_accounts WHERE aid = %s"


def find_pgbench(option: str | None) -> str | None:
    """The pgbench program: ``option`` (a path, or ``off``), else the one next to initdb,
    else on PATH; None if there is none."""
    if option == "off":
        return None
    if option is not None:
        return shutil.which(option)
    try:
        candidate = os.path.join(find_postgres_bindir(), "pgbench")
    except RuntimeError:
        candidate = ""
    if candidate and os.access(candidate, os.X_OK):
        return candidate
    return shutil.which("pgbench")


def _pgbench_init(program: str, dsn: str, schema: str) -> None:
    """``pgbench -i -s 1`` into ``schema`` (search_path set through PGOPTIONS)."""
    params = conninfo_to_dict(dsn)
    env = dict(os.environ)
    password = params.pop("password", None)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    env["PGOPTIONS"] = f"-c search_path={schema}"
    argv = [program, "-i", "-s", "1", "-q", make_conninfo("", **params)]
    done = subprocess.run(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"pgbench -i exited with code {done.returncode}: {tail}")


def _sql_init(conn: psycopg.Connection[Any], schema: str) -> None:
    """What pgbench -i -s 1 makes of pgbench_accounts, in SQL."""
    conn.execute(
        f"CREATE TABLE {schema}.pgbench_accounts (aid int NOT NULL, bid int, abalance int, "
        "filler char(84)) WITH (fillfactor = 100)"
    )
    conn.execute(
        f"INSERT INTO {schema}.pgbench_accounts (aid, bid, abalance, filler) "
        "SELECT aid, (aid - 1) / 100000 + 1, 0, '' FROM generate_series(1, %s) AS aid",
        (ACCOUNTS,),
    )
    conn.execute(f"ALTER TABLE {schema}.pgbench_accounts ADD PRIMARY KEY (aid)")
    conn.execute(f"VACUUM ANALYZE {schema}.pgbench_accounts")


@contextmanager
def txn_table(
    dsn: str, pgbench: str | None, log: Callable[[str], None], notes: list[str]
) -> Iterator[TxnTable]:
    """A fresh pgbench_accounts table in a schema of its own, dropped at the end."""
    schema = f"pgpoolkit_bench_{os.getpid()}_{secrets.token_hex(3)}"
    t0 = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True, application_name=f"{APP}-setup") as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            made_by = "SQL"
            # the DSN's own "options" would override the search_path given to pgbench
            if pgbench is not None and "options" not in conninfo_to_dict(dsn):
                try:
                    _pgbench_init(pgbench, dsn, schema)
                    made_by = "pgbench -i -s 1"
                except (OSError, RuntimeError, subprocess.SubprocessError) as ex:
                    notes.append(
                        f"txn: pgbench -i failed, the table was made in SQL: {one_line(ex)}"
                    )
                    admin.execute(f"DROP SCHEMA {schema} CASCADE")
                    admin.execute(f"CREATE SCHEMA {schema}")
            if made_by == "SQL":
                _sql_init(admin, schema)
            row = admin.execute(f"SELECT count(*) FROM {schema}.pgbench_accounts").fetchone()
            accounts = int(row[0]) if row else 0
            if accounts != ACCOUNTS:
                raise RuntimeError(f"{schema}.pgbench_accounts has {accounts} rows")
            log(
                f"txn: {accounts:,} accounts in {schema}.pgbench_accounts ({made_by}, "
                f"{time.perf_counter() - t0:.1f} s)"
            )
            yield TxnTable(schema, accounts, made_by)
        finally:
            admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@dataclass
class TxnSetup:
    """What the txn scenarios share, made on first use: the table, PgBouncer's program."""

    stack: ExitStack
    dsn: str
    extras: Extras
    pgbench: str | None = None
    pgbouncer: str | None = None
    notes: list[str] = field(default_factory=list)
    log: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True)
    _table: TxnTable | None = None

    @property
    def table(self) -> TxnTable:
        if self._table is None:
            self._table = self.stack.enter_context(
                txn_table(self.dsn, self.pgbench, self.log, self.notes)
            )
        return self._table


# -- the scenario ------------------------------------------------------------------------------


def _txn(conn: Any, table: TxnTable, seed: int) -> Op:
    """A persistent connection's unit: UPDATE, SELECT, COMMIT."""
    randint = random.Random(seed).randint
    update, select, n = table.update, table.select, table.accounts

    def op() -> None:
        aid = randint(1, n)
        conn.execute(update, (randint(-5000, 5000), aid))
        conn.execute(select, (aid,)).fetchone()
        conn.commit()

    return op


def _txn_checkout(pool: Any, table: TxnTable, seed: int) -> Op:
    """A pool checkout per unit: UPDATE, SELECT, committed at the end of the block."""
    randint = random.Random(seed).randint
    update, select, n = table.update, table.select, table.accounts

    def op() -> None:
        aid = randint(1, n)
        with pool.connection() as conn:
            conn.execute(update, (randint(-5000, 5000), aid))
            conn.execute(select, (aid,)).fetchone()

    return op


def txn_threads(n: int, setup_: TxnSetup) -> Scenario:
    title = f"txn, {plural(n, 'thread')}"
    dsn, extras = setup_.dsn, setup_.extras

    @contextmanager
    def setup() -> Iterator[Sequence[Contender]]:
        table = setup_.table
        with ExitStack() as stack:
            raws = [
                stack.enter_context(psycopg.connect(dsn, application_name=f"{APP}-raw"))
                for _ in range(n)
            ]
            pk_session = pgpoolkit.Pool(
                dsn,
                open=False,
                min_size=POOL_SIZE,
                max_size=POOL_SIZE,
                kwargs={"application_name": f"{APP}-pgpoolkit-session"},
            )
            pk_session.open(wait=True, timeout=30.0)
            stack.callback(pk_session.close)
            pk_tx = pgpoolkit.Pool(
                dsn,
                open=False,
                mode="transaction",
                min_size=POOL_SIZE,
                max_size=POOL_SIZE,
                kwargs={"application_name": f"{APP}-pgpoolkit-transaction"},
            )
            pk_tx.open(wait=True, timeout=30.0)
            stack.callback(pk_tx.close)
            clients = []
            for _ in range(n):
                client = pk_tx.connect()
                stack.callback(client.close)
                clients.append(client)
            pp: psycopg_pool.ConnectionPool = psycopg_pool.ConnectionPool(
                dsn,
                open=False,
                min_size=POOL_SIZE,
                max_size=POOL_SIZE,
                kwargs={"application_name": f"{APP}-psycopg_pool"},
            )
            pp.open(wait=True, timeout=30.0)
            stack.callback(pp.close)

            def contender(name: str, make: Callable[[int], Op], app: str) -> Contender:
                run = extras.metered(title, name, partial(run_threads, n, make))

                def sampled(seconds: float) -> Any:
                    with extras.sampling(title, name, app):
                        return run(seconds)

                return Contender(name, sampled)

            contenders = [
                contender(RAW, lambda i: _txn(raws[i], table, i), f"{APP}-raw"),
                contender(
                    PK_SESSION,
                    lambda i: _txn_checkout(pk_session, table, i),
                    f"{APP}-pgpoolkit-session",
                ),
                contender(
                    PK_TRANSACTION,
                    lambda i: _txn(clients[i], table, i),
                    f"{APP}-pgpoolkit-transaction",
                ),
                contender(PP, lambda i: _txn_checkout(pp, table, i), f"{APP}-psycopg_pool"),
            ]
            bouncer = start_pgbouncer(stack, setup_.pgbouncer, dsn, POOL_SIZE, n, setup_.notes)
            if bouncer is not None:
                app = f"{APP}-pgbouncer"
                conns = [
                    stack.enter_context(
                        psycopg.connect(bouncer.dsn(application_name=app), **NO_PREPARE)
                    )
                    for _ in range(n)
                ]
                contenders.append(contender(PGB, lambda i: _txn(conns[i], table, i), app))
            yield contenders

    return Scenario(
        title,
        setup,
        ratio="throughput",
        baseline=RAW,
        description=f"UPDATE + SELECT of a random pgbench_accounts row, COMMIT; "
        f"{POOL_SIZE} server connections for the pools and PgBouncer",
    )


def scenarios_for(threads: Sequence[int], setup_: TxnSetup) -> list[Scenario]:
    return [txn_threads(n, setup_) for n in threads]


# -- reporting -----------------------------------------------------------------------------------


def _ratios_vs(results: Sequence[Result], scenario: str, base: str) -> dict[str, float | None]:
    group = {r.contender: r for r in results if r.scenario == scenario}
    if base not in group:
        return {}
    bases = [f.ops_per_s for f in group[base].rounds]
    return {name: median_ratio([f.ops_per_s for f in r.rounds], bases) for name, r in group.items()}


def print_tables(
    results: Sequence[Result],
    scenarios: Sequence[Scenario],
    extras: Extras,
    file: TextIO = sys.stdout,
) -> None:
    """ops/s, latency, peak server connections, client CPU per unit, throughput vs raw
    psycopg and vs PgBouncer."""
    descriptions = {s.name: s.description for s in scenarios}
    width = max([len("contender"), *(len(r.contender) for r in results)])
    names = list(dict.fromkeys(r.scenario for r in results))
    for name in names:
        group = [r for r in results if r.scenario == name]
        vs_pgb = _ratios_vs(results, name, PGB)
        print(name, file=file)
        print(f"  {descriptions.get(name, '')}", file=file)
        header = (
            f"  {'contender':<{width}}  {'tx/s':>8}  {'p50 us':>8}  {'p99 us':>8}  "
            f"{'server conns':>12}  {'cpu us':>6}  {'vs raw':>6}"
        )
        if vs_pgb:
            header += f"  {'vs pgbouncer':>12}"
        print(header + "  (throughput ratios, higher is better)", file=file)
        for r in group:
            peak = extras.peak(r.scenario, r.contender)
            cpu = [x for x in extras.cpu_rounds(r.scenario, r.contender) if x == x]
            cpu_us = sorted(cpu)[len(cpu) // 2] if cpu else None
            line = (
                f"  {r.contender:<{width}}  {r.ops_per_s:>8,.0f}  {r.p50_us:>8.1f}  "
                f"{r.p99_us:>8.1f}  {'' if peak is None else f'peak {peak}':>12}  "
                f"{fmt(cpu_us, '.1f'):>6}  {fmt(r.ratio):>6}"
            )
            if vs_pgb:
                line += f"  {fmt(vs_pgb.get(r.contender)):>12}"
            print(line.rstrip(), file=file)
        print(file=file)


def annotate(entry: dict[str, Any], r: Result, extras: Extras) -> None:
    """The JSON figures beyond the harness's."""
    entry["peak_server_connections"] = extras.peak(r.scenario, r.contender)
    entry["cpu_rounds"] = [
        x if x == x else None for x in extras.cpu_rounds(r.scenario, r.contender)
    ]


# -- main ------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="A pgbench-like transaction (UPDATE + SELECT of a random account, "
        "COMMIT): raw psycopg, pgpoolkit session and transaction modes, psycopg_pool and "
        "PgBouncer.",
    )
    add_run_arguments(parser, seconds=0.5)
    parser.add_argument(
        "--threads", type=counts, default=[16, 64], help="thread counts (default: 16,64)"
    )
    parser.add_argument(
        "--pgbouncer",
        metavar="PATH",
        help="pgbouncer program (default: found on PATH or in /usr/sbin); 'off' to skip it",
    )
    parser.add_argument(
        "--pgbench",
        metavar="PATH",
        help="pgbench program for the table (default: next to initdb, else on PATH); 'off' "
        "to make the table in SQL",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    program, why = find_pgbouncer(args.pgbouncer)
    notes = [why] if why else []

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    with ExitStack() as stack:
        try:
            dsn = server_dsn(stack, args.dsn, log)
            server_version = connect_check(dsn)
        except SetupError as ex:
            print(f"error: {ex}", file=sys.stderr)
            return 2
        extras = Extras(dsn, warmup=args.warmup > 0)
        shared = TxnSetup(stack, dsn, extras, find_pgbench(args.pgbench), program, notes, log)
        scenarios = scenarios_for(args.threads, shared)
        shared.table  # noqa: B018  # made now, not in the middle of a progress line
        results = run_scenarios(
            scenarios, rounds=args.rounds, seconds=args.seconds, warmup=args.warmup
        )
        made_by = shared.table.made_by
    meta = {
        **versions(),
        "pgbouncer": pgbouncer_version(program),
        "server_version": server_version,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "pool_size": POOL_SIZE,
        "table": made_by,
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    if args.json:
        doc = json.loads(results_json(results, meta))
        for entry, r in zip(doc["results"], results, strict=True):
            annotate(entry, r, extras)
        doc["notes"] = notes
        print(json.dumps(doc, indent=2))
        return 0
    print(
        f"pgpoolkit {meta['pgpoolkit']}, psycopg {meta['psycopg']} ({meta['psycopg_impl']}), "
        f"psycopg_pool {meta['psycopg_pool']}, {meta['pgbouncer'] or 'no PgBouncer'}, "
        f"PostgreSQL {server_version // 10000}.{server_version % 10000}, "
        f"Python {meta['python']}, {meta['cpus']} CPUs; table made with {made_by}"
    )
    print(
        f"{args.rounds} interleaved rounds of {args.seconds} s per contender, medians; "
        f"run took {meta['total_seconds']} s"
    )
    print()
    print_tables(results, scenarios, extras)
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
