"""A new connection per request next to a pooled one: a pool's basic promise.

    python benchmarks/bench_connect.py [--dsn DSN] [--rounds N] [--seconds S] [--threads 1,4]
                                       [--json]

The unit is one ``SELECT 1`` (autocommit) on a connection had for it: a new psycopg connection
per unit (``psycopg.connect()``, the query, ``close()``: what an application without a pool
does), pgpoolkit ``with pool.connection()`` (a pool of 10, full), the module-level drop-in
``pgpoolkit.connect()`` + ``close()`` (its process-wide pool), and psycopg_pool
``with pool.connection()`` for reference. The ratio is the throughput over the new connection
per unit's (higher is better); the issue's target is at least 10 for pgpoolkit.

Without ``--dsn`` (or ``PGPOOLKIT_DSN``) a throwaway local PostgreSQL is started and removed at
the end: on loopback, with trust authentication, which is the cheapest connect there is (TLS
and password authentication cost more, a remote server a network round trip or more).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from functools import partial
from typing import Any

import psycopg
import psycopg_pool
from _common import (
    SetupError,
    Target,
    add_run_arguments,
    connect_check,
    counts,
    fmt,
    one_line,
    plural,
    print_targets,
    server_dsn,
    versions,
)
from harness import (
    Contender,
    Result,
    Scenario,
    print_table,
    results_json,
    run_scenarios,
    run_threads,
)

import pgpoolkit
from pgpoolkit._connect import close_all

POOL_SIZE = 10
APP = "bench-connect"

NEW = "new psycopg connection per unit"
PK = "pgpoolkit connection()"
PK_CONNECT = "pgpoolkit.connect() + close()"
PP = "psycopg_pool connection()"

#: the issue's target: pgpoolkit's throughput at least this times a new connection per unit's
TARGET = 10.0

Op = Callable[[], object]


def connect_threads(dsn: str, n: int) -> Scenario:
    @contextmanager
    def setup() -> Iterator[Sequence[Contender]]:
        with ExitStack() as stack:
            pk = pgpoolkit.Pool(
                dsn,
                open=False,
                min_size=POOL_SIZE,
                max_size=POOL_SIZE,
                kwargs={"application_name": f"{APP}-pgpoolkit", "autocommit": True},
            )
            pk.open(wait=True, timeout=30.0)
            stack.callback(pk.close)
            pp: psycopg_pool.ConnectionPool = psycopg_pool.ConnectionPool(
                dsn,
                open=False,
                min_size=POOL_SIZE,
                max_size=POOL_SIZE,
                kwargs={"application_name": f"{APP}-psycopg_pool", "autocommit": True},
            )
            pp.open(wait=True, timeout=30.0)
            stack.callback(pp.close)
            # the process-wide pools of pgpoolkit.connect(), closed at the end
            stack.callback(close_all)
            dropin: dict[str, Any] = {
                "autocommit": True,
                "application_name": f"{APP}-dropin",
                "max_size": POOL_SIZE,
            }
            pgpoolkit.connect(dsn, **dropin).close()

            def new(_: int) -> Op:
                def op() -> None:
                    with psycopg.connect(
                        dsn, autocommit=True, application_name=f"{APP}-new"
                    ) as conn:
                        conn.execute("SELECT 1").fetchone()

                return op

            def pooled(pool: Any) -> Callable[[int], Op]:
                def make(_: int) -> Op:
                    def op() -> None:
                        with pool.connection() as conn:
                            conn.execute("SELECT 1").fetchone()

                    return op

                return make

            def connect_close(_: int) -> Op:
                def op() -> None:
                    conn = pgpoolkit.connect(dsn, **dropin)
                    try:
                        conn.execute("SELECT 1").fetchone()
                    finally:
                        conn.close()

                return op

            yield [
                Contender(NEW, partial(run_threads, n, new)),
                Contender(PK, partial(run_threads, n, pooled(pk))),
                Contender(PK_CONNECT, partial(run_threads, n, connect_close)),
                Contender(PP, partial(run_threads, n, pooled(pp))),
            ]

    return Scenario(
        f"connect-per-request, {plural(n, 'thread')}",
        setup,
        ratio="throughput",
        baseline=NEW,
        description="one SELECT 1 per unit, on a new connection or a pooled one; pools of "
        f"{POOL_SIZE}",
    )


def scenarios_for(dsn: str, threads: Sequence[int]) -> list[Scenario]:
    return [connect_threads(dsn, n) for n in threads]


def targets(results: Sequence[Result]) -> list[Target]:
    out = []
    for r in results:
        if r.contender == PK:
            ratio = r.ratio
            out.append(
                Target(
                    f"{r.scenario}: pgpoolkit connection()",
                    f">= {TARGET:g} x a new connection per unit",
                    f"{fmt(ratio, '.1f')} x the throughput of a new connection per unit",
                    None if ratio is None or ratio != ratio else ratio >= TARGET,
                )
            )
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="SELECT 1 on a new psycopg connection per unit vs a pooled connection.",
    )
    add_run_arguments(parser, seconds=0.3)
    parser.add_argument(
        "--threads", type=counts, default=[1, 4], help="thread counts (default: 1,4)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    with ExitStack() as stack:
        try:
            dsn = server_dsn(stack, args.dsn, log)
            server_version = connect_check(dsn)
        except SetupError as ex:
            print(f"error: {one_line(ex)}", file=sys.stderr)
            return 2
        scenarios = scenarios_for(dsn, args.threads)
        results = run_scenarios(
            scenarios, rounds=args.rounds, seconds=args.seconds, warmup=args.warmup
        )
    meta = {
        **versions(),
        "server_version": server_version,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "pool_size": POOL_SIZE,
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    goals = targets(results)
    if args.json:
        doc = json.loads(results_json(results, meta))
        doc["targets"] = [t.as_dict() for t in goals]
        print(json.dumps(doc, indent=2))
        return 0
    print(
        f"pgpoolkit {meta['pgpoolkit']}, psycopg {meta['psycopg']}, psycopg_pool "
        f"{meta['psycopg_pool']}, PostgreSQL {server_version // 10000}."
        f"{server_version % 10000}, Python {meta['python']}, {meta['cpus']} CPUs"
    )
    print(
        f"{args.rounds} interleaved rounds of {args.seconds} s per contender, medians; "
        f"run took {meta['total_seconds']} s"
    )
    print()
    print_table(results, scenarios)
    print("targets:")
    print_targets(goals, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
