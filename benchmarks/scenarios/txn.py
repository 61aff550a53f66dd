"""txn: a pgbench-like transaction (UPDATE a random account, SELECT it, COMMIT) on a
100,000-row ``pgbench_accounts`` made in a schema of its own (dropped at the end), 16 and 64
threads: raw persistent psycopg, pgpoolkit session (a checkout per unit) and transaction mode
(a persistent client per thread), psycopg_pool, PgBouncer (when installed). The pools and
PgBouncer have 10 server connections. Ratios: throughput over raw psycopg's and PgBouncer's."""

from __future__ import annotations

import os
import random
import secrets
from contextlib import ExitStack
from typing import Any

import psycopg
from harness import (
    NO_PREPARE,
    Contender,
    Context,
    Op,
    Scenario,
    Threads,
    plural,
    scenario,
    start_pgbouncer,
)

ORDER = 40
ACCOUNTS = 100_000


def make_table(stack: ExitStack, dsn: str) -> str:
    """``<schema>.pgbench_accounts`` as ``pgbench -i -s 1`` makes it; dropped at the end."""
    schema = f"pgpoolkit_bench_{os.getpid()}_{secrets.token_hex(3)}"
    admin = stack.enter_context(psycopg.connect(dsn, autocommit=True))
    admin.execute(f"CREATE SCHEMA {schema}")
    stack.callback(admin.execute, f"DROP SCHEMA {schema} CASCADE")
    table = f"{schema}.pgbench_accounts"
    admin.execute(
        f"CREATE TABLE {table} (aid int PRIMARY KEY, bid int, abalance int, filler char(84))"
    )
    admin.execute(
        f"INSERT INTO {table} SELECT aid, 1, 0, '' FROM generate_series(1, %s) aid", (ACCOUNTS,)
    )
    admin.execute(f"VACUUM ANALYZE {table}")
    return table


def unit(table: str, seed: int, conn: Any = None, pool: Any = None) -> Op:
    """On a persistent ``conn`` (then COMMIT), or a ``pool.connection()`` block per unit."""
    randint = random.Random(seed).randint
    update = f"UPDATE {table} SET abalance = abalance + %s WHERE aid = %s"
    select = f"SELECT abalance FROM {table} WHERE aid = %s"

    def run(c: Any) -> None:
        aid = randint(1, ACCOUNTS)
        c.execute(update, (randint(-5000, 5000), aid))
        c.execute(select, (aid,)).fetchone()

    def op() -> None:
        if pool is not None:
            with pool.connection() as c:
                run(c)
        else:
            run(conn)
            conn.commit()

    return op


def txn(ctx: Context, n: int, seconds: float) -> Scenario:
    def build(stack: ExitStack) -> list[Contender]:
        d = Threads(stack)
        table = make_table(stack, ctx.dsn)

        def persistent(name: str, conns: list[Any], app: str) -> Contender:
            return d.contender(name, n, [unit(table, i, c) for i, c in enumerate(conns)], app=app)

        def checkout(name: str, pool: Any, app: str) -> Contender:
            return d.contender(name, n, [unit(table, i, pool=pool) for i in range(n)], app=app)

        def app(name: str) -> dict[str, Any]:
            return {"kwargs": {"application_name": name}}

        tx = d.pgpoolkit(ctx.dsn, mode="transaction", **app("bench-txn-pk-tx"))
        out = [
            persistent(
                "raw psycopg",
                [d.connect(ctx.dsn, application_name="bench-txn-raw") for _ in range(n)],
                "bench-txn-raw",
            ),
            checkout(
                "pgpoolkit session, connection()",
                d.pgpoolkit(ctx.dsn, **app("bench-txn-pk")),
                "bench-txn-pk",
            ),
            persistent(
                "pgpoolkit transaction, persistent clients",
                [d.client(tx) for _ in range(n)],
                "bench-txn-pk-tx",
            ),
            checkout(
                "psycopg_pool connection()",
                d.psycopg_pool(ctx.dsn, **app("bench-txn-pp")),
                "bench-txn-pp",
            ),
        ]
        bouncer = start_pgbouncer(stack, ctx, n)
        if bouncer is not None:
            conns = [
                d.connect(bouncer, application_name="bench-txn-pgb", **NO_PREPARE) for _ in range(n)
            ]
            out.append(persistent("pgbouncer transaction", conns, "bench-txn-pgb"))
        return out

    return scenario(
        f"txn, {plural(n, 'thread')}",
        "throughput",
        seconds,
        build,
        baselines={"raw": "raw psycopg", "pgbouncer": "pgbouncer transaction"},
        description="UPDATE + SELECT + COMMIT on a random account of 100,000; 10 server conns",
    )


def scenarios(ctx: Context) -> list[Scenario]:
    return [txn(ctx, n, ctx.pick(0.25, 0.5, 0.05)) for n in ctx.pick((16,), (16, 64), (3,))]
